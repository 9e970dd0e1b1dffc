"""The data stage: from source files to the native N-band batches the device receives.

It owns reading rasters at native precision with their nodata (:mod:`.raster_base`,
:mod:`.rasters`: rasterio for every GDAL format, PIL for JPEG/PNG), images and masks
(:mod:`.imageio`), labels drawn as polygons (:mod:`.vector_labels`), the classes file
(:mod:`.classes`) and mask inspection (:mod:`.mask_inspect`), pairing images with labels
(:mod:`.pairing`), splitting by group or by blocks of tiles (:mod:`.splits`), the shard
builder (:mod:`.shard_builder`: what it reads of each pair in :mod:`.build_sources`, the
labels on the image's grid in :mod:`.label_grid`, its
per-band statistics in :mod:`.band_stats`, its output folder, lock and clean-up in
:mod:`.build_output`, its warnings in :mod:`.build_warnings`, its worker processes in
:mod:`.processes`, uploads to object stores in :mod:`.shard_upload`), the shard format's
manifest (:mod:`.manifest`; shards checked against its digests by :mod:`.shard_verify`),
where shards live (local folders or URLs: :mod:`.shard_store`),
the loader that streams shards to each rank (:mod:`.loader`; local ``npy`` shards read
straight into batch memory by :mod:`.direct_read`; ``npy`` headers read with bounds by
:mod:`.npy_member`; every sample checked by :mod:`.sample_checks`), the per-band input
normalisation contract (:mod:`.normalize`), the data paths of tests and benchmarks
(:mod:`.paths`) and the synthetic scenes used as default data (:mod:`.synthetic`). It
imports nothing from the other stages.
"""
