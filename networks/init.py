"""DFPnet's from-scratch initialisation (``train.py --restore-from none``, or a missing ImageNet file)."""

from __future__ import annotations

import torch

from networks.backbone import Bottleneck


def init_from_scratch(model: torch.nn.Module) -> None:
    """Random weights that a 101-layer network can learn from: He-normal convolutions (fan-out, as
    torchvision's ResNet) and the last norm of every bottleneck at scale 0, so each residual block
    starts as the identity (Goyal et al. 2017).

    The authors always start from ImageNet, where the init does not matter. From scratch,
    PyTorch's default init gives stem gradient norms in the thousands, and the synthetic demo
    learns far less with it (bench/RESULTS.md section 9).
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)  # InPlace-ABN scale |0| + eps: branch ~ 0
