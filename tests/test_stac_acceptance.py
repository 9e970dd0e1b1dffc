"""Acceptance: the real Sentinel-2 chip of ../shared as a STAC catalog (one COG per band,
10 m and 20 m bands as Sentinel-2 has them), built into shards with ``--stac``, trained a
few steps, predicted with ``predict --stac`` (locally and over HTTP with Range), and the
catalog of the predictions read back with pystac."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from affine import Affine
from conftest import tiny_config
from rasterio.warp import transform_geom
from servers_faulty import FaultyServer
from shapely.geometry import box, mapping, shape
from stac_catalogs import save_catalog, write_cog, write_scene

from engine.commands import build_shards as build_command
from engine.commands import predict as predict_command
from engine.data.sources.paths import multispectral_dataset_dir
from engine.train.loop import train

BANDS_10M = {"B2": "blue", "B3": "green", "B4": "red", "B8": "nir"}
BANDS_20M = {"B5": "rededge", "B6": "rededge", "B7": "rededge", "B8A": "nir08",
             "B11": "swir16", "B12": "swir22"}  # fmt: skip
BANDS_60M = {"B1": "coastal", "B9": "nir09", "B10": "cirrus"}  # kept at 20 m: 512/6 is no size
ORDER = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
CLASSES = {
    "encoding": "index",
    "classes": [
        {"name": "nodata", "value": -1, "ignore": True},
        {"name": "not-water", "value": 0},
        {"name": "water", "value": 1},
    ],
}
ITEM_ID = "Spain_7370579"


def _halve(band: np.ndarray) -> np.ndarray:
    """A 20 m band from a 10 m one: the mean of each 2x2 block (0, nodata, stays out)."""
    blocks = band.astype(np.float64).reshape(band.shape[0] // 2, 2, band.shape[1] // 2, 2)
    valid = (blocks != 0).sum(axis=(1, 3))
    total = blocks.sum(axis=(1, 3))
    return np.where(valid > 0, np.rint(total / np.maximum(valid, 1)), 0).astype(np.int16)


@pytest.fixture(scope="module")
def s2_catalog(tmp_path_factory) -> tuple[Path, np.ndarray, rasterio.Affine]:
    """The Sen1Floods11 S2 chip as one STAC item with a COG per band and a label COG."""
    source = multispectral_dataset_dir() / "sen1floods11"
    if not (source / "S2").is_dir():
        pytest.fail(f"multispectral samples not found at {source}; set TERRASEG_MULTISPECTRAL_DIR")
    root = tmp_path_factory.mktemp("s2stac")
    folder = root / ITEM_ID
    folder.mkdir()
    with rasterio.open(source / "S2" / f"{ITEM_ID}_S2Hand.tif") as src:
        data, crs, transform = src.read(), src.crs, src.transform
        names = list(src.descriptions)
    with rasterio.open(source / "Labels" / f"{ITEM_ID}_LabelHand.tif") as src:
        label = src.read(1)
    geometry = transform_geom(crs, "EPSG:4326", mapping(box(*rasterio.transform.array_bounds(
        data.shape[1], data.shape[2], transform)[:4])))  # fmt: skip
    item = pystac.Item(ITEM_ID, geometry, list(shape(geometry).bounds),
                       pystac.utils.str_to_datetime("2019-01-01T00:00:00Z"),  # nominal
                       {"proj:code": crs.to_string(), "platform": "sentinel-2"})  # fmt: skip
    coarse = Affine(transform.a * 2, 0, transform.c, 0, transform.e * 2, transform.f)
    for name, band in zip(names, data):
        common = {**BANDS_10M, **BANDS_20M, **BANDS_60M}[name]
        fine = name in BANDS_10M
        pixels, grid = (band, transform) if fine else (_halve(band), coarse)
        write_cog(folder / f"{name}.tif", pixels, grid, crs=crs.to_string(), nodata=0)
        item.add_asset(name, pystac.Asset(
            f"./{name}.tif", media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={"eo:bands": [{"name": name, "common_name": common}]},
        ))  # fmt: skip
    write_cog(folder / "label.tif", label, transform, crs=crs.to_string(), nodata=-1)
    item.add_asset("label", pystac.Asset("./label.tif", roles=["labels"]))
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return save_catalog(root, [item]), data, transform


@pytest.fixture(scope="module")
def trained(s2_catalog, tmp_path_factory) -> Path:
    """Shards built with --stac from the catalog, and a tiny model trained a few steps."""
    catalog, data, transform = s2_catalog
    work = tmp_path_factory.mktemp("s2run")
    code = build_command.main([
        "--stac", str(catalog), "--assets", ",".join(ORDER), "--label-asset", "label",
        "--classes", str(catalog.parent / "classes.yaml"), "--out", str(work / "shards"),
        "--tile", "128", "--split-by", "blocks:1",
    ])  # fmt: skip
    assert code == 0
    manifest = yaml.safe_load((work / "shards" / "dataset.json").read_text())
    assert [b["name"] for b in manifest["bands"]] == ORDER
    assert {b["dtype"] for b in manifest["bands"]} == {"int16"}
    assert manifest["stac"]["items"][0]["id"] == ITEM_ID
    assert manifest["stac"]["items"][0]["grid"]["transform"] == list(transform)[:6]
    assert manifest["stac"]["items"][0]["assets"]["B8A"] == "B8A"
    config = tiny_config(work / "shards", "data.crop_size=64", "train.epochs=1",
                         "train.steps_per_epoch=3", "schedule.warmup_steps=1")  # fmt: skip
    train(config, work / "run")
    return work / "run"


def _read_back(out: Path) -> tuple[pystac.Item, np.ndarray, dict]:
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert [item.id for item in items] == [ITEM_ID]
    item = items[0]
    href = item.assets["prediction"].get_absolute_href()
    with rasterio.open(href) as src:
        profile = {"crs": src.crs, "transform": src.transform, "driver": src.driver,
                   "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")}  # fmt: skip
        mask = src.read(1)
    return item, mask, profile


def test_build_train_predict_from_a_static_catalog(s2_catalog, trained, tmp_path):
    catalog, data, transform = s2_catalog
    out = tmp_path / "pred"
    code = predict_command.main(["--model", str(trained), "--stac", str(catalog), "--out",
                                 str(out), "--tile", "128", "--no-progress"])  # fmt: skip
    assert code == 0
    item, mask, profile = _read_back(out)
    assert profile["transform"] == transform and profile["layout"] == "COG"
    assert mask.shape == data.shape[1:]
    assert set(np.unique(mask)) <= {0, 1, 255}  # two classes and nodata
    assert (mask[(data == 0).any(axis=0)] == 255).all()  # the chip's nodata stays nodata
    links = [link for link in item.links if link.rel == "derived_from"]
    assert links and links[0].get_absolute_href() == str(
        catalog.parent / ITEM_ID / f"{ITEM_ID}.json"
    )
    classes = item.assets["prediction"].extra_fields["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "not-water"), (1, "water")]


def test_predict_over_http_reads_the_same_pixels(s2_catalog, trained, tmp_path):
    catalog, _, _ = s2_catalog
    objects = {
        f"/s2/{p.relative_to(catalog.parent).as_posix()}": p.read_bytes()
        for p in catalog.parent.rglob("*") if p.is_file()
    }  # fmt: skip
    local, remote = tmp_path / "local", tmp_path / "remote"
    args = ["--model", str(trained), "--tile", "128", "--no-progress", "--assets", ",".join(ORDER)]
    assert predict_command.main([*args, "--stac", str(catalog), "--out", str(local)]) == 0
    with FaultyServer(objects) as server:
        url = f"{server.url}/s2/catalog.json"
        assert predict_command.main([*args, "--stac", url, "--out", str(remote)]) == 0
        cog_gets = [h for m, p, h in server.requests if m == "GET" and p.endswith(".tif")]
    assert cog_gets and all("Range" in headers for headers in cog_gets)
    _, local_mask, _ = _read_back(local)
    item, remote_mask, _ = _read_back(remote)
    np.testing.assert_array_equal(remote_mask, local_mask)
    link = next(link for link in item.links if link.rel == "derived_from")
    assert link.get_absolute_href() == f"{server.url}/s2/{ITEM_ID}/{ITEM_ID}.json"


def test_items_without_the_models_bands_are_refused_naming_the_item(trained, tmp_path, capsys):
    item, _ = write_scene(tmp_path, "rgb-only", (500000.0, 5000000.0), size=64)
    catalog = save_catalog(tmp_path, [item])
    out = tmp_path / "pred"
    code = predict_command.main(["--model", str(trained), "--stac", str(catalog), "--out",
                                 str(out), "--no-progress"])  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0
    assert "item 'rgb-only': no asset or band named 'B1'" in error
    assert not out.exists()  # refused before anything is written
