"""The STAC options ``terraseg build`` and ``terraseg predict`` share, and their items.

``--stac ITEMS`` (an ItemCollection, Catalog, Collection or Item: file or URL) or
``--stac-api URL`` with ``--collections``, ``--bbox``, ``--datetime``, ``--query`` and
``--max-items`` (a STAC API item search); ``--assets`` and ``--resolution`` choose what is
read of each item and on which grid (docs/stac.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.errors import UserError


def add_stac_arguments(parser: argparse.ArgumentParser, assets_help: str) -> None:
    """The ``STAC items`` group of options."""
    group = parser.add_argument_group("STAC items (instead of image files; docs/stac.md)")
    group.add_argument(
        "--stac",
        metavar="ITEMS",
        help="a STAC ItemCollection, Catalog/Collection (its item and child links are\n"
        "followed) or Item: a file or an http(s):// / s3:// URL",
    )
    group.add_argument("--stac-api", metavar="URL", help="search a STAC API for the items")
    group.add_argument("--collections", help="with --stac-api: collection ids, comma-separated")
    group.add_argument("--bbox", help="with --stac-api: W,S,E,N in degrees")
    group.add_argument(
        "--datetime", help="with --stac-api: an RFC 3339 instant or interval (a/b, .. open)"
    )
    group.add_argument(
        "--query",
        action="append",
        help="with --stac-api: a query-extension constraint such as 'eo:cloud_cover<10'\n"
        "(repeat for more)",
    )
    group.add_argument(
        "--max-items", type=int, default=1000, help="with --stac-api: the most items to use"
    )
    group.add_argument("--assets", help=assets_help)
    group.add_argument(
        "--resolution",
        type=float,
        help="pixel size of the grid the assets are read onto, in the CRS's units\n"
        "(default: the finest selected asset's)",
    )


def uses_stac(args: argparse.Namespace) -> bool:
    """Whether the command line takes its images from STAC items."""
    return bool(args.stac or args.stac_api)


def check_stac_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``) STAC options that do not fit together."""
    searching = [
        name for name in ("collections", "bbox", "datetime", "query") if getattr(args, name)
    ]
    if args.stac and args.stac_api:
        parser.error("give --stac or --stac-api, not both")
    if searching and not args.stac_api:
        parser.error(f"--{searching[0]} goes with --stac-api")
    if args.resolution is not None and not args.resolution > 0:
        parser.error(f"--resolution {args.resolution}: must be a positive size in CRS units")
    if not uses_stac(args) and (args.assets or args.resolution):
        parser.error("--assets and --resolution go with --stac or --stac-api")


def asset_list(text: str | None) -> list[str] | None:
    """``--assets red,green,B08`` → ``["red", "green", "B08"]`` (``None`` when not given)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UserError(f"--assets {text!r}: name at least one asset or band")
    return names


def stac_items(args: argparse.Namespace) -> tuple[list[Any], str]:
    """The items the command line names, and where they came from (for the record).

    Raises:
        UserError: naming the catalog, API or item that cannot be used.
    """
    from engine.data.sources.stac import item_from_dict, load_items

    if args.stac:
        return load_items(args.stac), str(args.stac)
    from engine.data.sources.stac_search import (
        parse_bbox,
        parse_collections,
        parse_query,
        search_items,
    )

    found = search_items(
        args.stac_api,
        collections=parse_collections(args.collections) if args.collections else None,
        bbox=parse_bbox(args.bbox) if args.bbox else None,
        datetime=args.datetime,
        query=parse_query(args.query) if args.query else None,
        max_items=args.max_items,
    )
    items = [
        item_from_dict(
            item.to_dict(include_self_link=False, transform_hrefs=False),
            item.get_self_href() or args.stac_api,
        )
        for item in found
    ]
    return items, str(args.stac_api)
