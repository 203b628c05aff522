"""Data: the authors' Dog dataset loader, its checker and a synthetic stand-in.

``dataset.datasets.CartoonDataSet`` (the loader), ``dataset.transforms`` (normalisation),
``dataset.check`` (``python -m dataset.check DATA_DIR``) and ``dataset.synthetic``
(``python -m dataset.synthetic --out DIR``). Nothing is imported here, so the command-line
tools start without loading torch. The data itself lives beside this package, untracked
(see dataset/README.md).
"""
