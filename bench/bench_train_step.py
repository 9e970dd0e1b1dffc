"""Train step: images/s, step time and FLOP rate per precision/layout, and the non-finite check.

One optimiser step as :mod:`engine.train.step` takes it, on a batch already on the device:
forward under autocast, the loss in float32 (``ce``; ``multitask`` for multitask models,
targets from :func:`engine.train.targets.make_targets`), backward, ``clip_grad_norm_(1.0)``,
the trainer's non-finite check and ``optimizer.step()`` (AdamW from
:func:`engine.train.optim.build_optimizer`: fused on CUDA). Variants, interleaved round by round
in one run: ``fp32``, ``bf16`` (autocast), ``bf16+cl`` (+ channels_last),
``bf16+cl+compile`` (+ ``torch.compile``), for each architecture and for
``segmentation_models_pytorch.Unet("resnet34", encoder_weights=None)``.

On a CPU the default is 128² crops, batch 2 (bf16 without bf16 units in the CPU runs
through slow reference kernels: a ResUNet-34 step at 256² took ~30x the float32 time on
the 2-core EPYC of the first measurements); pass ``--size 256`` for larger crops.

FLOPs are counted once per model with ``torch.utils.flop_counter.FlopCounterMode`` over
one forward + backward; MFU = FLOPs / step time / ``--peak-tflops`` (a GPU's dense bf16
peak, e.g. 989 for an H100 SXM). Without a peak (on a CPU) only the achieved GFLOP/s is
reported.

A second table isolates the non-finite-gradient skip: the trainer's
(:class:`engine.train.step.NonFiniteSkip`: ``found_inf`` on the device with a fused
optimiser, as ``GradScaler`` does; a host branch on ``bool(isfinite)`` otherwise) against
no check and against a host branch with a fused optimiser (what the trainer did before).

    python bench/bench_train_step.py                      # CPU default: 128², batch 2
    python bench/bench_train_step.py --arch all --no-compile
    python bench/bench_train_step.py --device cuda --size 512 --batch 16 --peak-tflops 989
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    base_parser,
    environment,
    interleave,
    medians,
    print_table,
    setup,
    synchronize,
    time_calls,
    write_results,
)
from torch.utils.flop_counter import FlopCounterMode

import archs
from engine.train.config_types import OptimConfig
from engine.train.loss_factory import build_loss
from engine.train.optim import build_optimizer
from engine.train.step import NonFiniteSkip
from engine.train.targets import make_targets

NAME = "bench_train_step"
NUM_CLASSES = 7
SMP = "smp-unet-r34"
VARIANTS = {
    "fp32": (None, False, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16+cl": (torch.bfloat16, True, False),
    "bf16+cl+compile": (torch.bfloat16, True, True),
}


def build_network(name: str) -> torch.nn.Module:
    """A registered architecture, or the smp reference UNet (random init either way)."""
    torch.manual_seed(0)
    if name == SMP:
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES)
    return archs.create_model(name, NUM_CLASSES)


def _float(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(*(t.float() for t in outputs))


class TrainStep:
    """One model, optimiser and batch on the device; :meth:`step` is one optimiser step.

    Args:
        name: Architecture name (or :data:`SMP`).
        device: Where to run.
        size: Crop edge.
        batch: Batch size.
        amp: Autocast dtype, or None for float32.
        channels_last: Model and input in channels_last.
        compile: ``torch.compile`` the model.
        skip: Non-finite handling: ``trainer`` (:class:`engine.train.step.NonFiniteSkip`),
            ``sync`` (always a host branch on ``bool(isfinite)``) or ``none`` (no check).
        fused: Fused optimiser (None = the library default: on CUDA).
    """

    def __init__(
        self,
        name: str,
        device: torch.device,
        size: int,
        batch: int,
        amp: torch.dtype | None,
        channels_last: bool,
        compile: bool,
        skip: str = "trainer",
        fused: bool | None = None,
    ) -> None:
        self.device, self.amp, self.skip = device, amp, skip
        model = build_network(name).to(device)
        self.multitask = archs.is_multitask(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(model, OptimConfig(fused=fused), device)
        self.skipper = NonFiniteSkip(self.optimizer, False, 0, device)
        self.model = torch.compile(model) if compile else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(1)
        raw = torch.rand(batch, 3, size, size, generator=generator)
        masks = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=generator)
        self.inputs = ((raw - 0.5) / 0.25).to(device)
        if channels_last:
            self.inputs = self.inputs.contiguous(memory_format=torch.channels_last)
        masks = masks.to(device)
        if self.multitask:
            self.targets: Any = make_targets(raw.to(device), masks, NUM_CLASSES)
            self.loss = build_loss("multitask", NUM_CLASSES).to(device)
        else:
            self.targets = masks
            self.loss = build_loss("ce", NUM_CLASSES).to(device)
        self.batch = batch

    def step(self) -> None:
        """Forward, loss, backward, clip, non-finite handling and optimiser step."""
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=bool(self.amp)
        ):
            outputs = self.model(self.inputs)
        loss = self.loss.combine(self.loss.terms(_float(outputs), self.targets))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if self.skip == "trainer":
            self.skipper.step(~torch.isfinite(norm))
        elif self.skip == "sync":
            if bool(torch.isfinite(norm)):
                self.optimizer.step()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def count_flops(name: str, size: int, batch: int) -> float:
    """FLOPs of one forward + backward (float32, on the CPU, the matmul/conv ops)."""
    model = build_network(name)
    inputs = torch.randn(batch, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = model(inputs)
        tensors = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        sum(t.float().mean() for t in tensors).backward()
    return float(counter.get_total_flops())


def contender(make: Callable[[], TrainStep], steps: int, warmup: int, device: torch.device):
    """A callable that builds the step on first use (timing the warm-up) and times ``steps``."""
    state: dict[str, Any] = {}

    def run() -> dict[str, float]:
        if "step" not in state:
            start = time.perf_counter()
            state["step"] = make()
            for _ in range(warmup):
                state["step"].step()
            synchronize(device)
            state["warmup_s"] = time.perf_counter() - start
        step: TrainStep = state["step"]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step.step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        return {
            "step_s": seconds,
            "images_per_s": step.batch / seconds,
            "warmup_s": state["warmup_s"],
        }

    return run


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--arch", default="resunet34", help="a registered name, or 'all'")
    parser.add_argument("--size", type=int, help="crop edge (default: CPU 128, GPU 512)")
    parser.add_argument("--batch", type=int, help="batch size (default: CPU 2, GPU 16)")
    parser.add_argument("--steps", type=int, help="timed steps per round (CPU 2, GPU 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps, first round (CPU 1, GPU 3)")
    parser.add_argument("--peak-tflops", type=float, help="device peak (dense bf16) for MFU")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile variant")
    parser.add_argument("--no-smp", action="store_true", help="skip the smp reference")
    parser.add_argument("--no-sync-table", action="store_true", help="skip the sync table")
    parser.add_argument("--variants", help="comma-separated subset of " + ",".join(VARIANTS))
    args = parser.parse_args()
    device = setup(args)
    gpu = device.type == "cuda"
    quick = args.quick
    size = args.size or (64 if quick else 512 if gpu else 128)
    batch = args.batch or (2 if quick else 16 if gpu else 2)
    steps = args.steps or (1 if quick else 3 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (1 if quick or not gpu else 3)
    rounds = args.rounds or (1 if quick else 3)
    names = archs.list_models() if args.arch == "all" else [args.arch]
    variants = dict(VARIANTS)
    if args.variants:
        variants = {k: VARIANTS[k] for k in args.variants.split(",")}
    if quick and not args.variants:
        variants = {k: VARIANTS[k] for k in ("fp32", "bf16+cl")}
    if args.no_compile:
        variants.pop("bf16+cl+compile", None)
    if not args.no_smp:
        try:
            import segmentation_models_pytorch  # noqa: F401

            names.append(SMP)
        except ImportError:
            print("segmentation_models_pytorch not installed: no smp reference", flush=True)
    env = environment(device)

    results: dict[str, Any] = {}
    rows = []
    for name in names:
        flops = count_flops(name, size, batch)
        contenders = {
            variant: contender(
                lambda n=name, v=spec: TrainStep(n, device, size, batch, v[0], v[1], v[2]),
                steps,
                warmup,
                device,
            )
            for variant, spec in variants.items()
        }
        samples = interleave(contenders, rounds)
        for variant, runs in samples.items():
            m = medians(runs)
            rate = flops / m["step_s"]
            m |= {
                "flops_per_step": flops,
                "achieved_tflops": rate / 1e12,
                "mfu": rate / (args.peak_tflops * 1e12) if args.peak_tflops else None,
                "rounds": runs,
            }
            results.setdefault(name, {})[variant] = m
        del contenders, samples
    for name in names:
        for variant, m in results[name].items():
            base = results[name].get("fp32")
            ref = results.get(SMP, {}).get(variant)
            rows.append(
                [
                    name,
                    variant,
                    1e3 * m["step_s"],
                    m["images_per_s"],
                    m["achieved_tflops"] * 1e3,
                    None if m["mfu"] is None else 100 * m["mfu"],
                    base["step_s"] / m["step_s"] if base else None,
                    m["images_per_s"] / ref["images_per_s"] if ref else None,
                ]
            )
    print_table(
        f"Train step, {size}² batch {batch}, {device}, median step of {rounds} interleaved "
        f"rounds × {steps} steps" + ("" if args.peak_tflops else " (MFU needs --peak-tflops)"),
        ["model", "variant", "step ms", "images/s", "GFLOP/s", "MFU %", "× fp32", "× smp"],
        rows,
    )

    sync: dict[str, Any] = {}
    if not args.no_sync_table:
        sync = sync_table(names[0], device, size, batch, steps, warmup, rounds, quick)
    payload = {
        "name": NAME,
        "env": env,
        "config": {
            "archs": names,
            "size": size,
            "batch": batch,
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "variants": list(variants),
            "peak_tflops": args.peak_tflops,
            "quick": quick,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "results": results,
        "nonfinite_skip": sync,
    }
    path = write_results(NAME, payload, args.out)
    print(f"\nwrote {path}")
    return 0


def sync_table(
    name: str,
    device: torch.device,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    rounds: int,
    quick: bool,
) -> dict[str, Any]:
    """Step time with the trainer's non-finite skip, none, and a host branch (fused)."""
    gpu = device.type == "cuda"
    amp, channels_last = (torch.bfloat16, True) if gpu else (None, False)
    trainer = "fused (default), NonFiniteSkip: found_inf on the device (trainer)"
    setups = {trainer: ("trainer", None)}
    setups["fused, no check"] = ("none", None)
    setups["fused, bool(isfinite) host branch (trainer before)"] = ("sync", None)
    setups["foreach (optim.fused: false), host branch"] = ("trainer", False)
    contenders = {
        label: contender(
            lambda s=skip, f=fused: TrainStep(
                name, device, size, batch, amp, channels_last, False, skip=s, fused=f
            ),
            steps,
            warmup,
            device,
        )
        for label, (skip, fused) in setups.items()
    }
    samples = interleave(contenders, rounds)
    summary = {label: medians(runs) | {"rounds": runs} for label, runs in samples.items()}
    base = summary[trainer]["step_s"]
    norm = torch.ones((), device=device)
    check_s = time_calls(lambda: bool(torch.isfinite(norm)), 1000, 10, device)
    summary["isfinite_bool_alone_s"] = check_s
    print_table(
        f"Non-finite skip, {name} {'bf16+cl' if gpu else 'fp32'}, {size}² batch {batch}, "
        f"{device}; bool(isfinite(norm)) alone, idle queue: {1e6 * check_s:.1f} µs",
        ["optimiser step", "step ms", "× trainer"],
        [
            [label, 1e3 * m["step_s"], base / m["step_s"]]
            for label, m in summary.items()
            if isinstance(m, dict)
        ],
    )
    return summary


if __name__ == "__main__":
    sys.exit(main())
