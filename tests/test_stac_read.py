"""Reading STAC items: catalogs walked with bounds, assets chosen by key or band name, read
onto one grid (10 m and 20 m COGs), locally, over HTTP with Range and from S3 (moto); bad
catalogs give one-line errors naming the item."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, reproject
from servers import moto_s3
from servers_faulty import FaultyServer
from stac_catalogs import CRS, save_catalog, write_cog, write_scene

from engine.data.sources.rasters import open_raster
from engine.data.sources.stac import StacError, load_items
from engine.data.sources.stac_grid import remote_read_config, remote_reads
from engine.data.sources.stac_reader import item_raster, open_item

ORIGIN = (500000.0, 5000000.0)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """Two items in a static catalog: 10 m bands, a 20 m band (B11) and a label each."""
    root = tmp_path_factory.mktemp("catalog")
    a, arrays_a = write_scene(root, "scene-a", ORIGIN, size=256, seed=1)
    b, arrays_b = write_scene(root, "scene-b", (ORIGIN[0] + 5000, ORIGIN[1]), size=256, seed=2)
    return save_catalog(root, [a, b]), {"scene-a": arrays_a, "scene-b": arrays_b}


def _bilinear_10m(array_20m: np.ndarray) -> np.ndarray:
    """GDAL's warper, bilinear, of a 20 m band onto the 10 m grid (an independent path)."""
    out = np.zeros((array_20m.shape[0] * 2, array_20m.shape[1] * 2), np.float64)
    reproject(
        array_20m.astype(np.float64), out, src_crs=CRS, dst_crs=CRS,
        src_transform=Affine(20, 0, ORIGIN[0], 0, -20, ORIGIN[1]),
        dst_transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]),
        resampling=Resampling.bilinear,
    )  # fmt: skip
    return out


def _read_all(raster_path: Path) -> tuple[np.ndarray, list[str], object]:
    with open_raster(raster_path) as reader:
        h, w, _ = reader.shape
        return reader.read(0, h, 0, w), reader.band_names, reader.georef


def test_catalog_items_and_bands_by_common_name_key_or_band_name(scenes, tmp_path):
    catalog, arrays = scenes
    items = load_items(catalog)
    assert [item.id for item in items] == ["scene-a", "scene-b"]
    raster = item_raster(items[0], ["red", "B03", "nir", "swir16"], tmp_path,
                         labels=True, label_key="label")  # fmt: skip
    image, names, georef = _read_all(raster.image)
    assert names == ["red", "B03", "nir", "swir16"]
    assert raster.assets == {"red": "B04", "B03": "B03", "nir": "B08", "swir16": "B11"}
    assert image.dtype == np.uint16 and image.shape == (256, 256, 4)
    truth = arrays["scene-a"]
    for band, key in enumerate(["B04", "B03", "B08"]):  # 10 m bands: exactly the COGs
        np.testing.assert_array_equal(image[..., band], truth[key])
    assert georef["transform"] == Affine(10, 0, *ORIGIN[:1], 0, -10, ORIGIN[1])
    # 20 m band: bilinear onto the 10 m grid (what GDAL's warper gives, away from the edge)
    expected = _bilinear_10m(truth["B11"])
    inner = np.s_[2:-2, 2:-2]
    assert np.abs(image[..., 3][inner] - expected[inner]).max() <= 1.0
    # ... and not nearest: the resampled band has values the 20 m file does not hold
    nearest = np.repeat(np.repeat(truth["B11"], 2, axis=0), 2, axis=1).astype(np.float64)
    assert (
        np.abs(image[..., 3][inner] - nearest[inner]).mean()
        > 5 * np.abs(image[..., 3][inner] - expected[inner]).mean()
    )
    label, label_names, _ = _read_all(raster.label)
    np.testing.assert_array_equal(label[..., 0], truth["label"])


def test_a_chosen_resolution_reads_images_bilinear_and_labels_nearest(scenes, tmp_path):
    catalog, arrays = scenes
    item = load_items(catalog)[1]
    raster = item_raster(item, ["B11", "B04"], tmp_path, resolution=20.0,
                         labels=True, label_key="label")  # fmt: skip
    image, _, georef = _read_all(raster.image)
    assert image.shape == (128, 128, 2) and georef["transform"].a == 20.0
    np.testing.assert_array_equal(image[..., 0], arrays["scene-b"]["B11"])  # its own grid
    label, _, _ = _read_all(raster.label)
    assert set(np.unique(label)) <= {0, 1, 2}  # nearest: no blended class values
    np.testing.assert_array_equal(label[..., 0], arrays["scene-b"]["label"][::2, ::2])


def _objects(folder: Path, prefix: str) -> dict[str, bytes]:
    return {
        f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_over_http_only_ranges_of_the_cogs_are_fetched(scenes, tmp_path):
    catalog, arrays = scenes
    objects = _objects(catalog.parent, "/stac")
    with FaultyServer(objects) as server, remote_reads():
        items = load_items(f"{server.url}/stac/catalog.json")
        assert items[0].assets["B04"].href.startswith(server.url)
        with open_item(items[0], ["red", "swir16"], tmp_path) as reader:
            window = reader.read(128, 256, 0, 128)
        gets = [(p, h) for m, p, h in server.requests if m == "GET" and p.endswith(".tif")]
    np.testing.assert_array_equal(window[..., 0], arrays["scene-a"]["B04"][128:256, 0:128])
    assert gets and all("Range" in headers for _, headers in gets)
    fetched: dict[str, int] = {}
    for path, headers in gets:
        start, end = headers["Range"].removeprefix("bytes=").split("-")
        size = len(objects[path])
        fetched[path] = fetched.get(path, 0) + min(int(end or size - 1), size - 1) - int(start) + 1
    red = "/stac/scene-a/scene-a_B04.tif"
    assert set(fetched) == {red, "/stac/scene-a/scene-a_B11.tif"}  # nothing else was read
    assert fetched[red] < 0.6 * len(objects[red])  # one of 4 blocks + the header, not the file


def test_from_an_s3_compatible_store(scenes, tmp_path):
    catalog, arrays = scenes
    with moto_s3() as env:
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        for name, data in _objects(catalog.parent, "cat").items():
            s3.put_object(Bucket="shards", Key=name, Body=data)
        with remote_reads() as config:
            assert config["AWS_VIRTUAL_HOSTING"] == "FALSE" and config["AWS_HTTPS"] == "NO"
            items = load_items("s3://shards/cat/catalog.json")
            assert items[1].assets["B08"].href == "s3://shards/cat/scene-b/scene-b_B08.tif"
            with open_item(items[1], ["nir"], tmp_path) as reader:
                window = reader.read(0, 32, 200, 256)
    np.testing.assert_array_equal(window[..., 0], arrays["scene-b"]["B08"][0:32, 200:256])


def test_the_shard_store_settings_become_gdal_options(monkeypatch):
    monkeypatch.setenv("TERRASEG_SHARD_RETRIES", "2")
    monkeypatch.setenv("TERRASEG_SHARD_BACKOFF", "0.5")
    monkeypatch.setenv("TERRASEG_SHARD_DEADLINE", "7.5")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://store.example:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    config = remote_read_config()
    assert config["GDAL_HTTP_MAX_RETRY"] == "2" and config["GDAL_HTTP_RETRY_DELAY"] == "0.5"
    assert config["GDAL_HTTP_TIMEOUT"] == "8"
    assert config["AWS_S3_ENDPOINT"] == "store.example:9000" and config["AWS_HTTPS"] == "YES"
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")  # the user's own GDAL option wins
    monkeypatch.delenv("GDAL_HTTP_TIMEOUT", raising=False)
    with remote_reads() as added:
        assert "GDAL_HTTP_MAX_RETRY" not in added and os.environ["GDAL_HTTP_MAX_RETRY"] == "9"
        assert os.environ["GDAL_HTTP_TIMEOUT"] == "8"
    assert "GDAL_HTTP_TIMEOUT" not in os.environ  # put back as it was
    monkeypatch.setenv("TERRASEG_SHARD_RETRIES", "many")
    with pytest.raises(StacError, match="TERRASEG_SHARD_RETRIES"):
        remote_read_config()


# --- bad catalogs: one line naming the item -------------------------------------------


def _one_item(tmp_path: Path, change) -> Path:
    item, _ = write_scene(tmp_path, "bad-item", ORIGIN, size=64)
    change(item, tmp_path / "bad-item")
    return save_catalog(tmp_path, [item])


def _error(catalog: Path, wanted: list[str], tmp_path: Path, **kwargs) -> str:
    items = load_items(catalog)
    out = tmp_path / "vrt"
    out.mkdir(exist_ok=True)
    with pytest.raises(StacError) as caught:
        item_raster(items[0], wanted, out, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "'bad-item'" in message
    return message


def test_missing_asset_and_unknown_band_name(tmp_path):
    catalog = _one_item(tmp_path, lambda item, folder: item.assets.pop("B08"))
    assert "no asset or band named 'nir'" in _error(catalog, ["red", "nir"], tmp_path)
    assert "no asset or band named 'B99'" in _error(catalog, ["B99"], tmp_path)
    message = _error(catalog, ["red"], tmp_path, labels=True, label_key="mask")
    assert "label asset 'mask' missing" in message


def test_missing_asset_file(tmp_path):
    catalog = _one_item(tmp_path, lambda item, folder: (folder / "bad-item_B04.tif").unlink())
    assert "asset 'B04'" in _error(catalog, ["red"], tmp_path)


def _strip_projection(item: pystac.Item, folder: Path) -> None:
    write_cog(folder / "bad-item_B04.tif", np.ones((64, 64), np.uint16), None, crs=None)
    item.properties.pop("proj:code")
    for asset in item.assets.values():
        asset.extra_fields.pop("proj:transform", None)


def test_item_without_projection_information(tmp_path):
    catalog = _one_item(tmp_path, _strip_projection)
    assert "no projection information" in _error(catalog, ["red"], tmp_path)


def test_projection_from_proj_fields_when_the_file_has_none(tmp_path):
    def strip_file_only(item, folder):
        write_cog(folder / "bad-item_B04.tif", np.full((64, 64), 7, np.uint16), None, crs=None)

    items = load_items(_one_item(tmp_path, strip_file_only))
    raster = item_raster(items[0], ["red", "green"], tmp_path)
    image, _, georef = _read_all(raster.image)
    assert georef["crs"] == rasterio.crs.CRS.from_string(CRS) and (image[..., 0] == 7).all()


def test_mixed_crs_assets_are_refused(tmp_path):
    def other_crs(item, folder):
        transform = Affine(10, 0, 300000, 0, -10, 5000000)
        write_cog(folder / "bad-item_B08.tif", np.ones((64, 64), np.uint16), transform,
                  crs="EPSG:32634")  # fmt: skip

    message = _error(_one_item(tmp_path, other_crs), ["red", "nir"], tmp_path)
    assert "different CRSs" in message and "EPSG:32634" in message


def test_catalogs_are_bounded_and_only_item_and_child_links_are_followed(scenes, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    catalog, _ = scenes
    data = json.loads(catalog.read_text())
    data["links"] = [link for link in data["links"] if link["rel"] != "item" or
                     "scene-a" in link["href"]]  # fmt: skip
    data["links"].append({"rel": "alternate", "href": "./scene-b/scene-b.json"})
    other = catalog.parent / "partial.json"
    other.write_text(json.dumps(data))
    assert [item.id for item in load_items(other)] == ["scene-a"]
    monkeypatch.setenv("TERRASEG_STAC_MAX_ITEMS", "1")
    with pytest.raises(StacError, match="more than 1 items"):
        load_items(catalog)


def test_a_remote_catalog_cannot_point_at_local_files(scenes, tmp_path):
    catalog, _ = scenes
    item = json.loads((catalog.parent / "scene-a" / "scene-a.json").read_text())
    item["assets"]["B04"]["href"] = "file:///etc/hostname"
    with FaultyServer({"/x/item.json": json.dumps(item).encode()}) as server:
        with pytest.raises(StacError, match="a remote catalog may name only URLs"):
            load_items(f"{server.url}/x/item.json")


class _FlakyStatus(dict):
    """``FaultyServer.status`` answering 503 to the first ``times`` requests of each COG."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times, self.seen = times, {}

    def get(self, path, default=None):
        if path.endswith(".tif"):
            self.seen[path] = self.seen.get(path, 0) + 1
            if self.seen[path] <= self.times:
                return 503
        return default


@pytest.mark.parametrize("retries, ok", [(2, True), (1, False)])
def test_remote_reads_retry_as_the_shard_store_says(scenes, tmp_path, monkeypatch, retries, ok):
    catalog, arrays = scenes
    monkeypatch.setenv("TERRASEG_SHARD_RETRIES", str(retries))
    monkeypatch.setenv("TERRASEG_SHARD_BACKOFF", "0.05")
    with FaultyServer(_objects(catalog.parent, "/stac")) as server, remote_reads():
        server.drop_after = (50, 1)  # each catalog document: first GET cut short, then whole
        items = load_items(f"{server.url}/stac/catalog.json")
        server.drop_after = None  # GDAL takes a cut body for the file (docs/stac.md)
        server.status = _FlakyStatus(2)  # each COG: two 503s, then served
        if ok:
            with open_item(items[0], ["red"], tmp_path) as reader:
                window = reader.read(0, 64, 0, 64)
            np.testing.assert_array_equal(window[..., 0], arrays["scene-a"]["B04"][:64, :64])
        else:
            with pytest.raises(StacError, match=r"item 'scene-a': asset 'B04' .*503"):
                open_item(items[0], ["red"], tmp_path)
    documents = [p for m, p, _ in server.requests if m == "GET" and p.endswith(".json")]
    assert documents.count("/stac/catalog.json") == 2  # the short body was read again


def test_a_catalog_that_keeps_failing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TERRASEG_SHARD_RETRIES", "1")
    monkeypatch.setenv("TERRASEG_SHARD_BACKOFF", "0.01")
    with FaultyServer({"/c.json": b"{}"}) as server:
        server.status["/c.json"] = 502
        with pytest.raises(StacError, match=r"c.json: cannot read after 2 tries \(HTTPError"):
            load_items(f"{server.url}/c.json")
        with pytest.raises(StacError, match=r"missing.json: not found \(HTTP 404\)"):
            load_items(f"{server.url}/missing.json")


def test_a_label_asset_short_of_the_image_without_nodata_is_refused(tmp_path):
    def short_label(item, folder):
        transform = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
        write_cog(folder / "bad-item_label.tif", np.ones((32, 64), np.uint8), transform)

    catalog = _one_item(tmp_path, short_label)
    message = _error(catalog, ["red"], tmp_path, labels=True, label_key="label")
    assert "label asset 'label' does not cover the image's extent" in message


def test_a_cycle_of_child_links_ends(scenes, tmp_path):
    catalog, _ = scenes
    data = json.loads(catalog.read_text())
    here = tmp_path / "loop.json"
    data["links"].append({"rel": "child", "href": str(here)})  # itself
    here.write_text(json.dumps(data).replace('"./scene', f'"{catalog.parent}/scene'))
    assert [item.id for item in load_items(here)] == ["scene-a", "scene-b"]
