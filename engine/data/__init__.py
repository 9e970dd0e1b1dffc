"""The data stage: from source files to the uint8 batches the device receives.

It owns reading images, masks and rasters (:mod:`.imageio`, :mod:`.raster_base`,
:mod:`.rasters`), the classes file (:mod:`.classes`) and mask
inspection (:mod:`.mask_inspect`), pairing images with masks (:mod:`.pairing`), splitting by
group or by blocks of tiles (:mod:`.splits`), the shard builder (:mod:`.shard_builder`, with
its output folder, lock and clean-up in :mod:`.build_output` and its warnings in
:mod:`.build_warnings`, its worker processes in :mod:`.processes`), the shard format's
manifest (:mod:`.manifest`), where shards live (local folders or URLs: :mod:`.shard_store`),
the loader that streams shards to each rank (:mod:`.loader`; local ``npy`` shards read
straight into batch memory by :mod:`.direct_read`; every sample checked by
:mod:`.sample_checks`), the input normalisation contract (:mod:`.normalize`) and the
synthetic scenes used as default data (:mod:`.synthetic`). It imports nothing from the other
stages.
"""
