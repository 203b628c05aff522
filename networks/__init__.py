"""DFPnet and its deep-stem ResNet-101 backbone."""
from networks.dfpnet import DFPNet, Res_Deeplab

__all__ = ["DFPNet", "Res_Deeplab"]
