"""The data stage: from source files to the uint8 batches the device receives.

It owns reading images, masks and rasters (:mod:`.imageio`, :mod:`.raster_base`,
:mod:`.rasters`, :mod:`.tiff_reader`), the classes file (:mod:`.classes`) and mask
inspection (:mod:`.mask_inspect`), pairing images with masks (:mod:`.pairing`), the shard
format's manifest (:mod:`.manifest`), the shard builder (:mod:`.shard_builder`), the loader
that streams shards to each rank (:mod:`.loader`), the input normalisation contract
(:mod:`.normalize`) and the synthetic scenes used as default data (:mod:`.synthetic`). It
imports nothing from the other stages.
"""
