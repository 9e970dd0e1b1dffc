"""Trained models out of terraseg: self-contained ONNX files (QGIS Deepness, onnxruntime).

- :mod:`engine.export.graph`: the exported network (band selection, nodata, normalisation,
  softmax inside the graph).
- :mod:`engine.export.metadata`: the metadata keys (Deepness's and terraseg's), written and
  read back as untrusted data.
- :mod:`engine.export.onnx`: :func:`~engine.export.onnx.export_onnx`, ``terraseg export``.
- :mod:`engine.export.deps`: the optional ``onnx`` extra, imported lazily.

A stage between ``train`` (whose export folders it reads) and ``infer`` (which predicts with
the ONNX files it writes).
"""
