"""Experiment tracking with wandb (online, offline or disabled), main process only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from engine.train.config_types import LogConfig

WandbMode = Literal["online", "offline", "disabled"]


class Tracker:
    """A thin wandb wrapper that does nothing when disabled or on non-main ranks.

    The wandb run id is stored in ``RUN/wandb_id`` so that a resumed run continues the same
    wandb run. Offline runs are written under ``RUN/wandb`` (sync them with ``wandb sync``).

    Args:
        config: The ``log`` section of the config.
        run_dir: The run directory.
        name: Run name.
        full_config: The resolved config, recorded with the run.
        enabled: False on non-main ranks.
    """

    def __init__(
        self, config: LogConfig, run_dir: Path, name: str, full_config: dict, enabled: bool
    ) -> None:
        self.run = None
        if not enabled or config.wandb == "disabled":
            return
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=cast(WandbMode, config.wandb),  # one of these: checked with the config
            config=full_config,
            tags=config.tags or None,
        )

    @property
    def active(self) -> bool:
        """Whether anything is sent."""
        return self.run is not None

    def log(self, values: dict[str, Any], step: int) -> None:
        """Log scalars (``None``/NaN values are dropped)."""
        if self.run is not None:
            clean = {k: v for k, v in values.items() if v is not None and v == v}
            self.run.log(clean, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list], step: int) -> None:
        """Log a table (e.g. per-class scores)."""
        if self.run is not None:
            import wandb

            header: list[str | int] = list(columns)  # the type wandb.Table declares
            self.run.log({key: wandb.Table(columns=header, data=rows)}, step=step)

    def log_images(
        self, key: str, images: list[np.ndarray], captions: list[str], step: int
    ) -> None:
        """Log RGB images (e.g. prediction panels)."""
        if self.run is not None and images:
            import wandb

            self.run.log(
                {key: [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step
            )

    def finish(self) -> None:
        """Close the wandb run."""
        if self.run is not None:
            self.run.finish()
            self.run = None
