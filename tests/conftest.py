"""Shared test fixtures: offline hubs, the real Dubai dataset, small generated data."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dubai_dir() -> Path:
    """The real Dubai dataset folder; a missing dataset fails the test, never skips it."""
    from engine.data.sources.paths import dubai_dataset_dir

    path = dubai_dataset_dir()
    if not (path / "Semantic segmentation dataset").is_dir():
        pytest.fail(f"Dubai dataset not found at {path}; set TERRASEG_DUBAI_DIR")
    return path / "Semantic segmentation dataset"


def write_pair(root: Path, group: str, stem: str, image, mask, image_ext: str = "png") -> None:
    """Write one image/mask pair in the Dubai layout (``group/images``, ``group/masks``)."""
    from PIL import Image

    (root / group / "images").mkdir(parents=True, exist_ok=True)
    (root / group / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / group / "images" / f"{stem}.{image_ext}")
    Image.fromarray(mask).save(root / group / "masks" / f"{stem}.png")


@pytest.fixture(scope="session")
def dubai_shards(dubai_dir: Path, tmp_path_factory) -> Path:
    """Dubai shards built the way a user would: inspect, edit the draft, build (tile 256).

    The default split (seed 0, 15 % val, 15 % test) puts Tile 2 in val, Tile 5 in test.
    """
    import yaml

    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.sources.classes import classes_from_dict
    from engine.data.sources.mask_inspect import draft_classes_yaml, inspect_masks
    from engine.data.sources.pairing import pair_by_glob

    report = inspect_masks(sorted(dubai_dir.glob("*/masks/*.png")), workers=2)
    draft = yaml.safe_load(draft_classes_yaml(report))
    for entry in draft["classes"]:
        if entry["value"] in ("#9B9B9B", "#000000"):
            entry["ignore"] = True
    out = tmp_path_factory.mktemp("dubai") / "shards"
    pairs = pair_by_glob(str(dubai_dir / "*/images/*.jpg"), str(dubai_dir / "*/masks/*.png"))
    options = BuildOptions(tile=256, samples_per_shard=64, workers=2)
    build_shards(pairs, classes_from_dict(draft, "edited-draft.yaml"), out, options)
    return out


#: A version-2 manifest of three RGB classes, for tests that export a tiny model.
RGB_MANIFEST = {
    "classes": [
        {"name": "water", "color": "#1E64E6"},
        {"name": "land", "color": "#A88C64"},
        {"name": "road", "color": "#E632C8"},
    ],
    "ignore_index": 255,
    "mean": [0.45, 0.5, 0.4],
    "std": [0.2, 0.21, 0.22],
    "tile_size": 64,
}


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
CLASSES = {
    "encoding": "rgb",
    "classes": [
        {"name": "red", "value": "#FF0000"},
        {"name": "green", "value": "#00FF00"},
        {"name": "blue", "value": "#0000FF"},
        {"name": "nodata", "value": "#000000", "ignore": True},
    ],
}


def make_tiny_dataset(root: Path, groups=4, per_group=2, size=(40, 56), seed=0) -> Path:
    """Random RGB images with 3-colour masks (a 3x3 no-data corner) in the Dubai layout."""
    rng = np.random.default_rng(seed)
    for g in range(groups):
        for k in range(per_group):
            index = rng.integers(0, 3, size)
            mask = np.array(COLOURS, np.uint8)[index]
            mask[:3, :3] = 0  # a little no-data
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            write_pair(root, f"Tile {g}", f"part_{k}", image, mask)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return root


def build_tiny(root: Path, out: Path, **options) -> dict:
    """Build shards from :func:`make_tiny_dataset` output (tile 32, 5 samples a shard)."""
    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.sources.classes import load_classes
    from engine.data.sources.pairing import pair_by_glob

    pairs = pair_by_glob(str(root / "*/images/*.png"), str(root / "*/masks/*.png"))
    defaults = dict(tile=32, val=0.25, test=0.25, samples_per_shard=5)
    return build_shards(
        pairs, load_classes(root / "classes.yaml"), out, BuildOptions(**(defaults | options))
    )


@pytest.fixture(scope="session")
def synthetic_scenes(tmp_path_factory) -> Path:
    """Generated land-cover scenes: 5 groups x 2 scenes of 192x160 (Dubai layout)."""
    from engine.data.synthetic.scenes import write_dataset

    root = tmp_path_factory.mktemp("synthetic") / "scenes"
    write_dataset(root, num_groups=5, scenes_per_group=2, size=(192, 160), seed=0)
    return root


def build_scene_shards(scenes: Path, out: Path, **options) -> Path:
    """Shards of generated scenes, tile 64 (9 tiles a scene), 3/1/1 groups for train/val/test."""
    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.sources.classes import load_classes
    from engine.data.sources.pairing import pair_by_glob

    pairs = pair_by_glob(str(scenes / "*/images/*"), str(scenes / "*/masks/*.png"))
    options = dict(tile=64, val=0.2, test=0.2) | options
    build_shards(pairs, load_classes(scenes / "classes.yaml"), out, BuildOptions(**options))
    return out


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_scenes, tmp_path_factory) -> Path:
    """Shards of the generated scenes, 7 samples a shard."""
    return build_scene_shards(
        synthetic_scenes, tmp_path_factory.mktemp("shards") / "s", samples_per_shard=7
    )


def tiny_args(shards: Path, *overrides: str) -> list[str]:
    """``key=value`` overrides that make the tiny CPU config smaller still, on ``shards``."""
    return [

        f"data.shards={shards}", "data.crop_size=64", "data.batch_size=2", "data.num_workers=0",
        "data.eval_batch_size=4", "model.options.base_width=4", "train.epochs=2",
        "train.steps_per_epoch=4", "train.log_every=2", "schedule.warmup_steps=2",
    ] + list(overrides)  # fmt: skip


def tiny_config(shards: Path, *overrides: str):
    """The tiny CPU config pointed at ``shards``, made smaller still for tests."""
    from engine.train.config import load_config

    return load_config(REPO / "launch/configs/tiny-cpu.yaml", tiny_args(shards, *overrides))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test gets its own accelerate singletons (tests run several trainings in-process)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
