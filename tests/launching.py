"""Start terraseg under real distributed launchers, as a cluster job would (CPU, gloo)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra: str) -> dict[str, str]:
    """Environment for CPU DDP: accelerate must be told, or it starts independent runs."""
    env = dict(
        os.environ,
        ACCELERATE_USE_CPU="1",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def accelerate_command(
    script: str,
    *args: str,
    processes: int = 2,
    machines: int = 1,
    machine_rank: int = 0,
    port: int | None = None,
    extra: list[str] | None = None,
    module: bool = False,
) -> list[str]:
    """``accelerate launch --multi_gpu`` for ``processes`` ranks over ``machines`` nodes.

    ``script`` is a path in the repository, or with ``module`` a module run as ``-m``.
    """
    return [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        str(machines),
        "--machine_rank",
        str(machine_rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port or free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *(extra or []),
        *(["-m", script] if module else [str(REPO / script)]),
        *args,
    ]


def run(command: list[str], timeout: float = 400, **kwargs) -> subprocess.CompletedProcess:
    """Run a launcher to completion, failing with its output on a non-zero exit."""
    done = subprocess.run(
        command, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done
