"""The synthetic scenes' classes, mask colours and the materials they are painted with."""

from __future__ import annotations

import numpy as np

SYNTHETIC_CLASSES: list[dict[str, str]] = [
    {"name": "background", "color": "#A88C64"},
    {"name": "farmland", "color": "#F5D742"},
    {"name": "road", "color": "#E632C8"},
    {"name": "building", "color": "#DC1E1E"},
    {"name": "water", "color": "#1E64E6"},
    {"name": "woodland", "color": "#0F6423"},
    {"name": "grass", "color": "#8CDC5A"},
]
"""The classes in class-index order: ``name`` and mask ``color`` (``#RRGGBB``)."""

NODATA_CLASS: dict[str, str] = {"name": "nodata", "color": "#000000"}
"""The no-data (unlabeled) mask colour; it maps to `IGNORE_INDEX`."""

IGNORE_INDEX = 255
"""Index-mask value of no-data pixels."""

BACKGROUND, FARMLAND, ROAD, BUILDING, WATER, WOODLAND, GRASS = range(7)
NUM_CLASSES = len(SYNTHETIC_CLASSES)

# Road kinds drawn into the road layer (0 = no road).
ASPHALT_MAIN, ASPHALT_MINOR, DIRT = 1, 2, 3

# Crop palettes for farmland parcels: (mean RGB, per-channel spread).
CROPS = np.array(
    [
        [[74, 112, 50], [8, 9, 6]],  # green crop
        [[112, 134, 74], [8, 8, 6]],  # young / pale green
        [[186, 168, 110], [8, 7, 6]],  # ripe cereal
        [[128, 104, 82], [7, 6, 5]],  # ploughed soil
        [[170, 152, 122], [6, 5, 5]],  # stubble
    ],
    dtype=np.float32,
)
CROP_P = np.array([0.32, 0.18, 0.18, 0.2, 0.12])

ROOFS = np.array(
    [
        [172, 88, 66],  # terracotta
        [128, 128, 132],  # grey
        [186, 186, 188],  # light grey
        [222, 218, 210],  # white
        [72, 72, 78],  # dark
        [122, 94, 74],  # brown
        [98, 110, 130],  # bluish metal
    ],
    dtype=np.float32,
)
ROOF_P = np.array([0.26, 0.2, 0.16, 0.12, 0.1, 0.1, 0.06])


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def palette() -> np.ndarray:
    """Return the mask colours as a uint8 array ``[256, 3]`` indexed by class index.

    Entries past the classes (the ignore index 255 included) are the no-data colour.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = _hex_to_rgb(NODATA_CLASS["color"])
    for index, cls in enumerate(SYNTHETIC_CLASSES):
        table[index] = _hex_to_rgb(cls["color"])
    return table


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Colour-code an index mask (``uint8 HxW``, 255 = ignore) as ``uint8 HxWx3``."""
    return palette()[mask]


def classes_config() -> dict:
    """Return the terraseg classes-file content (``encoding: rgb``) for the synthetic data."""
    classes: list[dict] = [
        {"name": c["name"], "value": c["color"], "color": c["color"]} for c in SYNTHETIC_CLASSES
    ]
    classes.append(
        {
            "name": NODATA_CLASS["name"],
            "value": NODATA_CLASS["color"],
            "color": NODATA_CLASS["color"],
            "ignore": True,
        }
    )
    return {"encoding": "rgb", "classes": classes}
