"""Prediction on STAC items: one COG per item, and a STAC catalog of the predictions.

:func:`predict_items` reads each item's assets on one grid
(:func:`engine.data.sources.stac_reader.item_raster`: a VRT per item in a temporary folder,
read by windows, remote COGs through ``/vsicurl/`` or ``/vsis3/`` with the shard store's
retries and deadlines) and predicts it like any raster (:func:`engine.infer.run.predict_files`:
``<item id>_mask.tif`` and the other outputs; ``--format auto`` means ``cog`` here). The
assets are ``assets`` (keys or band names) or, by default, the model's band names, matched
to each item's asset keys and ``eo:bands`` names. Then each mask becomes a STAC Item linked
to its source item (:func:`engine.infer.stac_items.prediction_item`), and the items a
catalog in the output folder (:func:`engine.infer.stac_items.write_catalog`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.data.sources.stac_grid import remote_reads
from engine.data.sources.stac_reader import ItemRaster, file_stem, item_rasters
from engine.infer.model import LoadedModel, load_model
from engine.infer.run import PredictOptions, PredictResult, predict_files


def predict_items(
    model: str | Path | LoadedModel,
    items: list[Any],
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    assets: list[str] | None = None,
    resolution: float | None = None,
    log: Callable[[str], Any] = print,
) -> tuple[list[PredictResult], Path]:
    """Predict every item into ``out`` and write the catalog of the predictions.

    Args:
        model: A run or export folder, ``model.safetensors``, or a loaded model.
        items: :class:`pystac.Item` objects (:func:`engine.data.sources.stac.load_items`).
        out: The output folder.
        options: The prediction settings (``format="auto"`` writes COGs).
        assets: Asset keys or band names to read (default: the model's band names).
        resolution: Pixel size of the grid in CRS units (default: the finest asset's).
        log: Gets a header line, one line per item, and the catalog's path.

    Returns:
        The results per item (in item order; ``source`` is the item's temporary VRT, gone
        once this returns) and the catalog file.

    Raises:
        UserError: naming the item, model or setting that cannot be used (before anything
            is written for bad items: every item's assets are checked first).
    """
    options = options or PredictOptions()
    if options.format == "auto":
        options = replace(options, format="cog")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options.device)
    wanted = list(assets) if assets else list(loaded.normalization.names)
    with tempfile.TemporaryDirectory(prefix="terraseg-stac-") as folder, remote_reads():
        rasters = item_rasters(items, wanted, folder, resolution=resolution)
        prefix = f"{Path(folder)}/"  # lines name the item's file, not the temporary folder

        def say(line: str) -> Any:
            return log(line.replace(prefix, ""))

        results = predict_files(loaded, [str(r.image) for r in rasters], out, options, say)
    catalog = _write_catalog(loaded, rasters, results, Path(out), options)
    log(f"STAC catalog of {len(results)} prediction(s): {catalog}")
    return results, catalog


def _class_table(model: LoadedModel, values: Any) -> list[tuple[int, str, tuple[int, int, int]]]:
    """``(mask value, name, (r, g, b))`` per class: the class index, or its original value."""
    from engine.render.colors import hex_to_rgb

    table = []
    for index, (name, colour) in enumerate(zip(model.names, model.palette, strict=True)):
        value = index if values is None or values.ndim != 1 else int(values[index])
        red, green, blue = (int(v) for v in hex_to_rgb(colour)[:3])
        table.append((value, name, (red, green, blue)))
    return table


def _write_catalog(
    model: LoadedModel,
    rasters: list[ItemRaster],
    results: list[PredictResult],
    out: Path,
    options: PredictOptions,
) -> Path:
    """The prediction items (one per mask, linked to its source item) as a catalog."""
    from engine.infer.stac_items import prediction_item, write_catalog

    classes = _class_table(model, model.mask_values(options.values))
    name = Path(model.exported.path).name if model.exported.path else None
    predictions = [
        prediction_item(
            raster.item,
            result.paths["mask"],
            item_id=file_stem(raster.item.id),
            classes=classes,
            model_name=name,
        )
        for raster, result in zip(rasters, results, strict=True)
    ]
    about = f"terraseg predictions of model {name or '(in memory)'} on {len(predictions)} items"
    return Path(
        write_catalog(predictions, out, catalog_id="terraseg-predictions", description=about)
    )
