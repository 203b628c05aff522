"""Bytes that one DFPNet training forward keeps for backward, per InPlace-ABN flavour.

Counts unique storages handed to autograd (``saved_tensors_hooks``), which is the activation
memory a training step holds at its peak, independent of the allocator. Compares the pure
InPlace-ABN backend with the same network built from ``nn.BatchNorm2d`` + a separate activation
(the memory the authors' trick avoids), and with ``libs.ABN`` (same math, plain autograd).

    .venv/bin/python -m bench.saved_memory --batch-size 2 --input-size 384,384 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("DFPNET_PURE_ABN", "1")  # measure the pure backend on any machine

import torch  # noqa: E402
from torch import nn  # noqa: E402

from libs import ABN, InPlaceABNSync  # noqa: E402
from networks.dfpnet import DFPNet  # noqa: E402
from training.loss import parsing_loss  # noqa: E402
from utils import recipe  # noqa: E402
from utils.cli import DefaultsHelpFormatter  # noqa: E402
from utils.labels import DOG  # noqa: E402


class BatchNormAct(nn.Sequential):
    """nn.BatchNorm2d followed by its activation: how plain PyTorch writes an ABN layer."""

    def __init__(self, channels: int, activation: str = "leaky_relu", **_: object) -> None:
        act = nn.LeakyReLU(0.01) if activation == "leaky_relu" else nn.Identity()
        super().__init__(nn.BatchNorm2d(channels), act)


def saved_bytes(norm_layer, batch: int, size: tuple[int, int], channels_last: bool, amp: bool) -> int:
    torch.manual_seed(0)
    model = DFPNet(DOG.num_classes, norm_layer=norm_layer).train()
    x = torch.randn(batch, 3, *size)
    labels = torch.randint(0, DOG.num_classes, (batch, *size))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = parsing_loss(model(x), labels)
    del loss
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per step")
    parser.add_argument("--input-size", default=",".join(map(str, recipe.INPUT_SIZE)), help="H,W of the crop")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.input_size.split(","))
    rows = {
        "BatchNorm2d + activation (fp32)": saved_bytes(BatchNormAct, args.batch_size, size, False, False),
        "libs.ABN, plain autograd (fp32)": saved_bytes(ABN, args.batch_size, size, False, False),
        "InPlaceABNSync, pure backend (fp32)": saved_bytes(
            InPlaceABNSync, args.batch_size, size, False, False
        ),
        "InPlaceABNSync, pure backend (bf16, channels-last)": saved_bytes(
            InPlaceABNSync, args.batch_size, size, True, True
        ),
    }
    base = rows["BatchNorm2d + activation (fp32)"]
    print(f"saved-for-backward bytes, DFPNet training forward, batch {args.batch_size}, {size[0]}x{size[1]}")
    print(f"{'configuration':55s} {'MiB':>9s} {'ratio':>6s}")
    for name, b in rows.items():
        print(f"{name:55s} {b / 2**20:9.1f} {b / base:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch_size": args.batch_size,
                    "input_size": size,
                    "saved_bytes": rows,
                    "ratio_to_batchnorm": {k: v / base for k, v in rows.items()},
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
