"""Inference: prediction with flip and multi-scale testing, pre- and post-processing, the onnxruntime
path, metrics, pictures, and the set-up of the network a prediction script runs.

Below training in docs/design.md's layers: it may import ``dataset``, ``utils``, ``networks`` and
``libs``. ``pipeline``, ``onnx_infer`` and ``model`` run without torch on the --onnx path (the
deployment bundle ships them without it).
"""
