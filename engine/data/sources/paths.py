"""Where terraseg finds data that does not live in the repository."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def dubai_dataset_dir() -> Path:
    """Return the folder of the Dubai aerial dataset.

    ``TERRASEG_DUBAI_DIR`` overrides the default, which is
    ``../shared/datasets/dubai-aerial`` beside the repository checkout.
    """
    override = os.environ.get("TERRASEG_DUBAI_DIR")
    if override:
        return Path(override).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "datasets" / "dubai-aerial").resolve()


def multispectral_dataset_dir() -> Path:
    """Return the folder of the multispectral samples (Sen1Floods11, 38-Cloud).

    ``TERRASEG_MULTISPECTRAL_DIR`` overrides the default, which is
    ``../shared/datasets/multispectral`` beside the repository checkout.
    """
    override = os.environ.get("TERRASEG_MULTISPECTRAL_DIR")
    if override:
        return Path(override).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "datasets" / "multispectral").resolve()
