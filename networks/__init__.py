"""DFPnet and its deep-stem ResNet-101 backbone: the model only (it takes a class count, knows nothing
of label sets, data or training), its from-scratch initialisation, and its inference-time folding."""

from networks.dfpnet import DFPNet

__all__ = ["DFPNet"]
