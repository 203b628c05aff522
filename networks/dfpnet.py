"""DFPnet: Dense Feature Pyramid network for cartoon dog parsing (Wan, Mougeot & Yang, 2020).

    image ─► deep-stem ResNet-101 ─► x1 … x5
    x5 ─► ASPP (layer5) ─► stabilization = P5
    top-down:  P5 ─up1(c4 x4)─► P4 ─up2(c3 x3)─► P3 ─up3(c2 x2)─► P2
    HD module: each P_i ─► up_HD_i ─► 32 ch at x1's size (H/2)
    heads:     aux_pred(HD_i) at input size (deep supervision, one shared head)
               FCM: [HD2, HD3, HD4, HD5, c1(x1)] ─► double3x3 ─► reduce ─► outc = final

Module names are the authors' (their checkpoints are keyed by them); see docs/reference.md section 4.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from networks.backbone import DeepStemResNet, NormLayer, recast_weights, recompute


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear with ``align_corners=True``: every resize in DFPnet, and in its test-time scales
    (``inference.predict``). Always an op, even to the same size, so an export keeps it for any size."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _default_norm_layer() -> NormLayer:
    # libs picks its backend when first imported: it tries the optional compiled inplace-abn and reads
    # DFPNET_PURE_ABN. Importing it here, at the first network built, lets a script set that first.
    from libs import InPlaceABNSync

    return InPlaceABNSync


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (``layer5``): image pooling, 1x1 and three dilated 3x3 branches."""

    def __init__(
        self,
        in_channels: int = 2048,
        inner_channels: int = 256,
        out_channels: int = 512,
        dilations: tuple[int, int, int] = (6, 12, 18),
        *,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, inner_channels, 1, bias=False),
            norm_layer(inner_channels),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(in_channels, inner_channels, 1, bias=False), norm_layer(inner_channels)
        )
        self.conv3, self.conv4, self.conv5 = (
            nn.Sequential(
                nn.Conv2d(in_channels, inner_channels, 3, padding=d, dilation=d, bias=False),
                norm_layer(inner_channels),
            )
            for d in dilations
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(inner_channels * 5, out_channels, 1, bias=False),
            norm_layer(out_channels),
            nn.Dropout2d(0.1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.conv1(x), x.shape[-2:])
        return self.bottleneck(
            torch.cat([pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)], 1)
        )


class Up(nn.Module):
    """Top-down step: upsample to the lateral's size, concat [lateral, upsampled], two 3x3 conv + ABN."""

    def __init__(self, in_channels: int, out_channels: int, *, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            norm_layer(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            norm_layer(out_channels),
        )

    def forward(self, top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([lateral, resize(top, lateral.shape[-2:])], 1))


class HDBlock(nn.Module):
    """HD module branch: 1x1 conv + ABN, upsample to x1's size (H/2), 3x3 conv + ABN."""

    def __init__(self, in_channels: int, out_channels: int = 32, *, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), norm_layer(out_channels))
        self.conv3 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), norm_layer(out_channels)
        )

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv3(resize(self.conv1(x), size))


def _lateral(in_channels: int, out_channels: int, norm_layer: NormLayer) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_layer(out_channels))


class DFPNet(DeepStemResNet):
    """DFPnet (the authors' ``Res_Deeplab``): 61.18 M parameters for 8 classes.

    Args:
        num_classes: number of labels, background included (the label set's size: 8 for the Dog
            set); only the two classifiers (``CLASSIFIERS``) depend on it.
        norm_layer: InPlace-ABN-like factory ``(channels, activation="leaky_relu") -> nn.Module``;
            defaults to ``libs.InPlaceABNSync``. Pass ``libs.ABN`` for the memory-hungry
            "authors' way" baseline; the state_dict is the same either way.

    ``forward(x)`` takes N x 3 x H x W (BGR, ImageNet-normalised; any H, W >= 2) and returns
    ``[aux5, aux4, aux3, aux2, final]``, each N x num_classes x H x W, in the authors' order;
    with the attribute ``aux_heads`` set to False (``networks.fuse.fuse_for_inference`` does),
    ``[final]`` only: the four auxiliary heads run at the full input size and serve training alone.
    """

    # The backbone layers, and the heads that work at the input size (aux heads, fusion, final).
    CHECKPOINTABLE = (*DeepStemResNet.CHECKPOINTABLE, "heads")

    # The layers whose shape is the class count: what fine-tuning to another label set re-initialises.
    CLASSIFIERS = ("aux_pred.4", "outc.2")

    @classmethod
    def classes_in(cls, state: dict[str, torch.Tensor]) -> int | None:
        """The class count a state_dict of DFPNet was built for (its last classifier's outputs)."""
        weight = state.get(f"{cls.CLASSIFIERS[-1]}.weight")
        return int(weight.shape[0]) if weight is not None else None

    def __init__(self, num_classes: int, norm_layer: NormLayer | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        norm_layer = norm_layer or _default_norm_layer()
        super().__init__((3, 4, 23, 3), norm_layer=norm_layer)
        self.num_classes = num_classes
        self.aux_heads = True

        # Neck: ASPP on x5, then P5.
        self.layer5 = ASPP(2048, 256, 512, norm_layer=norm_layer)
        self.stabilization = nn.Sequential(norm_layer(512), nn.Conv2d(512, 256, 3, padding=1, bias=False))
        # Lateral reductions of x1..x4.
        self.c1 = _lateral(128, 32, norm_layer)
        self.c2 = _lateral(256, 64, norm_layer)
        self.c3 = _lateral(512, 128, norm_layer)
        self.c4 = _lateral(1024, 256, norm_layer)
        # Top-down pyramid.
        self.up1 = Up(512, 128, norm_layer=norm_layer)
        self.up2 = Up(256, 64, norm_layer=norm_layer)
        self.up3 = Up(128, 32, norm_layer=norm_layer)
        # HD module.
        self.up_HD5 = HDBlock(256, norm_layer=norm_layer)
        self.up_HD4 = HDBlock(128, norm_layer=norm_layer)
        self.up_HD3 = HDBlock(64, norm_layer=norm_layer)
        self.up_HD2 = HDBlock(32, norm_layer=norm_layer)
        # Never used in forward, but present in the authors' checkpoints: kept so they load strictly.
        self.layer5_pred3x3 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), norm_layer(32))
        # One auxiliary head shared by the four HD outputs.
        self.aux_pred = nn.Sequential(
            nn.Conv2d(32, 16, 1, bias=False),
            norm_layer(16),
            nn.Conv2d(16, 16, 3, padding=1),
            norm_layer(16),
            nn.Conv2d(16, num_classes, 1),
        )
        # FCM fusion head.
        self.double3x3 = nn.Sequential(
            nn.Conv2d(160, 64, 3, padding=1, bias=False),
            norm_layer(64),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            norm_layer(64),
        )
        self.reduce = nn.Conv2d(64, 16, 1, bias=False)
        self.outc = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, bias=False), norm_layer(16), nn.Conv2d(16, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if any(map(self.recomputes, self.checkpointed)) and not torch.compiler.is_compiling():
            # Trading time for memory already: weights' 16-bit copies are cast again in backward too.
            with recast_weights():
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DFPNet expects an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            raise ValueError(f"DFPNet needs H, W >= 2, got {tuple(x.shape[-2:])}")
        size = x.shape[-2:]
        x1, x2, x3, x4, x5 = self.forward_features(x)
        hd_size = x1.shape[-2:]

        p5 = self.stabilization(self.layer5(x5))
        p4 = self.up1(p5, self.c4(x4))
        p3 = self.up2(p4, self.c3(x3))
        p2 = self.up3(p3, self.c2(x2))

        hd5 = self.up_HD5(p5, hd_size)
        hd4 = self.up_HD4(p4, hd_size)
        hd3 = self.up_HD3(p3, hd_size)
        hd2 = self.up_HD2(p2, hd_size)
        fusion_inputs = (hd2, hd3, hd4, hd5, self.c1(x1))
        if not self.recomputes("heads"):
            aux = [self.aux_pred(resize(hd, size)) for hd in (hd5, hd4, hd3, hd2)] if self.aux_heads else []
            return aux + [self._classify(self._fuse(*fusion_inputs), size)]
        # The heads work at the input's size: their activations are the largest of the decoder's. The
        # fusion's concatenation is recomputed too, so that it is not kept beside its five inputs, and
        # in two parts (at x1's size, then at the input's) so that backward holds one part at a time.
        aux_head = functools.partial(self._aux, size=size)
        aux = (
            [recompute(self.aux_pred, aux_head, hd) for hd in (hd5, hd4, hd3, hd2)] if self.aux_heads else []
        )
        reduced = recompute((self.double3x3, self.reduce), self._fuse, *fusion_inputs)
        return aux + [recompute(self.outc, functools.partial(self._classify, size=size), reduced)]

    def _aux(self, hd: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.aux_pred(resize(hd, size))

    def _fuse(self, *fusion_inputs: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.double3x3(torch.cat(fusion_inputs, 1)))

    def _classify(self, reduced: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.outc(resize(reduced, size))
