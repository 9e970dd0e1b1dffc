"""Part 3 of ``bench_peers``: one large scene predicted by each side in its own subprocess.

The parent writes a job file; ``python bench/peers_predict.py JOB`` predicts one side and
prints one JSON line: seconds, pixels, the RSS after loading the model and the process's
RSS high-water mark (``VmHWM``), so that each side's peak is its own (a forked child
would inherit the parent's pages).

Both sides run the same weights: terraseg's trained ``resunet34`` (from its run folder)
and ``smp.Unet("resnet34")`` given that state dict tensor by tensor in order (the two
state dicts list the same shapes in the same order; :func:`smp_from_terraseg` checks the
shapes and the outputs). TorchGeo's side normalises as terraseg's model does
(:func:`effective_mean_std`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def smp_from_terraseg(model: torch.nn.Module, in_channels: int, num_classes: int):
    """An ``smp.Unet("resnet34")`` holding ``model``'s weights; and the largest output gap.

    Raises:
        ValueError: when the two state dicts differ in length or in a tensor's shape.
    """
    import segmentation_models_pytorch as smp

    reference = smp.Unet("resnet34", encoder_weights=None, in_channels=in_channels,
                         classes=num_classes)  # fmt: skip
    source, target = model.state_dict(), reference.state_dict()
    if len(source) != len(target):
        raise ValueError(f"state dicts differ: {len(source)} and {len(target)} tensors")
    mapped = {}
    for (name, tensor), (theirs, slot) in zip(source.items(), target.items()):
        if tensor.shape != slot.shape:
            raise ValueError(f"{name} {list(tensor.shape)} != {theirs} {list(slot.shape)}")
        mapped[theirs] = tensor
    reference.load_state_dict(mapped, strict=True)
    model.eval()
    reference.eval()
    with torch.inference_mode():
        x = torch.randn(1, in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
        gap = float((model(x) - reference(x)).abs().max())
    return reference, gap


def effective_mean_std(normalization) -> tuple[list[float], list[float]]:
    """``(x - M) / S`` per band that equals terraseg's ``((x - lo) / span - mean) / std``."""
    lo, span = normalization.unit_scale()
    mean, std = normalization.unit_mean_std()
    as_list = lambda v: [float(t) for t in torch.as_tensor(v).flatten()]  # noqa: E731
    lo, span, mean, std = map(as_list, (lo, span, mean, std))
    if len(lo) == 1:
        lo, span = lo * len(mean), span * len(mean)
    return ([lo_ + m * s for lo_, m, s in zip(lo, mean, span)],
            [sd * s for sd, s in zip(std, span)])  # fmt: skip


def _status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (this process image's RSS high-water mark) in MiB.

    Not ``ru_maxrss``: Linux carries that across ``exec`` from the parent that forked the
    subprocess, so every side would report the parent's RSS.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Predict ``job['scene']`` with side ``job['side']``; the measures."""
    torch.set_num_threads(job["threads"])
    from engine.infer.model import load_model

    onnx = job["side"] == "terraseg-onnx"  # the run's ONNX export, on onnxruntime
    device = job["device"] if job["side"] == "terraseg" else "cpu"  # smp moves its own copy
    loaded = load_model(job["onnx"] if onnx else job["run_dir"], device)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    if job["side"] in ("terraseg", "terraseg-onnx"):
        from peers_terraseg import predict

        rss = _status_mb("VmRSS")
        result = predict(loaded, Path(job["scene"]), out, job)
    else:
        from peers_torchgeo import predict_scene

        network, gap = smp_from_terraseg(loaded.exported.model, job["in_channels"],
                                         loaded.num_classes)  # fmt: skip
        del loaded
        mean, std = job["mean"], job["std"]
        rss = _status_mb("VmRSS")
        result = predict_scene(
            network,
            Path(job["scene"]),
            tile=job["tile"],
            overlap=job["overlap"],
            batch=job["batch"],
            mean=mean,
            std=std,
            num_classes=job["num_classes"],
            out=out / "torchgeo.tif",
            device=job["device"],
        )
        result["weights_max_abs_diff"] = gap
    return result | {"rss_before_mb": rss, "peak_rss_mb": _status_mb("VmHWM")}


def run_side(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run :func:`run_job` in a fresh interpreter; its JSON result."""
    path = folder / f"job-{job['side']}.json"
    path.write_text(json.dumps(job))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / "peers_predict.py"), str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{job['side']} prediction failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"process_s": time.perf_counter() - start}


def main() -> int:
    """``peers_predict.py JOB``: one side's prediction; prints its JSON line."""
    sys.path.insert(0, str(HERE))
    job = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(run_job(job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
