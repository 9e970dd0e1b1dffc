"""docs/api.md runs as written: its Python blocks, in order, in an empty folder."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_the_five_jobs():
    code = "\n".join(_blocks())
    for call in (
        "api.build(",
        "api.train(",
        "api.evaluate(",
        "api.predict_file(",
        "api.export_onnx(",
    ):
        assert call in code, call


@pytest.mark.slow
def test_the_api_doc_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(_blocks(), 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102
    manifest, metrics = namespace["manifest"], namespace["metrics"]
    assert manifest.split("train").num_samples > 0 and manifest.has_split("test")
    assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["per_class"]) == manifest.num_classes
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "preds" / "scene_part_001_mask.png").is_file()
    # the ONNX file's prediction is the PyTorch one (the same sliding window on onnxruntime)
    torch_mask = np.asarray(Image.open(tmp_path / "preds" / "scene_part_001_mask.png"))
    onnx_mask = np.asarray(Image.open(tmp_path / "preds-onnx" / "scene_part_001_mask.png"))
    assert torch_mask.shape == onnx_mask.shape and (torch_mask == onnx_mask).mean() > 0.999
