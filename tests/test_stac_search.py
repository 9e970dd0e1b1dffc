"""STAC API item search (``--stac-api``) against a real STAC API served on loopback."""

import datetime as dt
import json

import pytest
from launching import free_port
from servers import served
from stac_api import CONFORMANCE, item_dict, served_api

from engine.data.sources.stac_search import (
    StacSearchError,
    parse_bbox,
    parse_collections,
    parse_query,
    search_items,
)

START = dt.datetime(2024, 1, 1, 10, 30, tzinfo=dt.timezone.utc)


def _items() -> list[dict]:
    """23 items: 15 in ``s2``, 8 in ``ls``, stepping east by 0.1° and a day at a time."""
    items = []
    for i in range(23):
        collection = "s2" if i < 15 else "ls"
        west = 10 + 0.1 * i
        items.append(
            item_dict(
                f"{collection}-{i:02d}",
                collection,
                (west, 45.0, west + 0.08, 45.08),
                START + dt.timedelta(days=i),
                **{"eo:cloud_cover": (i * 7) % 100, "platform": f"sat-{i % 2}"},
            )
        )
    return items


ITEMS = _items()


def _ids(items) -> list[str]:
    return [item.id for item in items]


def _searches(api) -> list[tuple[str, dict]]:
    return [(method, params) for method, path, params in api.requests if path == "/search"]


@pytest.mark.parametrize("methods", [("GET",), ("POST",), ("GET", "POST")])
def test_pages_are_followed_up_to_max_items(methods):
    with served_api(ITEMS, methods=methods, max_limit=5) as api:
        found = search_items(api.url, collections=["s2"], max_items=12)
        assert _ids(found) == [f"s2-{i:02d}" for i in range(12)]
        searches = _searches(api)
        assert len(searches) == 3  # pages of 5, 5 and 2: the third is not asked for more
        expected_method = "POST" if "POST" in methods else "GET"
        assert {method for method, _ in searches} == {expected_method}
        assert int(searches[0][1]["limit"]) == 12  # asked for max_items, capped by the server

        api.requests.clear()
        everything = search_items(api.url, collections=["s2", "ls"])
        assert _ids(everything) == [item["id"] for item in ITEMS]
        assert len(_searches(api)) == 5  # 23 items in pages of 5


def test_items_keep_their_self_links_and_properties():
    with served_api(ITEMS) as api:
        (item,) = search_items(api.url, collections=["ls"], max_items=1)
    assert item.get_self_href() == f"{api.url}/collections/ls/items/ls-15"
    assert item.collection_id == "ls"
    assert item.properties["eo:cloud_cover"] == (15 * 7) % 100
    assert item.datetime == START + dt.timedelta(days=15)
    assert "image" in item.assets


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_filters_are_honoured(method):
    bbox = (10.45, 44.9, 10.95, 45.2)  # meets the items whose strip overlaps 10.45..10.95 E
    with served_api(ITEMS, methods=(method,)) as api:
        in_box = search_items(api.url, bbox=bbox)
        in_june = search_items(api.url, datetime="2024-01-05/2024-01-09")
        clear = search_items(api.url, query=["eo:cloud_cover<30", "platform=sat-0"])
        combined = search_items(
            api.url,
            collections=["s2"],
            bbox=bbox,
            query={"eo:cloud_cover": {"gte": 20}},
        )
    expected_box = [i["id"] for i in ITEMS if i["bbox"][2] >= bbox[0] and i["bbox"][0] <= bbox[2]]
    assert _ids(in_box) == expected_box and 0 < len(expected_box) < len(ITEMS)
    days = [(START + dt.timedelta(days=n)).date() for n in range(4, 9)]
    assert [item.datetime.date() for item in in_june] == days  # 2024-01-05 .. 2024-01-09
    assert all(i.properties["eo:cloud_cover"] < 30 for i in clear)
    assert all(i.properties["platform"] == "sat-0" for i in clear)
    expected_clear = [
        i["id"]
        for i in ITEMS
        if i["properties"]["eo:cloud_cover"] < 30 and i["properties"]["platform"] == "sat-0"
    ]
    assert _ids(clear) == expected_clear and expected_clear
    cloud = {i["id"]: i["properties"]["eo:cloud_cover"] for i in ITEMS}
    expected_combined = [i for i in expected_box if i.startswith("s2") and cloud[i] >= 20]
    assert _ids(combined) == expected_combined and expected_combined


def test_query_numbers_travel_as_numbers():
    with served_api(ITEMS) as api:
        search_items(api.url, query=["eo:cloud_cover<=14"], max_items=3)
        (search,) = _searches(api)[:1]
    assert search[1]["query"] == {"eo:cloud_cover": {"lte": 14}}


def _one_line_error(url: str, **kwargs) -> str:
    with pytest.raises(StacSearchError) as caught:
        search_items(url, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_an_unreachable_api_is_one_line_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    message = _one_line_error(url)
    assert message.startswith(f"STAC API {url} is unreachable") and "refused" in message.lower()


def test_a_web_page_is_not_a_stac_api(tmp_path):
    (tmp_path / "index.html").write_text("<html><body>a web page</body></html>")
    (tmp_path / "feature.json").write_text(json.dumps({"type": "Feature", "id": "x"}))
    with served(tmp_path) as url:
        assert "is not a STAC API" in _one_line_error(url + "/")
        assert "is not a STAC API" in _one_line_error(url + "/feature.json")
        assert url in _one_line_error(url + "/feature.json")


def test_a_catalog_without_item_search_is_not_a_search_api():
    static = [c for c in CONFORMANCE if "item-search" not in c]
    with served_api(ITEMS, conforms_to=static) as api:
        message = _one_line_error(api.url)
    assert f"STAC API {api.url} is not a STAC API with item search" in message


def test_http_errors_name_the_api_and_the_status():
    with served_api(ITEMS, search_status=503) as api:
        message = _one_line_error(api.url)
        assert message.startswith(f"STAC API {api.url}: HTTP 503 while searching")
        assert "the search backend is down" in message
        missing = _one_line_error(api.url + "/no/such/api")
    assert "HTTP 404 while reading its landing page" in missing and api.url in missing


def test_no_items_says_what_was_searched():
    with served_api(ITEMS) as api:
        message = _one_line_error(
            api.url, collections=["s2"], bbox=(100, 0, 101, 1), datetime="2024-01"
        )
    assert message.startswith(f"STAC API {api.url}: no items match")
    assert "collections=s2" in message and "bbox=100,0,101,1" in message
    assert "datetime=2024-01" in message


def test_a_slow_api_times_out(monkeypatch):
    monkeypatch.setenv("TERRASEG_STAC_TIMEOUT", "0.5")
    with served_api(ITEMS, search_delay=10) as api:
        message = _one_line_error(api.url)
    assert message.startswith(f"STAC API {api.url} did not answer within 0.5 s while searching")


def test_an_oversized_response_is_refused(monkeypatch):
    with served_api(ITEMS) as api:
        search_items(api.url, max_items=1)  # fits the default limit
        monkeypatch.setenv("TERRASEG_MAX_METADATA_BYTES", "2500")  # a page of 5 does not
        message = _one_line_error(api.url)
    assert "bytes, the limit for metadata (TERRASEG_MAX_METADATA_BYTES)" in message
    assert message.startswith(f"STAC API {api.url}: {api.url}/search sent over 2500 bytes")


def test_query_needs_the_query_extension():
    without_query = [c for c in CONFORMANCE if not c.endswith("#query")]
    with served_api(ITEMS, conforms_to=without_query) as api:
        assert len(search_items(api.url, max_items=2)) == 2
        message = _one_line_error(api.url, query=["eo:cloud_cover<10"])
    assert "does not offer the query extension" in message and api.url in message


def test_bad_arguments_are_one_line():
    with served_api(ITEMS) as api:
        assert "bad search arguments" in _one_line_error(api.url, datetime="last tuesday")
        assert "max_items must be at least 1" in _one_line_error(api.url, max_items=0)
    assert "expected an http:// or https:// URL" in _one_line_error("catalog.json")


def test_parse_bbox():
    assert parse_bbox("10.5, 45,11,45.5") == (10.5, 45.0, 11.0, 45.5)
    assert parse_bbox("179,-1,-179,1") == (179.0, -1.0, -179.0, 1.0)  # across the antimeridian
    for bad in ("10,45,11", "a,b,c,d", "10,46,11,45", "10,45,200,46", "nan,1,2,3"):
        with pytest.raises(StacSearchError, match="--bbox"):
            parse_bbox(bad)


def test_parse_collections():
    assert parse_collections("sentinel-2-l2a, landsat-c2-l2,") == [
        "sentinel-2-l2a",
        "landsat-c2-l2",
    ]
    with pytest.raises(StacSearchError, match="--collections"):
        parse_collections(" , ")


def test_parse_query():
    assert parse_query(["eo:cloud_cover<10", "eo:cloud_cover>=2.5", "platform=sentinel-2a"]) == {
        "eo:cloud_cover": {"lt": 10, "gte": 2.5},
        "platform": {"eq": "sentinel-2a"},
    }
    assert parse_query(["s2:mgrs_tile<>32TNS", '{"view:sun_elevation": {"gt": 30}}']) == {
        "s2:mgrs_tile": {"neq": "32TNS"},
        "view:sun_elevation": {"gt": 30},
    }
    for bad in ("cloudy", "eo:cloud_cover<", "<10", '{"a": 1}', "{not json"):
        with pytest.raises(StacSearchError, match="--query"):
            parse_query([bad])


def test_the_whole_search_has_a_deadline(monkeypatch):
    monkeypatch.setenv("TERRASEG_STAC_DEADLINE", "0.3")
    with served_api(ITEMS, search_delay=0.6) as api:
        message = _one_line_error(api.url)
    assert message == (
        f"STAC API {api.url}: the search took over 0.3 s (TERRASEG_STAC_DEADLINE) while searching"
    )
    monkeypatch.setenv("TERRASEG_STAC_DEADLINE", "soon")
    assert "TERRASEG_STAC_DEADLINE='soon' is not a number" in _one_line_error(api.url)
