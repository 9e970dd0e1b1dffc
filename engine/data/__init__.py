"""The data stage: from source files to the native N-band batches the device receives.

Four sub-packages, named after what happens to the data, each a place to make a change:

- :mod:`engine.data.sources`: **reading sources**. Rasters at native precision with their
  nodata (``raster_base``, ``rasters``: rasterio for every GDAL format, PIL for JPEG/PNG,
  the suffix table in ``formats``), images and masks (``imageio``, ``pictures``),
  polygons rasterised (``vector_labels``), the classes file
  (``classes``) and mask inspection (``mask_inspect``), pairing images with labels
  (``pairing``), choosing bands (``band_select``), data folders of tests (``paths``).
- :mod:`engine.data.build`: **building shards**. The builder (``builder``), what it reads
  of each pair (``sources``, the labels on the image's grid: ``label_grid``), where tiles
  are cut (``tiling``), the split (``splits``),
  per-band statistics (``statistics``), advice printed once (``advice``), the output
  folder, lock, digests and clean-up (``output``), uploads to object stores (``upload``).
- :mod:`engine.data.processes`: the worker pool that mask inspection and the builder share.
- :mod:`engine.data.shards`: **reading shards**. The manifest (``manifest``) and the
  input normalisation it defines (``normalize``), where shards live and how remote bytes
  arrive (``store``, ``remote_stream``, ``remote_errors``), the loader for every rank
  (``loader``; local ``npy`` shards read straight into batch memory by ``direct_read``,
  headers parsed with bounds by ``npy_member``, every sample checked by ``checks``), and
  shards checked against their digests (``verify``).
- :mod:`engine.data.synthetic`: generated scenes, the default data of the demo and tests.

Imports inside the stage point one way: ``processes`` ← ``sources`` ← ``shards`` ←
``build`` (the builder writes what the shard readers read), ``synthetic`` uses ``sources``;
``tests/test_layout.py`` checks it. Nothing here imports the other stages.
"""
