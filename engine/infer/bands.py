"""Which bands of a raster a model reads: the export's band record against the file's bands.

An export's ``dataset.json`` carries the model's bands (a version 3 ``bands`` list: names in
channel order, pixel type and statistics; an older export means three uint8 bands ``red``,
``green``, ``blue``). :func:`open_model_raster` opens an input so that its reader delivers
exactly those bands, in that order:

1. ``--bands`` (numbers or names), when given, is used as it is (it must select as many
   bands as the model takes);
2. else by name, when the file has every band the model needs (its band descriptions, or
   ``red/green/blue`` of an RGB file);
3. else by position, when the file has no band descriptions and as many bands as the model;
4. else a one-line error naming the file, the missing bands and the bands the file has.

The pixel type must be the model's (values are never rescaled; uint16 and int16 count as
the same units), else a one-line error.

Band files (``--band-files red,green,blue,nir``, as the shard builder takes them): one
single-band file per band, read through the builder's reader
(:class:`engine.data.sources.rasters.BandFilesReader`). The input is the first band's file;
each other band's file is its name with the first band's name replaced (``red_x.tif`` →
``green_x.tif``). The band names are the ``--band-files`` names, matched against the model's
by the rules above. :func:`first_band_files` keeps, of the inputs, the first band's files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.data.shards.normalize import Normalization
from engine.data.sources.raster_base import RasterReader, default_band_names
from engine.data.sources.rasters import open_raster
from engine.errors import UserError

#: Pixel types that hold the same units (Sentinel-2 reflectance comes as either).
SAME_UNITS = {"uint16", "int16"}


class BandMismatchError(UserError):
    """A raster does not have the bands (or pixel type) the model was trained on."""


def model_normalization(
    manifest: Mapping[str, Any], in_channels: int, where: str | Path
) -> Normalization:
    """The model's bands and normalisation from its export's ``dataset.json``.

    Raises:
        BandMismatchError: naming ``where`` when the record is unusable or its band count is
            not the model's ``in_channels``.
    """
    try:
        normalization = Normalization.from_manifest(manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise BandMismatchError(f"{where}: no usable band statistics ({error!r})") from error
    if normalization.in_channels != int(in_channels):
        raise BandMismatchError(
            f"{where}: {normalization.in_channels} bands ({', '.join(normalization.names)}) "
            f"but the model takes in_channels={in_channels}"
        )
    return normalization


def _described(names: Sequence[str], dtype: Any) -> bool:
    """Whether band names come from the file (not terraseg's defaults)."""
    defaults = (default_band_names(len(names), dtype, rgb=False), ["red", "green", "blue"])
    return list(names) not in defaults


def band_selection(
    path: str | Path, names: Sequence[str], dtype: Any, normalization: Normalization
) -> list[str] | None:
    """The ``bands`` to open a file with (``None``: as it is), from its band names.

    Raises:
        BandMismatchError: naming the file, the missing bands and what the file has.
    """
    wanted = normalization.names
    lower = [name.lower() for name in names]
    if list(names) == wanted:
        return None
    if all(name.lower() in lower for name in wanted):
        return list(wanted)
    described = _described(names, dtype)
    if not described and len(names) == len(wanted):
        return None  # no descriptions: by position
    missing = [name for name in wanted if name.lower() not in lower]
    has = f"{len(names)} band(s): {', '.join(names)}"
    if not described:
        has = f"{len(names)} band(s) without descriptions"
    raise BandMismatchError(
        f"{path}: lacks band(s) {', '.join(missing)} of the model "
        f"({normalization.in_channels}: {', '.join(wanted)}); the file has {has}; "
        "choose them with --bands"
    )


def check_pixel_type(reader: RasterReader, normalization: Normalization) -> None:
    """Refuse a raster whose pixel type is not the model's (see the module notes)."""
    raster = reader.dtype.name
    model = sorted({band.dtype for band in normalization.bands})
    if raster in model or {raster, *model} <= SAME_UNITS:
        return
    raise BandMismatchError(
        f"{reader.path or '<array>'}: {raster} pixels, but the model was trained on "
        f"{'/'.join(model)} bands; values are never rescaled, so convert the raster "
        "(or train on this pixel type)"
    )


def first_band_files(paths: Sequence[Path], names: Sequence[str]) -> list[Path]:
    """The inputs that are a first band's file (``names[0]`` in the name), others dropped.

    A file that is another band's file of a kept input (``green_x.tif`` of ``red_x.tif``)
    is dropped even when its name also holds ``names[0]``.

    Raises:
        BandMismatchError: when no input is a first band's file.
    """
    first = str(names[0])
    candidates = [path for path in paths if first in path.name]
    companions = {
        path.with_name(path.name.replace(first, str(name), 1)).resolve()
        for path in candidates
        for name in names[1:]
    }
    kept = [path for path in candidates if path.resolve() not in companions]
    if not kept:
        shown = ", ".join(str(path) for path in list(paths)[:3])
        raise BandMismatchError(
            f"--band-files {','.join(map(str, names))}: no input has the first band's name "
            f"{first!r} in its file name ({shown}); give the first band's files"
        )
    return kept


def _split_bands(bands: Sequence[int | str]) -> list[int | str]:
    """``--bands`` items, comma-separated strings split."""
    return [
        part.strip() if isinstance(part, str) else part
        for item in bands
        for part in (item.split(",") if isinstance(item, str) else [item])
        if not isinstance(part, str) or part.strip()
    ]


def open_model_raster(
    path: str | Path,
    normalization: Normalization,
    *,
    bands: Sequence[int | str] | None = None,
    nodata: float | None = None,
    band_files: Sequence[str] | None = None,
) -> RasterReader:
    """Open ``path`` delivering the model's bands (see the module notes).

    Args:
        path: The input raster.
        normalization: The model's bands (:func:`model_normalization`).
        bands: ``--bands``: 1-based numbers or names overriding the selection (strings may
            hold several, comma-separated).
        nodata: Nodata value overriding the file's.
        band_files: ``--band-files``: band names, one single-band file per band, ``path``
            the first band's file (see the module notes).

    Returns:
        The reader (a context manager).

    Raises:
        BandMismatchError: naming the file, when it lacks the model's bands, has another
            pixel type, or ``bands`` selects another number of bands.
        RasterError: naming the file when a band file is missing or unlike the first.
    """
    files = list(band_files) if band_files else None
    if bands:
        bands = _split_bands(bands)
        if len(bands) != normalization.in_channels:
            raise BandMismatchError(
                f"{path}: --bands selects {len(bands)} band(s); the model takes "
                f"{normalization.in_channels} ({', '.join(normalization.names)})"
            )
        reader = open_raster(path, bands=list(bands), nodata=nodata, band_files=files)
    else:
        reader = open_raster(path, nodata=nodata, band_files=files)
        try:
            selection = band_selection(path, reader.band_names, reader.dtype, normalization)
        except BaseException:
            reader.close()
            raise
        if selection is not None:
            reader.close()
            reader = open_raster(
                path, bands=list[int | str](selection), nodata=nodata, band_files=files
            )
    try:
        check_pixel_type(reader, normalization)
    except BaseException:
        reader.close()
        raise
    return reader
