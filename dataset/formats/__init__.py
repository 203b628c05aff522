"""Annotation formats: reading what annotation tools export (``dataset.convert``) and writing
predictions they import (``parse_images.py --annotations``).

``rle`` (COCO's and Label Studio's run-length encodings), ``shapes`` (polygons to pixels and back),
``names`` (class names to a label set), ``common`` (what every reader produces), and one module
per tool: ``masks`` (VOC palette PNGs, CVAT colour masks), ``coco``, ``labelme``, ``labelstudio``.
numpy, OpenCV and the standard library only (Pillow for reading palette masks and LabelMe), so that the
torch-free deployment writes the same files.
"""
