"""Item search in a STAC API (``--stac-api URL``) through pystac-client, bounded and one-line.

:func:`search_items` opens the API's landing page, checks that it offers item search, asks
``/search`` for the items matching collections, a bounding box, a datetime and ``query``
constraints, follows the ``next`` links page by page, and stops at ``max_items``. Everything
an API sends is data from a possibly hostile server: each response is bounded in size
(``TERRASEG_MAX_METADATA_BYTES``, as for metadata files) before it is parsed, each request
in time (``TERRASEG_STAC_TIMEOUT`` seconds, default 30) and the whole search too
(``TERRASEG_STAC_DEADLINE``, default 300). Every failure is one :class:`StacSearchError`
line naming the API: unreachable, too slow, not a STAC API, an HTTP error, or no items.

The parsers turn command-line strings into search arguments: :func:`parse_bbox`
(``W,S,E,N``), :func:`parse_collections` (``a,b``) and :func:`parse_query`
(``eo:cloud_cover<10``).
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.jsonfile import metadata_limit
from engine.settings import env_number

if TYPE_CHECKING:
    import pystac
    import requests
    from pystac_client import Client, ItemSearch

DEFAULT_TIMEOUT = 30.0
DEFAULT_DEADLINE = 300.0
#: Items asked of the server per page (servers may send fewer; ``next`` links give the rest).
PAGE_LIMIT = 100
#: Comparison operators of the STAC API query extension; two-character ones first.
QUERY_OPERATORS = {
    ">=": "gte",
    "<=": "lte",
    "<>": "neq",
    "!=": "neq",
    "=": "eq",
    ">": "gt",
    "<": "lt",
}
_QUERY = re.compile(r"^\s*([A-Za-z_][\w:.\-]*)\s*(>=|<=|<>|!=|=|>|<)\s*(.*?)\s*$")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")


class StacSearchError(UserError):
    """A STAC API search that could not be made or found nothing; the message names the API."""


class _Refused(Exception):
    """A response over the size limit or past the search's deadline (its message says which)."""


def _seconds(name: str, default: float) -> float:
    return env_number(name, default, error=StacSearchError, positive=True)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` in degrees (WGS84) → a bounding box for :func:`search_items`.

    West may exceed east (a box across the antimeridian, as STAC allows); south may not
    exceed north.

    Raises:
        StacSearchError: naming ``--bbox`` and the text when it is not four finite numbers
            within longitude and latitude ranges.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise StacSearchError(
            f"--bbox {text!r}: expected four numbers W,S,E,N in degrees"
        ) from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise StacSearchError(f"--bbox {text!r}: the numbers must be finite")
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise StacSearchError(
            f"--bbox {text!r}: longitudes must lie in [-180, 180] and latitudes in [-90, 90] "
            "with south <= north"
        )
    return west, south, east, north


def parse_collections(text: str) -> list[str]:
    """``a,b`` → ``["a", "b"]`` (blanks dropped; an empty list is an error)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise StacSearchError(f"--collections {text!r}: name at least one collection id")
    return names


def _query_value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text.strip("'\"")
    if not math.isfinite(number):
        return text
    return int(number) if re.fullmatch(r"[+-]?\d+", text) else number


def parse_query(expressions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Query-extension constraints from ``PROPERTY OP VALUE`` strings.

    ``["eo:cloud_cover<10", "platform=sentinel-2a"]`` →
    ``{"eo:cloud_cover": {"lt": 10}, "platform": {"eq": "sentinel-2a"}}``. OP is one of
    ``>= <= <> != = > <``; numbers become numbers (pystac-client would send ``"10"``, a
    string, which servers compare as text); constraints on one property are combined. A
    JSON object string is merged as it is.

    Raises:
        StacSearchError: naming the ``--query`` text that is neither form.
    """
    query: dict[str, dict[str, Any]] = {}
    for expression in expressions:
        if expression.lstrip().startswith("{"):
            try:
                parsed = json.loads(expression)
            except json.JSONDecodeError as error:
                raise StacSearchError(f"--query {expression!r}: not JSON ({error})") from None
            if not isinstance(parsed, dict) or not all(
                isinstance(v, dict) for v in parsed.values()
            ):
                raise StacSearchError(
                    f'--query {expression!r}: expected {{"property": {{"op": value}}}}'
                )
            for name, constraints in parsed.items():
                query.setdefault(name, {}).update(constraints)
            continue
        match = _QUERY.match(expression)
        if not match or not match.group(3):
            raise StacSearchError(
                f"--query {expression!r}: expected PROPERTY OP VALUE with OP one of "
                f"{' '.join(QUERY_OPERATORS)} (e.g. eo:cloud_cover<10)"
            )
        name, operator, value = match.groups()
        query.setdefault(name, {})[QUERY_OPERATORS[operator]] = _query_value(value)
    return query


class _Budget:
    """A requests response hook: bounds each body's size and the whole search's time."""

    def __init__(self, deadline: float, limit: int) -> None:
        self.deadline = deadline
        self.limit = limit
        self.ends = time.monotonic() + deadline

    def _check_time(self, response: requests.Response) -> None:
        if time.monotonic() > self.ends:
            response.close()
            raise _Refused(f"the search took over {self.deadline:g} s (TERRASEG_STAC_DEADLINE)")

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._check_time(response)
        declared = response.headers.get("Content-Length", "")
        too_large = _Refused(
            f"{response.url} sent over {self.limit} bytes, the limit for metadata "
            "(TERRASEG_MAX_METADATA_BYTES)"
        )
        if declared.isdigit() and int(declared) > self.limit:
            response.close()
            raise too_large
        body, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > self.limit:
                response.close()
                raise too_large
            self._check_time(response)
            body.append(chunk)
        response._content = b"".join(body)  # read within bounds: requests reuses it


def _detail(text: str) -> str:
    """One short line from an error body (a STAC API error's ``description`` when JSON)."""
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            text = str(parsed.get("description") or parsed.get("detail") or text)
    except ValueError:
        pass
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:199] + "…"


def _explain(error: BaseException, url: str, timeout: float, doing: str) -> str | None:
    """One line for a network or HTTP error met while ``doing`` something with the API.

    None when ``error`` is neither: the caller says what it means.
    """
    import requests

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, _Refused):
            return f"STAC API {url}: {cause} while {doing}"
        if isinstance(cause, requests.Timeout):
            return (
                f"STAC API {url} did not answer within {timeout:g} s while {doing} "
                "(TERRASEG_STAC_TIMEOUT)"
            )
        if isinstance(cause, requests.ConnectionError):
            found = _ERRNO.search(str(cause))
            reason = found.group(1).strip() if found else "the connection failed"
            return f"STAC API {url} is unreachable: {reason}"
        status = getattr(cause, "status_code", None)
        if status is not None:
            return f"STAC API {url}: HTTP {status} while {doing}: {_detail(str(cause))}"
        cause = cause.__cause__ or cause.__context__
    return None


def _open(url: str, timeout: float, budget: _Budget) -> Client:
    from pystac_client import Client, ConformanceClasses
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO(timeout=(timeout, timeout), max_retries=2)
    stac_io.session.hooks["response"].append(budget)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no conformsTo: checked below, as an error
            client = Client.open(url, stac_io=stac_io, timeout=(timeout, timeout))
    except Exception as error:  # requests, JSON and pystac errors all mean the same here
        problem = "not JSON" if isinstance(error, json.JSONDecodeError) else _detail(str(error))
        message = _explain(error, url, timeout, "reading its landing page") or (
            f"STAC API {url} is not a STAC API: its landing page is not a STAC catalog "
            f"({problem or type(error).__name__})"
        )
        raise StacSearchError(message) from None
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH) or not client.get_search_link():
        raise StacSearchError(
            f"STAC API {url} is not a STAC API with item search: its landing page lists no "
            "conformance class ending in /item-search or no 'search' link"
        )
    return client


def _start(client: Client, url: str, arguments: dict[str, Any], max_items: int) -> ItemSearch:
    from pystac_client import ConformanceClasses

    if arguments.get("query") and not client.conforms_to(ConformanceClasses.QUERY):
        raise StacSearchError(
            f"STAC API {url} does not offer the query extension (no conformance class ending "
            "in /item-search#query): search without --query"
        )
    searches = [link for link in client.links if link.rel == "search"]
    methods = {link.extra_fields.get("method") or "GET" for link in searches}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return client.search(
                method="POST" if "POST" in methods else "GET",
                max_items=max_items,
                limit=min(max_items, PAGE_LIMIT),
                **{k: v for k, v in arguments.items() if v is not None},
            )
    except Exception as error:  # pystac-client raises bare Exceptions for bad arguments
        detail = _detail(str(error))
        raise StacSearchError(f"STAC API {url}: bad search arguments: {detail}") from None


def _collect(search: ItemSearch, url: str, timeout: float) -> list[pystac.Item]:
    import pystac

    items: list[pystac.Item] = []
    pages = search.pages_as_dicts()
    while True:
        try:
            page = next(pages)
        except StopIteration:
            return items
        except Exception as error:
            message = _explain(error, url, timeout, "searching") or (
                f"STAC API {url}: its search answered with something that is not a STAC "
                f"item collection ({_detail(str(error) or type(error).__name__)})"
            )
            raise StacSearchError(message) from None
        for feature in page.get("features", []):
            try:
                items.append(pystac.Item.from_dict(feature, preserve_dict=False))
            except Exception as error:
                name = feature.get("id", "?") if isinstance(feature, dict) else "?"
                raise StacSearchError(
                    f"STAC API {url}: its search returned item {name!r} that is not a STAC "
                    f"item ({_detail(str(error) or type(error).__name__)})"
                ) from None


def _describe(arguments: Mapping[str, Any]) -> str:
    shown = []
    for key, value in arguments.items():
        if value is None:
            continue
        if key in ("collections", "bbox") and not isinstance(value, str):
            value = ",".join(str(v) for v in value)
        elif key == "query" and not isinstance(value, str):
            value = json.dumps(value, separators=(",", ":"))
        shown.append(f"{key}={value}")
    return " ".join(shown) or "anything (no filters)"


def search_items(
    url: str,
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    query: Mapping | list[str] | None = None,
    max_items: int = 1000,
) -> list[pystac.Item]:
    """The items a STAC API's item search finds, at most ``max_items`` of them.

    Args:
        url: The API's landing page (``http(s)://``).
        collections: Collection ids to search in; all of the API's when None.
        bbox: ``(west, south, east, north)`` in degrees: items whose footprint meets it.
        datetime: An RFC 3339 instant or ``start/end`` interval (``..`` open), or a date
            such as ``2024-06`` (pystac-client expands it to the month).
        query: Query-extension constraints: a mapping ``{"eo:cloud_cover": {"lt": 10}}`` or
            strings such as ``"eo:cloud_cover<10"`` (see :func:`parse_query`).
        max_items: The most items returned; pages are requested until it is reached.

    Returns:
        The items in the order the API sent them.

    Raises:
        StacSearchError: one line naming ``url``: the API is unreachable or too slow, is not
            a STAC API with item search, answers with an HTTP error or an oversized or
            non-STAC response, or no item matches (the message says what was searched).
    """
    if not re.match(r"^https?://", url):
        raise StacSearchError(f"STAC API {url!r}: expected an http:// or https:// URL")
    if max_items < 1:
        raise StacSearchError(f"STAC API {url}: max_items must be at least 1, not {max_items}")
    if isinstance(query, list):
        query = parse_query(query)
    try:
        import pystac_client  # noqa: F401
    except ImportError:
        raise StacSearchError(
            f"STAC API {url}: searching needs pystac-client (pip install 'terraseg[stac]')"
        ) from None
    timeout = _seconds("TERRASEG_STAC_TIMEOUT", DEFAULT_TIMEOUT)
    budget = _Budget(_seconds("TERRASEG_STAC_DEADLINE", DEFAULT_DEADLINE), metadata_limit())
    arguments = {"collections": collections, "bbox": bbox, "datetime": datetime, "query": query}
    client = _open(url, timeout, budget)
    items = _collect(_start(client, url, arguments, max_items), url, timeout)
    if not items:
        raise StacSearchError(f"STAC API {url}: no items match {_describe(arguments)}")
    return items
