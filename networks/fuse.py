"""DFPnet for inference only: every InPlace-ABN folded into the convolution before it.

In eval mode an InPlace-ABN layer is a per-channel affine map followed by its activation
(libs/abn.py, docs/reference.md section 5):

    y = act(x * gain + shift),  gain = (|weight| + eps) / sqrt(running_var + eps),
                                shift = bias - running_mean * gain

so when ``x`` is a convolution's output the affine part goes into that convolution (weights
times ``gain`` per output channel, bias ``conv_bias * gain + shift``) and only the activation
stays: a leaky ReLU (slope 0.01) in DFPnet's heads, nothing for the backbone's norms, whose
ReLU is a separate op already. The few layers with no convolution right before them (the
``stabilization`` norm, on the ASPP's output) become ``AffineActivation``. One full pass over
each feature map less per layer, the same numbers up to float rounding, and a graph of plain
ops that ``export.py`` hands to the ONNX exporter.

The pairs are found by structure: ``Conv2d`` then norm inside an ``nn.Sequential``, and the
``convK`` / ``bnK`` attributes of the backbone's stem and bottlenecks, where ``forward`` applies
``bnK`` straight to ``convK``'s output. The copy of a DFPNet also skips its four auxiliary
heads, which only training reads (``aux_heads = False``): the final map alone, as exported.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from libs.abn import _ActivatedBatchNorm, _canonical_activation
from networks.backbone import Bottleneck, DeepStemResNet

__all__ = ["AffineActivation", "fuse_for_inference"]


def _affine(norm: _ActivatedBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode layer's per-channel ``(gain, shift)``, in float64 so folding adds no error of its own."""
    gain = torch.rsqrt(norm.running_var.double() + norm.eps)
    shift = -norm.running_mean.double() * gain
    if norm.affine:
        gain = gain * (norm.weight.detach().double().abs() + norm.eps)
        shift = norm.bias.detach().double() - norm.running_mean.double() * gain
    return gain, shift


def _activation(norm: _ActivatedBatchNorm) -> nn.Module:
    kind = _canonical_activation(norm.activation)
    if kind == "leaky_relu":
        return nn.LeakyReLU(norm.activation_param)
    if kind == "elu":
        return nn.ELU(norm.activation_param)
    return nn.Identity()


class AffineActivation(nn.Module):
    """``act(x * gain + shift)`` per channel: an eval-mode InPlace-ABN with no convolution to fold into."""

    def __init__(self, norm: _ActivatedBatchNorm) -> None:
        super().__init__()
        gain, shift = _affine(norm)
        self.register_buffer("gain", gain.float().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().view(1, -1, 1, 1))
        self.activation = _activation(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x * self.gain.to(x.dtype) + self.shift.to(x.dtype))


def _fold(conv: nn.Conv2d, norm: _ActivatedBatchNorm) -> nn.Conv2d:
    """A new convolution computing ``norm``'s affine map of ``conv``'s output."""
    gain, shift = _affine(norm)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        weight = conv.weight.detach().double() * gain.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.detach().double() * gain + shift
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def _fuse_children(module: nn.Module) -> None:
    """Fold in place below ``module`` (which is already a copy)."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _ActivatedBatchNorm):
                module._modules[first] = _fold(conv, norm)
                module._modules[second] = _activation(norm)
    if isinstance(module, (Bottleneck, DeepStemResNet)):
        for k in (1, 2, 3):
            conv, norm = getattr(module, f"conv{k}"), getattr(module, f"bn{k}")
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _ActivatedBatchNorm):
                setattr(module, f"conv{k}", _fold(conv, norm))
                setattr(module, f"bn{k}", _activation(norm))
    for name, child in module.named_children():
        if isinstance(child, _ActivatedBatchNorm):  # not after a convolution: affine + activation
            setattr(module, name, AffineActivation(child))
        else:
            _fuse_children(child)


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (a DFPNet, or any module built of the same pieces) for inference only:
    InPlace-ABN folded into the preceding convolutions, the rest as ``AffineActivation``.

    The copy is in eval mode and holds no norm layer, so it must not be trained; ``model`` is
    left untouched. A DFPNet copy skips its auxiliary heads and returns ``[final]``: the same
    final map as ``model.eval()`` up to float rounding (tests/test_deploy.py).
    """
    fused = copy.deepcopy(model).eval()
    _fuse_children(fused)
    if hasattr(fused, "aux_heads"):  # DFPNet: inference reads only the final map (outputs[-1])
        fused.aux_heads = False
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    return fused
