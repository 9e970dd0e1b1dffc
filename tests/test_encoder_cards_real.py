"""Acceptance on the real Sentinel-2 chip (Sen1Floods11, 13 int16 bands B1..B12 with B8A).

Its shards are built with the launch script; the SSL4EO-S12 card matches all 13 bands by
name, and the model's input stage turns the loader's standardised batch into the card's
``DN / 10000`` of the real pixels. The weight file has the published layout, random values.
"""

import pytest
import torch
from test_encoder_cards import published_state, write
from test_multispectral_shards import _floods

from engine.data.shards.loader import eval_batches
from engine.data.shards.manifest import load_manifest
from engine.data.sources.paths import multispectral_dataset_dir
from engine.train.config import load_config
from engine.train.setup import build_model_reported

CARD = "ssl4eo_s12_s2_resnet18_moco"
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_the_real_sentinel2_chip_matches_every_card_band_and_gets_dn_over_10000(tmp_path):
    data = multispectral_dataset_dir()
    if not (data / "sen1floods11" / "S2").is_dir():
        pytest.fail(f"multispectral samples not found at {data}; set TERRASEG_MULTISPECTRAL_DIR")
    shards = _floods(data, "S2", tmp_path / "shards")
    weights = write(published_state(CARD, head=False), tmp_path / "r18.pth")
    config = load_config(
        "unet_resnet18_ssl4eo", [f"data.shards={shards}", f"model.weights.path={weights}"]
    )
    manifest = load_manifest(shards)
    model, spec, report = build_model_reported(config, manifest)
    assert report is not None and "13 of 13 bands matched (B1=B01, B2=B02" in report
    assert "B8A, B9=B09" in report and "new, from the mean filter: none" in report
    assert spec["options"]["input_card"] == CARD
    normalization = manifest.normalization
    split = "val" if manifest.has_split("val") else "train"
    images = next(iter(eval_batches(manifest, split, 2, num_workers=0))).images
    nodata = normalization.nodata_mask(images)
    native = images.float()
    if nodata is not None:  # nodata enters as the band's mean
        means = torch.tensor([b.mean for b in normalization.bands]).view(1, -1, 1, 1)
        native = torch.where(nodata, means.expand_as(native), native)
    got = model.input_stage(normalization(images))
    torch.testing.assert_close(got, native / 10000, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(got.new_zeros(1, 13, 128, 128))).all()
