"""Which files a prediction writes, decided before any input is decoded.

``predict.py`` checks with these that no output would overwrite an input before it starts,
and after a failure removes the temporary files (:func:`temporary_paths`) a raster's run
created.
"""

from __future__ import annotations

from pathlib import Path

from engine.data.sources.formats import reader_of
from engine.infer.writer import OUTPUT_KINDS, format_for


def output_paths(
    out_dir: str | Path,
    stem: str,
    fmt: str,
    *,
    color: bool = True,
    confidence: bool = False,
    probabilities: bool = False,
    overlay: bool = False,
) -> list[Path]:
    """The files a :class:`~engine.infer.writer.PredictionWriter` with these settings writes.

    Args:
        out_dir: Output folder.
        stem: Output stem.
        fmt: ``"png"``, ``"tif"`` or ``"cog"`` (resolved, not ``"auto"``).
        color: Whether the colour rendering is written.
        confidence: Whether the confidence map is written.
        probabilities: Whether the probabilities are written.
        overlay: Whether the overlay is written.

    Returns:
        The output paths, in :data:`~engine.infer.writer.OUTPUT_KINDS` order.
    """
    chosen = {"mask": True, "color": color, "confidence": confidence}
    chosen |= {"probabilities": probabilities, "overlay": overlay}
    ext = "png" if fmt == "png" else "tif"
    return [Path(out_dir) / f"{stem}_{kind}.{ext}" for kind in OUTPUT_KINDS if chosen[kind]]


def planned_format(path: str | Path, fmt: str = "auto") -> tuple[str, ...]:
    """The output format(s) :func:`~engine.infer.writer.prediction_writer` will choose.

    ``fmt="auto"``: PNG for PNG/JPEG/WebP/BMP inputs up to
    :data:`~engine.infer.writer.PNG_MAX_PIXELS` (read from the header), GeoTIFF for every
    other input; both when the header cannot be read.

    Args:
        path: The input raster.
        fmt: ``"auto"``, ``"png"``, ``"tif"`` or ``"cog"``.

    Returns:
        One format, or ``("png", "tif")`` when it cannot be told.
    """
    if fmt != "auto":
        return (fmt,)
    path = Path(path)
    if reader_of(path) != "pil":
        return ("tif",)
    try:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - unreadable here: open_raster names the problem later
        return ("png", "tif")
    return (format_for(path, height, width),)


def temporary_paths(outputs: list[Path], stem: str) -> list[Path]:
    """Every temporary file a writer of ``outputs`` (of input ``stem``) may create.

    The sinks' ``<output>.partial`` and ``<output>.cog.partial``, the staging files
    ``<output>.bands`` and ``<stem>_valid.bands`` (see :mod:`engine.infer.sinks` and
    :mod:`engine.infer.writer`).
    """
    names = [".partial", ".cog.partial", ".bands"]
    paths = [output.with_name(output.name + suffix) for output in outputs for suffix in names]
    if outputs:
        paths.append(outputs[0].with_name(f"{stem}_valid.bands"))
    return paths
