"""Inference: prediction with flip and multi-scale testing, pre- and post-processing, the onnxruntime
path, metrics, pictures, and the set-up of the network a prediction script runs.

Layer 4 of docs/design.md: it may import ``dataset``, ``utils``, ``networks`` and ``libs``.
``pipeline`` and ``onnx_infer`` need no torch (the deployment bundle ships them without it).
"""
