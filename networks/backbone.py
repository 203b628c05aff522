"""Deep-stem ResNet-101 (the CE2P / MIT CSAIL scene-parsing flavour) used by DFPnet.

Differences from torchvision's ResNet, all needed for the authors' ImageNet weights and
checkpoints: a three-conv 3x3 stem (3->64->64->128), the stride in each bottleneck's 3x3
conv, and layer4 dilated (stride 1, dilation 2) for an output stride of 16. Batch norms are
InPlace-ABN with activation "none" followed by a separate ReLU, as the authors build them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

NormLayer = Callable[..., nn.Module]
# Tests switch it off to compare against plain autograd.
RECOMPUTE_RELU = True
_in_checkpoint = [0]  # > 0 while a checkpointed block runs (its forward or its recomputation)


@contextlib.contextmanager
def _checkpointed_block(block: nn.Module | tuple[nn.Module, ...], recompute: bool) -> Iterator[None]:
    """Around a checkpointed block: marks it (relu_into's own saving trick stays out of the way), and
    while it is recomputed in backward keeps its norms' running statistics as the forward left
    them, so that a checkpointed step updates them once, like any other."""
    modules = block if isinstance(block, tuple) else (block,)
    buffers = [
        b for m in modules for name, b in m.named_buffers() if name.endswith(("running_mean", "running_var"))
    ]
    kept = [b.clone() for b in buffers] if recompute else []
    _in_checkpoint[0] += 1
    try:
        yield
    finally:
        _in_checkpoint[0] -= 1
        with torch.no_grad():
            for buffer, value in zip(buffers, kept):
                buffer.copy_(value)


def _contexts(block: nn.Module | tuple[nn.Module, ...]):
    return _checkpointed_block(block, recompute=False), _checkpointed_block(block, recompute=True)


def recompute(
    module: nn.Module | tuple[nn.Module, ...], fn: Callable[..., torch.Tensor], *args: torch.Tensor
) -> torch.Tensor:
    """``fn(*args)``, whose activations (computed by the layers of ``module``) backward recomputes
    instead of keeping: activation checkpointing, non-reentrant, the norms' statistics updated once."""
    return checkpoint(fn, *args, use_reentrant=False, context_fn=functools.partial(_contexts, module))


def _pack_cast(t: torch.Tensor):
    # A 16-bit copy that autocast made of a parameter: keep the parameter and cast again in backward.
    fn = t.grad_fn
    if fn is not None and fn.name() == "ToCopyBackward0":
        param = getattr(fn.next_functions[0][0], "variable", None)
        if isinstance(param, nn.Parameter) and param.shape == t.shape and param.dtype != t.dtype:
            return param, t.dtype
    return t


def _unpack_cast(packed):
    if isinstance(packed, tuple):
        param, dtype = packed
        return param.detach().to(dtype)
    return packed


def recast_weights() -> contextlib.AbstractContextManager:
    """Within it, what autograd keeps for backward holds no autocast copy of a weight: backward casts
    the weight again (the same bits, as the weight has not changed by then: an update waits for its
    gradient, which needs that backward). Under bf16 autocast every convolution otherwise keeps a
    16-bit copy of its weight until backward: 117 MiB for DFPnet, for a few milliseconds of casts."""
    return saved_tensors_hooks(_pack_cast, _unpack_cast)


class _ReluSavingInput(torch.autograd.Function):
    """relu(y) that keeps y for backward instead of its output (the mask y > 0 is the same)."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return torch.relu(y)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0)


def relu_into(y: torch.Tensor, norm: nn.Module, consumer: nn.Module) -> torch.Tensor:
    """consumer(relu(y)) for y = norm(...), keeping relu(y) out of the memory saved for backward.

    The authors' backbone follows each norm with a separate ReLU and a convolution, which keeps
    both the norm's output (InPlace-ABN inverts it in backward) and the ReLU's output (the
    convolution's input). Where the norm keeps y anyway (InPlace-ABN in place), the ReLU and the
    convolution here save a reference to y instead and backward recomputes relu(y): one cheap
    elementwise op per layer for one activation less per layer (bench/RESULTS.md section 1).
    Same numbers.
    """
    keeps_y = getattr(norm, "inplace", False) and norm.training and RECOMPUTE_RELU and not _in_checkpoint[0]
    if not keeps_y or not torch.is_grad_enabled() or not y.requires_grad or torch.compiler.is_compiling():
        return consumer(torch.relu(y))
    # Autograd keeps the pack hook with every tensor it packs: the hook must not hold r itself,
    # hence the list, emptied once the consumer has run (packing happens only inside the block).
    held = [_ReluSavingInput.apply(y)]

    def pack(t: torch.Tensor):
        r = held[0]
        if (
            t.data_ptr() == r.data_ptr()
            and t.shape == r.shape
            and t.stride() == r.stride()
            and t.dtype == r.dtype
        ):
            return y  # a tensor marks "recompute"; anything else is saved as is, in a list
        return [t]

    def unpack(packed):
        return packed[0] if isinstance(packed, list) else torch.relu(packed)

    with saved_tensors_hooks(pack, unpack):
        out = consumer(held[0])
    held.clear()
    return out


class _MaxPoolKeepingInput(torch.autograd.Function):
    """3x3 max pool, stride 2, padding 1, that keeps its input for backward instead of the indices."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return F.max_pool2d(x, 3, 2, 1)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [3, 3], [2, 2], [1, 1], [1, 1], False, indices
        )


class StemMaxPool(nn.MaxPool2d):
    """The stem's ``MaxPool2d(3, stride=2, padding=1)``, keeping less for backward.

    The stock one keeps the int64 index of every output's maximum (at batch 2, 384x384: 18 MiB, as
    much as the bf16 activation it pools), although its input, which the next layers keep anyway,
    gives them again. This one keeps only the input, and backward finds the indices again: the same
    ones, so the same gradients.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not (self.training and torch.is_grad_enabled() and x.requires_grad)
            or torch.compiler.is_compiling()
        ):
            return super().forward(x)
        return _MaxPoolKeepingInput.apply(x)


def _run_blocks(blocks: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def _identity_norm(norm_layer: NormLayer) -> NormLayer:
    # The authors' ``BatchNorm2d = partial(InPlaceABNSync, activation='none')``.
    return lambda channels: norm_layer(channels, activation="identity")


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with stride and dilation, 1x1) with a projection shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        bn = _identity_norm(norm_layer)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = bn(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(bn1(conv1(x))), etc.; relu_into only changes what autograd keeps.
        out = relu_into(self.bn1(self.conv1(x)), self.bn1, self.conv2)
        out = relu_into(self.bn2(out), self.bn2, self.conv3)
        out = self.bn3(out)
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu_(out + residual)


class DeepStemResNet(nn.Module):
    # The parts that can recompute their activations in backward (set_activation_checkpointing).
    CHECKPOINTABLE: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
    # Bottlenecks per recomputed segment: a segment keeps only its input, and backward holds one
    # segment's activations at a time. Longer segments keep fewer inputs for the same recomputation
    # (each block still runs once more); layer1's blocks, at 1/4 of the input size, are the largest,
    # so it goes one at a time. Chosen by peak memory at batch 2, 384x384 (bench/RESULTS.md s. 13).
    SEGMENT_BLOCKS: dict[str, int] = {"layer1": 1, "layer2": 2, "layer3": 8, "layer4": 3}

    """The backbone. Its attribute names (``conv1``, ``bn1``, ..., ``layer4``) are those of the
    authors' checkpoints, which is why DFPNet inherits from this class instead of holding it.

    Args:
        layers: bottleneck counts of layer1..layer4 ([3, 4, 23, 3] is ResNet-101).
        norm_layer: InPlace-ABN-like factory ``(channels, activation=...) -> nn.Module``.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 23, 3), *, norm_layer: NormLayer) -> None:
        super().__init__()
        bn = _identity_norm(norm_layer)
        self._norm_layer = norm_layer
        self.inplanes = 128
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = bn(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = bn(128)
        self.relu3 = nn.ReLU()
        self.maxpool = StemMaxPool()
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=2)
        self.checkpointed: tuple[str, ...] = ()  # see set_activation_checkpointing

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, 1, stride=stride, bias=False),
                _identity_norm(self._norm_layer)(out_channels),
            )
        stack = [
            Bottleneck(
                self.inplanes,
                planes,
                stride=stride,
                dilation=dilation,
                downsample=downsample,
                norm_layer=self._norm_layer,
            )
        ]
        self.inplanes = out_channels
        stack += [
            Bottleneck(out_channels, planes, dilation=dilation, norm_layer=self._norm_layer)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*stack)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x1 (stem, 128 ch, H/2), x2 (256, H/4), x3 (512, H/8), x4 (1024, H/16), x5 (2048, H/16)."""
        x1 = relu_into(self.bn1(self.conv1(x)), self.bn1, self.conv2)  # the authors' relu1, then conv2
        x1 = relu_into(self.bn2(x1), self.bn2, self.conv3)  # relu2, then conv3
        x1 = self.relu3(self.bn3(x1))
        x2 = self._layer("layer1", self.maxpool(x1))
        x3 = self._layer("layer2", x2)
        x4 = self._layer("layer3", x3)
        x5 = self._layer("layer4", x4)
        return x1, x2, x3, x4, x5

    def set_activation_checkpointing(self, layers: tuple[str, ...] | list[str]) -> None:
        """Recompute the activations of these layers' bottlenecks in backward instead of keeping them
        (``()``: keep everything). Each segment of ``SEGMENT_BLOCKS`` bottlenecks keeps only its
        input; in training, backward recomputes one segment at a time. With any layer recomputed,
        DFPNet's other layers keep no 16-bit copies of their weights either (``recast_weights``).
        Same loss and gradients, less memory, more time."""
        unknown = [name for name in layers if name not in self.CHECKPOINTABLE]
        if unknown:
            raise ValueError(
                f"cannot checkpoint {', '.join(unknown)}: choose from {', '.join(self.CHECKPOINTABLE)}"
            )
        self.checkpointed = tuple(layers)

    def recomputes(self, name: str) -> bool:
        """Does ``name`` recompute its activations in this forward (only when training with grad)?"""
        return name in self.checkpointed and self.training and torch.is_grad_enabled()

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        layer = getattr(self, name)
        if not self.recomputes(name):
            return layer(x)
        blocks = tuple(layer)
        step = self.SEGMENT_BLOCKS[name]
        for start in range(0, len(blocks), step):
            segment = blocks[start : start + step]
            x = recompute(segment, functools.partial(_run_blocks, segment), x)
        return x

    @classmethod
    def backbone_prefixes(cls) -> tuple[str, ...]:
        """State-dict prefixes that belong to the backbone (what ImageNet weights initialise)."""
        return (
            "conv1.",
            "bn1.",
            "conv2.",
            "bn2.",
            "conv3.",
            "bn3.",
            "layer1.",
            "layer2.",
            "layer3.",
            "layer4.",
        )
