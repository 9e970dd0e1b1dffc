"""Building shards: tiles cut, split, counted and written as webdataset tars with a manifest.

:mod:`.builder` drives a build (``build_shards``, its settings in :mod:`.options`); it reads
each pair through :mod:`.sources` (the mask checked or resampled onto its image's grid by
:mod:`.label_grid`), cuts tiles where :mod:`.tiling` says, assigns them with :mod:`.splits`,
sums per-band statistics in :mod:`.statistics`, prints advice once from :mod:`.advice`,
writes through :mod:`.output` (the folder, its lock, staging, digests while writing,
faults), runs workers from :mod:`engine.data.processes` and uploads to object stores
with :mod:`.upload`.
"""
