"""Data: the dataset layout, its loader and augmentation, its checker, its browser and a synthetic stand-in.

``dataset.layout`` (file names of a split), ``dataset.datasets`` (``CartoonDataSet``: reading,
the authors' augmentation, the normalised tensors), ``dataset.check`` (``python -m dataset.check
DATA_DIR``), ``dataset.browse`` (``python -m dataset.browse DATA_DIR``) and ``dataset.synthetic``
(``python -m dataset.synthetic --out DIR``). Nothing is imported here, so the command-line tools
start without loading torch. The data itself lives in folders beside this package, untracked
(see dataset/README.md).
"""
