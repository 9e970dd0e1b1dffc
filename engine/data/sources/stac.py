"""STAC items from a file or URL: an ItemCollection, a Catalog or Collection, or one Item.

:func:`load_items` reads the document named by ``source`` (a local path, ``file://``,
``http(s)://`` or ``s3://`` URL) and returns its items as :class:`pystac.Item` objects:

- an **ItemCollection** (``"type": "FeatureCollection"``): its features;
- a **Catalog** or **Collection**: the items reached through its ``item`` links and, depth
  first, the ``item`` links of the catalogs its ``child`` links name (no other link is ever
  followed: not ``parent``, ``root``, ``self``, ``alternate`` or anything else; a document
  already read is not read again, so a cycle of links ends);
- an **Item** (``"type": "Feature"``): that item.

Catalogs are data someone else wrote, so every read is bounded: each JSON document by the
metadata limit of :mod:`engine.jsonfile` (``TERRASEG_MAX_METADATA_BYTES``, 16 MiB by default),
the items by ``TERRASEG_STAC_MAX_ITEMS`` (default 10,000; more is an error, not a silent
cut), the documents read by ``TERRASEG_STAC_MAX_DOCUMENTS`` (default 10,000), the depth of
``child`` links by :data:`MAX_DEPTH`. Remote documents are read with the shard store's
timeouts, deadline and retries (:func:`_read_remote`). A document read from a URL may only
link to (and name assets at) URLs: never to local files. Relative links and asset hrefs
resolve against the document's own location, as STAC says.

Errors are :class:`StacError`: one line naming the document or item and the problem.
"""

from __future__ import annotations

import os
import posixpath
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from engine.errors import UserError
from engine.jsonfile import MetadataError, metadata_limit, parse_json, read_json
from engine.settings import env_number

DEFAULT_MAX_ITEMS = 10_000
DEFAULT_MAX_DOCUMENTS = 10_000
MAX_DEPTH = 16  # nested child catalogs followed at most
REMOTE_SCHEMES = ("http", "https", "s3")


class StacError(UserError):
    """A STAC catalog or item cannot be used; the message names it and the problem."""


def _limit(name: str, default: int) -> int:
    """A positive integer from the environment variable ``name`` (``default`` when unset)."""
    return int(env_number(name, default, error=StacError, integer=True, positive=True))


def max_items() -> int:
    """The most items a catalog may yield (``TERRASEG_STAC_MAX_ITEMS``, default 10,000)."""
    return _limit("TERRASEG_STAC_MAX_ITEMS", DEFAULT_MAX_ITEMS)


def is_remote(href: str) -> bool:
    """Whether ``href`` is an ``http(s)://`` or ``s3://`` URL."""
    return urlsplit(href).scheme.lower() in REMOTE_SCHEMES


def location(href: str) -> str:
    """``href`` as an absolute location: a URL as it is, a local path made absolute."""
    scheme = urlsplit(href).scheme.lower()
    if scheme in REMOTE_SCHEMES:
        return href
    if scheme == "file":
        return str(Path(urlsplit(href).path).resolve())
    if len(scheme) > 1:  # one letter: a Windows drive
        raise StacError(f"{href}: unsupported scheme {scheme}:// (local, http(s)://, s3://)")
    return str(Path(href).resolve())


def resolve_href(href: Any, base: str) -> str:
    """``href`` (absolute, or relative to the document at ``base``) as an absolute location.

    Raises:
        StacError: for an unsupported scheme, or a local path named by a remote document.
    """
    if not isinstance(href, str) or not href:
        raise StacError(f"{base}: a link or asset without an href")
    scheme = urlsplit(href).scheme.lower()
    remote_base = is_remote(base)
    if scheme in REMOTE_SCHEMES:
        return href
    if remote_base:
        if scheme:
            raise StacError(f"{base}: links to {href!r}; a remote catalog may name only URLs")
        if urlsplit(base).scheme.lower() == "s3":
            parts = urlsplit(base)
            key = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), href))
            return f"s3://{parts.netloc}{key}"
        return urljoin(base, href)
    if scheme and scheme != "file":
        return location(href)  # raises for the scheme
    path = urlsplit(href).path if scheme == "file" else href
    return str((Path(base).parent / path).resolve())


def read_document(href: str) -> dict:
    """One STAC JSON document (local or remote), its size bounded before it is parsed.

    Raises:
        StacError: naming ``href`` when it cannot be read, is too large or is not an object.
    """
    try:
        if is_remote(href):
            data = parse_json(_read_remote(href, metadata_limit()), href)
        else:
            data = read_json(href)
    except MetadataError as error:
        raise StacError(str(error)) from error
    except OSError as error:
        raise StacError(f"{href}: cannot read ({error.strerror or error})") from error
    if not isinstance(data, dict):
        raise StacError(f"{href}: not a STAC object (a JSON {type(data).__name__})")
    return data


def shard_setting(name: str, default: float) -> float:
    """A number >= 0 from the shard store's environment variable ``name`` (``default``)."""
    return env_number(name, default, error=StacError)


def _fetch_once(url: str, limit: int) -> bytes:
    """One try at the first ``limit + 1`` bytes of ``url``.

    A body short of its Content-Length is an error (``http.client`` returns it without one).
    """
    timeout = shard_setting("TERRASEG_SHARD_TIMEOUT", 30.0) or None
    if urlsplit(url).scheme.lower() == "s3":
        import fsspec

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = {"connect_timeout": timeout, "read_timeout": timeout}
        fs = fsspec.filesystem("s3", endpoint_url=endpoint or None, config_kwargs=config)
        with fs.open(url, "rb") as handle:
            return handle.read(limit + 1)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s)
        data = response.read(limit + 1)
        length = response.headers.get("Content-Length", "")
    if length.isdigit() and len(data) < min(int(length), limit + 1):
        raise ConnectionError(f"short body: {len(data)} of {length} bytes")
    return data


def _read_remote(url: str, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``url``, retried as the shard store retries.

    A failed read (a dropped connection or short body, a timeout, HTTP 5xx or 429) is tried
    again ``TERRASEG_SHARD_RETRIES`` times (default 5), ``TERRASEG_SHARD_BACKOFF`` x 2^n
    seconds apart (default 1, at most 30); "not found", "forbidden" and other HTTP 4xx fail
    at once. Tries stop once ``TERRASEG_SHARD_DEADLINE`` seconds (default 120) have passed.
    """
    retries = int(shard_setting("TERRASEG_SHARD_RETRIES", 5))
    backoff = shard_setting("TERRASEG_SHARD_BACKOFF", 1.0)
    deadline = time.monotonic() + shard_setting("TERRASEG_SHARD_DEADLINE", 120.0)
    for attempt in range(retries + 1):
        try:
            return _fetch_once(url, limit)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise StacError(f"{url}: not found (HTTP 404)") from error
            if error.code != 429 and error.code < 500:
                raise StacError(f"{url}: HTTP {error.code} {error.reason}") from error
            failure: Exception = error
        except FileNotFoundError as error:
            raise StacError(f"{url}: not found") from error
        except PermissionError as error:
            raise StacError(f"{url}: forbidden") from error
        except Exception as error:  # dropped connections, timeouts, botocore errors
            failure = error
        if attempt == retries or time.monotonic() >= deadline:
            detail = str(failure).splitlines()[0] if str(failure) else ""
            raise StacError(
                f"{url}: cannot read after {attempt + 1} tries ({type(failure).__name__}: {detail})"
            ) from failure
        time.sleep(min(30.0, backoff * 2**attempt, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")  # the loop returns or raises


class _Walk:
    """The state of one catalog walk: items found, documents read, their bounds."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.documents = 0
        self.seen: set[str] = set()  # documents read: a link back to one is not followed
        self.max_items = max_items()
        self.max_documents = _limit("TERRASEG_STAC_MAX_DOCUMENTS", DEFAULT_MAX_DOCUMENTS)

    def read(self, href: str) -> dict:
        self.documents += 1
        if self.documents > self.max_documents:
            raise StacError(
                f"{href}: more than {self.max_documents} catalog documents "
                "(TERRASEG_STAC_MAX_DOCUMENTS)"
            )
        return read_document(href)

    def add(self, data: dict, href: str) -> None:
        if len(self.items) >= self.max_items:
            raise StacError(
                f"{href}: more than {self.max_items} items (TERRASEG_STAC_MAX_ITEMS; "
                "narrow the catalog or raise the limit)"
            )
        self.items.append(item_from_dict(data, href))


def item_from_dict(data: dict, href: str) -> Any:
    """A :class:`pystac.Item` of ``data`` read at ``href``, asset hrefs made absolute.

    Raises:
        StacError: naming the item (or ``href``) when it is not a valid item.
    """
    try:
        import pystac
    except ImportError:
        raise StacError("reading STAC items needs pystac: pip install 'terraseg[stac]'") from None
    name = data.get("id") if isinstance(data.get("id"), str) else href
    if data.get("type") != "Feature":
        raise StacError(f"{href}: item {name!r} is not a STAC Item (type {data.get('type')!r})")
    assets = data.get("assets")
    if not isinstance(assets, dict) or not all(isinstance(a, dict) for a in assets.values()):
        raise StacError(f"item {name!r} ({href}): 'assets' is not an object of assets")
    data = {**data, "links": [], "assets": {
        key: {**asset, "href": resolve_href(asset.get("href"), href)}
        for key, asset in assets.items()
    }}  # fmt: skip
    try:
        item = pystac.Item.from_dict(data, preserve_dict=False, migrate=False)
    except Exception as error:
        raise StacError(f"item {name!r} ({href}): not a valid STAC Item ({error})") from error
    item.set_self_href(href if is_remote(href) else location(href))
    return item


def _walk(data: dict, href: str, walk: _Walk, depth: int) -> None:
    """Collect the items of the STAC object ``data`` read at ``href`` (module notes)."""
    kind = data.get("type")
    if kind == "Feature":
        walk.add(data, href)
        return
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise StacError(f"{href}: ItemCollection without a 'features' list")
        for feature in features:
            if not isinstance(feature, dict):
                raise StacError(f"{href}: a feature that is not an object")
            walk.add(feature, href)
        return
    if kind not in ("Catalog", "Collection"):
        raise StacError(
            f"{href}: type {kind!r} is not a STAC Item, ItemCollection, Catalog or Collection"
        )
    if depth > MAX_DEPTH:
        raise StacError(f"{href}: child catalogs nested more than {MAX_DEPTH} deep")
    links = data.get("links") or []
    if not isinstance(links, list):
        raise StacError(f"{href}: 'links' is not a list")
    for rel in ("item", "child"):
        for link in links:
            if isinstance(link, dict) and link.get("rel") == rel:
                target = resolve_href(link.get("href"), href)
                if target not in walk.seen:
                    walk.seen.add(target)
                    _walk(walk.read(target), target, walk, depth + 1)


def load_items(source: str | Path) -> list[Any]:
    """The STAC items of ``source`` (module notes), in catalog order.

    Args:
        source: A local path or ``file://``, ``http(s)://`` or ``s3://`` URL of an
            ItemCollection, Catalog, Collection or Item.

    Returns:
        :class:`pystac.Item` objects with absolute asset hrefs and their own location as
        self href; item ids are unique.

    Raises:
        StacError: naming the document or item (unreadable, too large, too many items or
            documents, not STAC, duplicate item ids, no items).
    """
    href = location(str(source))
    walk = _Walk()
    walk.seen.add(href)
    _walk(walk.read(href), href, walk, 0)
    if not walk.items:
        raise StacError(f"{source}: no STAC items")
    seen: dict[str, str] = {}
    for item in walk.items:
        where = item.get_self_href()
        if item.id in seen:
            raise StacError(f"item {item.id!r}: twice in {source} ({seen[item.id]} and {where})")
        seen[item.id] = where
    return walk.items
