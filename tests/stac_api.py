"""A small STAC API on loopback, for tests: a real ``http.server`` in a thread.

It serves items the test generates: the landing page (with its conformance classes and
``search`` links for GET and/or POST), ``/conformance``, ``/collections``,
``/collections/{id}``, ``/collections/{id}/items/{item}``, and ``/search`` with GET
(query-string) and POST (JSON body) filtering by ``ids``, ``collections``, ``bbox``
(intersection with each item's bbox), ``datetime`` (an instant or an ``a/b`` interval with
``..`` open ends, against each item's ``datetime``) and the query extension (``eq``,
``neq``, ``lt``, ``lte``, ``gt``, ``gte`` on properties), paged by ``limit`` (capped at
``max_limit``) with ``next`` links carrying a ``token``. Every request is recorded in
``api.requests`` so that tests can see the pages the client asked for.

Options that make it misbehave (for the error tests): ``conforms_to`` (drop item search),
``methods`` (only GET, only POST), ``search_status`` (answer ``/search`` with an HTTP
error), ``search_delay`` (answer ``/search`` late).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

SPEC = "https://api.stacspec.org/v1.0.0"
CONFORMANCE = (
    f"{SPEC}/core",
    f"{SPEC}/collections",
    f"{SPEC}/ogcapi-features",
    f"{SPEC}/item-search",
    f"{SPEC}/item-search#query",
    f"{SPEC}/item-search#filter",
)
OPERATORS = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


def item_dict(
    item_id: str,
    collection: str,
    bbox: Sequence[float],
    when: dt.datetime,
    **properties: Any,
) -> dict[str, Any]:
    """A STAC item (GeoJSON polygon of ``bbox``) in ``collection`` with an ``image`` asset."""
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "bbox": list(bbox),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), **properties},
        "assets": {
            "image": {
                "href": f"https://example.invalid/{item_id}.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
        },
        "links": [],
    }


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _in_interval(when: str, interval: str) -> bool:
    start, _, end = interval.partition("/")
    moment = _time(when)
    if not end:  # an instant
        return moment == _time(start)
    after = start in ("", "..") or moment >= _time(start)
    before = end in ("", "..") or moment <= _time(end)
    return after and before


def _meets(bbox: Sequence[float], box: Sequence[float]) -> bool:
    return bbox[0] <= box[2] and box[0] <= bbox[2] and bbox[1] <= box[3] and box[1] <= bbox[3]


@dataclass
class StacApi:
    """The items and options of one served API (``url`` is set once it listens)."""

    items: list[dict[str, Any]]
    conforms_to: Sequence[str] = CONFORMANCE
    methods: Sequence[str] = ("GET", "POST")
    default_limit: int = 10
    max_limit: int = 5
    search_status: int | None = None
    search_delay: float = 0.0
    url: str = ""
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def collections(self) -> list[dict[str, Any]]:
        ids = sorted({item["collection"] for item in self.items})
        return [self.collection(name) for name in ids]

    def collection(self, name: str) -> dict[str, Any]:
        return {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": name,
            "description": f"generated collection {name}",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [{"rel": "self", "href": f"{self.url}/collections/{name}"}],
        }

    def landing(self) -> dict[str, Any]:
        links = [
            {"rel": "self", "href": f"{self.url}/", "type": "application/json"},
            {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
            {"rel": "conformance", "href": f"{self.url}/conformance"},
            {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"},
        ]
        for method in self.methods:
            links.append(
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": method,
                }
            )
        return {
            "type": "Catalog",
            "stac_version": "1.0.0",
            "id": "test-api",
            "description": "a STAC API served by the test",
            "conformsTo": list(self.conforms_to),
            "links": links,
        }

    def served_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item as the API sends it: with its ``self``, ``collection`` and root links."""
        href = f"{self.url}/collections/{item['collection']}/items/{item['id']}"
        links = [
            {"rel": "self", "href": href, "type": "application/geo+json"},
            {"rel": "collection", "href": f"{self.url}/collections/{item['collection']}"},
            {"rel": "root", "href": f"{self.url}/"},
        ]
        return {**item, "links": links}

    def matches(self, item: dict[str, Any], params: dict[str, Any]) -> bool:
        if params.get("ids") and item["id"] not in params["ids"]:
            return False
        if params.get("collections") and item["collection"] not in params["collections"]:
            return False
        if params.get("bbox") and not _meets(item["bbox"], params["bbox"]):
            return False
        if params.get("datetime") and not _in_interval(
            item["properties"]["datetime"], params["datetime"]
        ):
            return False
        for name, constraints in (params.get("query") or {}).items():
            value = item["properties"].get(name)
            for op, operand in constraints.items():
                if value is None or not OPERATORS[op](value, operand):
                    return False
        return True

    def search(self, params: dict[str, Any], method: str) -> tuple[int, dict[str, Any]]:
        limit = int(params.get("limit") or self.default_limit)
        if not 1 <= limit <= 10000:
            return 400, {"code": "BadRequest", "description": f"limit {limit} is out of range"}
        limit = min(limit, self.max_limit)
        found = [item for item in self.items if self.matches(item, params)]
        start = int(params.get("token") or 0)
        page = found[start : start + limit]
        links: list[dict[str, Any]] = []
        if start + limit < len(found):
            token = start + limit
            if method == "GET":
                query = {k: v for k, v in params.items() if k != "token"}
                query = {k: _query_text(k, v) for k, v in query.items()}
                query["token"] = str(token)
                href = f"{self.url}/search?{urllib.parse.urlencode(query)}"
                links.append({"rel": "next", "href": href, "method": "GET"})
            else:
                body = {"token": token}
                links.append(
                    {
                        "rel": "next",
                        "href": f"{self.url}/search",
                        "method": "POST",
                        "body": body,
                        "merge": True,
                    }
                )
        collection = {
            "type": "FeatureCollection",
            "features": [self.served_item(item) for item in page],
            "links": links,
            "numberMatched": len(found),
            "numberReturned": len(page),
        }
        return 200, collection


def _query_text(key: str, value: Any) -> str:
    if key in ("bbox", "collections", "ids"):
        return ",".join(str(v) for v in value)
    if key == "query":
        return json.dumps(value)
    return str(value)


def _get_params(query: str) -> dict[str, Any]:
    """``/search`` query-string parameters in the shape of a POST body."""
    raw = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
    params: dict[str, Any] = dict(raw)
    for key in ("collections", "ids"):
        if key in raw:
            params[key] = raw[key].split(",")
    if "bbox" in raw:
        params["bbox"] = [float(v) for v in raw["bbox"].split(",")]
    if "query" in raw:
        params["query"] = json.loads(raw["query"])
    return params


class _Handler(http.server.BaseHTTPRequestHandler):
    api: StacApi  # set on the subclass made for each server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up
            self.wfile.write(body)

    def _not_found(self) -> None:
        self._send(404, {"code": "NotFound", "description": f"{self.path} is not here"})

    def _search(self, params: dict[str, Any], method: str) -> None:
        if self.api.search_delay:
            self.api.stop.wait(self.api.search_delay)
        if self.api.search_status:
            status = self.api.search_status
            self._send(status, {"code": "Error", "description": "the search backend is down"})
            return
        if method not in self.api.methods:
            self._send(405, {"code": "MethodNotAllowed", "description": method})
            return
        status, payload = self.api.search(params, method)
        self._send(status, payload, "application/geo+json")

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        parts = [p for p in parsed.path.split("/") if p]
        self.api.requests.append(("GET", parsed.path, _get_params(parsed.query)))
        api = self.api
        if not parts:
            self._send(200, api.landing())
        elif parts == ["conformance"]:
            self._send(200, {"conformsTo": list(api.conforms_to)})
        elif parts == ["collections"]:
            self._send(200, {"collections": api.collections(), "links": []})
        elif len(parts) == 2 and parts[0] == "collections":
            known = {c["id"] for c in api.collections()}
            self._send(200, api.collection(parts[1])) if parts[1] in known else self._not_found()
        elif len(parts) == 4 and parts[0] == "collections" and parts[2] == "items":
            found = [i for i in api.items if (i["collection"], i["id"]) == (parts[1], parts[3])]
            self._send(200, api.served_item(found[0])) if found else self._not_found()
        elif parts == ["search"]:
            self._search(_get_params(parsed.query), "GET")
        else:
            self._not_found()

    def do_POST(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        params = json.loads(self.rfile.read(length) or b"{}")
        self.api.requests.append(("POST", parsed.path, params))
        if parsed.path.rstrip("/") == "/search":
            self._search(params, "POST")
        else:
            self._not_found()


@contextlib.contextmanager
def served_api(items: list[dict[str, Any]], **options: Any) -> Iterator[StacApi]:
    """Serve a :class:`StacApi` of ``items`` on 127.0.0.1 for the ``with`` block."""
    api = StacApi(items, **options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.stop.set()
        server.shutdown()
        server.server_close()
