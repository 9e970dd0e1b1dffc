"""``--stac-api``: the items of a STAC API search (the loopback API of tests/stac_api.py) as
the images of a build, their COGs read over HTTP with Range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from servers_faulty import FaultyServer
from stac_api import served_api
from stac_catalogs import write_scene

from engine.commands import build_shards as build_command

CLOUDS = {"scene-a": 5, "scene-b": 50, "scene-c": 10}
CLASSES = {"encoding": "index", "classes": [{"name": f"c{v}", "value": v} for v in (0, 1, 2)]}


def test_build_from_an_api_search(tmp_path, capsys):
    objects, items = {}, []
    for n, (name, cloud) in enumerate(CLOUDS.items()):
        item, _ = write_scene(tmp_path, name, (500000.0 + 5000 * n, 5000000.0), size=64, seed=n)
        item.collection_id = "s2"
        item.properties["eo:cloud_cover"] = cloud
        items.append(item)
        for path in (tmp_path / name).iterdir():
            objects[f"/cogs/{name}/{path.name}"] = path.read_bytes()
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    with FaultyServer(objects) as cogs:
        served = []
        for item in items:
            data = item.to_dict(include_self_link=False)
            for asset in data["assets"].values():  # the API names the COGs by URL
                asset["href"] = f"{cogs.url}/cogs/{item.id}/{Path(asset['href']).name}"
            served.append(data)
        with served_api(served) as api:
            code = build_command.main([
                "--stac-api", api.url, "--collections", "s2", "--query", "eo:cloud_cover<20",
                "--datetime", "2024-06-01T00:00:00Z/2024-06-02T00:00:00Z",
                "--assets", "red,green,blue,nir", "--label-asset", "label",
                "--classes", str(tmp_path / "classes.yaml"), "--out", str(tmp_path / "out"),
                "--tile", "32", "--split-by", "blocks:1", "--val", "0.25", "--test", "0.25",
            ])  # fmt: skip
        gets = [h for m, p, h in cogs.requests if m == "GET"]
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["stac"]["source"] == api.url
    assert [item["id"] for item in manifest["stac"]["items"]] == ["scene-a", "scene-c"]
    assert manifest["stac"]["items"][0]["href"].startswith(f"{api.url}/collections/s2/items/")
    assert gets and all("Range" in headers for headers in gets)
    # the search options go with --stac-api only
    with pytest.raises(SystemExit):
        build_command.main(["--stac", "x.json", "--bbox", "0,0,1,1", "--assets", "red",
                            "--classes", "c.yaml", "--out", "o"])  # fmt: skip
    assert "--bbox goes with --stac-api" in capsys.readouterr().err
