"""The one module that reads and writes weights.

Everything goes through ``torch.load(..., weights_only=True)``: a ``.pth`` from the web is
untrusted, and a pickle that carries code is refused, never executed. Writes go through
``utils.files.atomic_file`` (temporary file in the same folder, fsync, rename), so a run killed
mid-save leaves the previous file intact.

Checkpoints carry the label set they were trained with in their state_dict's ``_metadata``
(under ``"dfpnet.label_set"``, the ``labels.json`` form), where PyTorch keeps its own per-module
versions: the file stays a plain state_dict that ``load_state_dict`` reads as before (the
authors' format included), and ``weights_only=True`` loads it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.cli import first_line
from utils.files import FdWriter, atomic_file
from utils.labels import LabelSet, LabelSetError

log = logging.getLogger("dfpnet")

# Buffers that plain BatchNorm2d / the inplace-abn package keep and the authors' files lack.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_MAX_NAMED = 5
LABEL_SET_KEY = "dfpnet.label_set"  # in a state_dict's _metadata; no module of DFPnet has this name
INPUT_SIZE_KEY = "dfpnet.input_size"  # the training crop [H, W], beside the label set


class CheckpointError(Exception):
    """A checkpoint could not be used; the message is one line naming the file and the problem."""


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` onto the CPU, with errors a person can act on."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors and "
            f"plain containers, which could run code (weights_only=True): "
            f"{first_line(exc)}"
        ) from None
    except Exception as exc:  # torch raises many types for foreign or cut files (KeyError for text)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format): {first_line(exc)}"
        ) from None


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model's tensors from any of our formats, with a leading ``module.`` removed.

    Accepted: a bare state_dict (the authors' ``DFPnet_epoch_*.pth``, our epoch snapshots and
    ``best.pth``) or a dict whose ``"model"`` / ``"state_dict"`` entry is one (our training state).
    """
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _optional(key: str) -> bool:
    return key.endswith(_OPTIONAL_SUFFIXES)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _named(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else ""
    return ", ".join(keys[:_MAX_NAMED]) + more


def _in(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def load_state_dict_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike = "<checkpoint>",
    *,
    skip: Sequence[str] = (),
) -> None:
    """Copy ``state`` into ``model``, all or nothing; ``num_batches_tracked`` may be absent on either side.

    The modules named in ``skip`` (``"outc.2"``) are left as they are in ``model`` and not compared.
    """
    own = {k: v for k, v in model.state_dict().items() if not _in(k, skip)}
    state = {k: v for k, v in state.items() if not _in(k, skip)}
    missing = [k for k in own if k not in state and not _optional(k)]
    unexpected = [k for k in state if k not in own and not _optional(k)]
    mismatched = [
        f"{k}: file {_shape(state[k])}, model {_shape(own[k])}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_named(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_named(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} mis-shaped ({_named(mismatched)})")
        hint = ""
        if any(k.startswith(("outc.", "aux_pred.4.")) for k in mismatched):
            hint = "; its classifiers are for another number of classes: give its label set with --labels"
        raise CheckpointError(f"{path}: not a checkpoint of this network: {'; '.join(parts)}{hint}")
    with torch.no_grad():
        for k, v in state.items():
            if k in own:
                own[k].copy_(v)


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load any DFPnet checkpoint we know (authors', epoch snapshot, best.pth, training state) strictly."""
    load_state_dict_strict(model, extract_state_dict(read_checkpoint(path), path), path)


# ------------------------------------------------------------------------------------------
# The label set a checkpoint was trained with
# ------------------------------------------------------------------------------------------


def with_label_set(
    state: Mapping[str, torch.Tensor], label_set: LabelSet, input_size: tuple[int, int] | None = None
) -> OrderedDict:
    """``state`` (a state_dict) with ``label_set`` (and the training crop ``input_size``, when given)
    recorded in its ``_metadata``."""
    out = OrderedDict(state)
    metadata = OrderedDict(getattr(state, "_metadata", None) or {})
    metadata[LABEL_SET_KEY] = label_set.to_dict()
    if input_size is not None:
        metadata[INPUT_SIZE_KEY] = [int(v) for v in input_size]
    out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _metadata(obj: Any) -> Mapping:
    if isinstance(obj, Mapping):  # a training state holds the state_dict, as in extract_state_dict
        obj = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)), obj)
    metadata = getattr(obj, "_metadata", None)
    return metadata if isinstance(metadata, Mapping) else {}


def stored_input_size(obj: Any) -> tuple[int, int] | None:
    """The training crop recorded in a checkpoint read by :func:`read_checkpoint`; None if it has none
    (the authors' files, ours from before the crop was recorded) or an unusable one."""
    entry = _metadata(obj).get(INPUT_SIZE_KEY)
    if isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, int) and v > 0 for v in entry):
        return entry[0], entry[1]
    return None


def stored_label_set(obj: Any, path: str | os.PathLike = "<checkpoint>") -> LabelSet | None:
    """The label set recorded in a checkpoint read by :func:`read_checkpoint`; None if it has none
    (the authors' files, or ours from before label sets)."""
    entry = _metadata(obj).get(LABEL_SET_KEY)
    if entry is None:
        return None
    try:
        return LabelSet.from_dict(entry, f"the checkpoint {path}")
    except LabelSetError as exc:
        raise CheckpointError(f"{path}: its stored label set is unusable: {exc}") from None


@dataclass
class Weights:
    """A DFPnet checkpoint read once: its tensors (``module.`` stripped), and its label set and training
    crop where recorded."""

    path: str
    state: dict[str, torch.Tensor]
    label_set: LabelSet | None
    input_size: tuple[int, int] | None = None


def read_weights(path: str | os.PathLike) -> Weights:
    """:func:`read_checkpoint` + :func:`extract_state_dict` + :func:`stored_label_set` of one file."""
    obj = read_checkpoint(path)
    label_set = stored_label_set(obj, path)
    return Weights(str(path), extract_state_dict(obj, path), label_set, stored_input_size(obj))


def load_imagenet_backbone(
    model: nn.Module, path: str | os.PathLike, min_fraction: float = 0.9
) -> tuple[int, int]:
    """Initialise the backbone from the deep-stem ImageNet ResNet-101 (CE2P / MIT CSAIL release).

    Same-named, same-shaped tensors are copied (``module.`` stripped, ``fc.*`` skipped), as the
    authors did; fewer than ``min_fraction`` of the backbone's tensors matching means the file is
    some other network (torchvision's 7x7-stem ResNet-101, say) and is refused.
    Returns ``(loaded, total)``.
    """
    state = extract_state_dict(read_checkpoint(path), path)
    prefixes = model.backbone_prefixes()  # type: ignore[attr-defined]
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes) and not _optional(k)}
    usable = {
        k: v for k, v in state.items() if not k.startswith("fc.") and k in own and v.shape == own[k].shape
    }
    # torchvision's ResNet-101 shares every name past the stem, so counting alone would let its
    # 7x7 stem through with a random deep stem: the stem must match too.
    stem = [k for k in own if k.startswith(("conv1.", "conv2.", "conv3.")) and k not in usable]
    if len(usable) < min_fraction * len(own) or stem:
        why = f"its stem does not fit ({', '.join(stem)}); " if stem else ""
        raise CheckpointError(
            f"{path}: {len(usable)} of {len(own)} backbone tensors match by name and shape; {why}this is "
            f"not the deep-stem ImageNet ResNet-101 (resnet101-imagenet.pth) DFPnet starts from "
            f"(torchvision's 7x7-stem ResNet-101 does not fit)"
        )
    with torch.no_grad():
        for k, v in usable.items():
            own[k].copy_(v)
    log.info("loaded %d of %d backbone tensors from %s", len(usable), len(own), path)
    return len(usable), len(own)


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`utils.files.atomic_file` (temporary file, fsync, rename). A failed
    write raises OSError with its errno and ``path`` (never torch's errno-less RuntimeError)."""
    with atomic_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        writer = FdWriter(fd)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None
        finally:
            os.close(fd)
