"""Activated batch normalisation layers (InPlace-ABN) used by DFPnet; see libs/README.md."""

from libs.abn import ABN, BACKEND, BACKEND_DESCRIPTION, InPlaceABN, InPlaceABNSync, set_inplace

__all__ = ["ABN", "BACKEND", "BACKEND_DESCRIPTION", "InPlaceABN", "InPlaceABNSync", "set_inplace"]
