"""An independent, functional re-statement of the authors' ``Res_Deeplab`` forward (eval mode).

It walks a state_dict with ``torch.nn.functional`` calls in the order of the authors'
``Uresnet.forward``, sharing no code with ``networks/``, so that comparing the two checks the
module wiring (concat orders, which features feed which block, strides, dilations) and the
InPlace-ABN scale ``|weight| + eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    def abn(t, p, act=True):
        shape = (1, -1, 1, 1)
        y = (t - sd[p + ".running_mean"].view(shape)) / torch.sqrt(
            sd[p + ".running_var"].view(shape) + EPS
        ) * (sd[p + ".weight"].abs() + EPS).view(shape) + sd[p + ".bias"].view(shape)
        return F.leaky_relu(y, 0.01) if act else y

    def conv(t, p, stride=1, dilation=1):
        w = sd[p + ".weight"]
        pad = dilation * (w.shape[-1] // 2)
        return F.conv2d(t, w, sd.get(p + ".bias"), stride, pad, dilation)

    def up(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    h_gt, w_gt = x.shape[-2:]
    x1 = F.relu(abn(conv(x, "conv1", stride=2), "bn1", False))
    x1 = F.relu(abn(conv(x1, "conv2"), "bn2", False))
    x1 = F.relu(abn(conv(x1, "conv3"), "bn3", False))
    feats = []
    t = F.max_pool2d(x1, 3, 2, 1)
    for layer, (blocks, stride, dilation) in enumerate([(3, 1, 1), (4, 2, 1), (23, 2, 1), (3, 1, 2)], 1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            s = stride if b == 0 else 1
            o = F.relu(abn(conv(t, p + ".conv1"), p + ".bn1", False))
            o = F.relu(abn(conv(o, p + ".conv2", s, dilation), p + ".bn2", False))
            o = abn(conv(o, p + ".conv3"), p + ".bn3", False)
            res = abn(conv(t, p + ".downsample.0", s), p + ".downsample.1", False) if b == 0 else t
            t = F.relu(o + res)
        feats.append(t)
    x2, x3, x4, x5 = feats

    hw = x5.shape[-2:]
    pooled = abn(conv(F.adaptive_avg_pool2d(x5, 1), "layer5.conv1.1"), "layer5.conv1.2")
    branches = [up(pooled, hw), abn(conv(x5, "layer5.conv2.0"), "layer5.conv2.1")]
    for i, d in zip((3, 4, 5), (6, 12, 18)):
        branches.append(abn(conv(x5, f"layer5.conv{i}.0", dilation=d), f"layer5.conv{i}.1"))
    aspp = abn(conv(torch.cat(branches, 1), "layer5.bottleneck.0"), "layer5.bottleneck.1")
    x = conv(abn(aspp, "stabilization.0"), "stabilization.1")

    def up_block(t, lateral, p):
        t = torch.cat([lateral, up(t, lateral.shape[-2:])], 1)
        t = abn(conv(t, p + ".conv.0"), p + ".conv.1")
        return abn(conv(t, p + ".conv.2"), p + ".conv.3")

    def up_hd(t, p):
        t = abn(conv(t, p + ".conv1.0"), p + ".conv1.1")
        return abn(conv(up(t, x1.shape[-2:]), p + ".conv3.0"), p + ".conv3.1")

    def aux(t):
        t = abn(conv(up(t, (h_gt, w_gt)), "aux_pred.0"), "aux_pred.1")
        t = abn(conv(t, "aux_pred.2"), "aux_pred.3")
        return conv(t, "aux_pred.4")

    prep_5 = up_hd(x, "up_HD5")
    parsing = aux(prep_5)
    c1 = abn(conv(x1, "c1.0"), "c1.1")
    c2 = abn(conv(x2, "c2.0"), "c2.1")
    c3 = abn(conv(x3, "c3.0"), "c3.1")
    c4 = abn(conv(x4, "c4.0"), "c4.1")
    x = up_block(x, c4, "up1")
    prep_4 = up_hd(x, "up_HD4")
    parsing1 = aux(prep_4)
    final = torch.cat([prep_4, prep_5], 1)
    x = up_block(x, c3, "up2")
    prep_3 = up_hd(x, "up_HD3")
    parsing2 = aux(prep_3)
    final = torch.cat([prep_3, final], 1)
    x = up_block(x, c2, "up3")
    prep_2 = up_hd(x, "up_HD2")
    parsing3 = aux(prep_2)
    final = torch.cat([torch.cat([prep_2, final], 1), c1], 1)
    t = abn(conv(final, "double3x3.0"), "double3x3.1")
    t = abn(conv(t, "double3x3.2"), "double3x3.3")
    t = up(conv(t, "reduce"), (h_gt, w_gt))
    t = abn(conv(t, "outc.0"), "outc.1")
    return [parsing, parsing1, parsing2, parsing3, conv(t, "outc.2")]
