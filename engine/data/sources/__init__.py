"""Reading sources: rasters, masks, polygons, classes, pairs and bands, as files hold them.

Everything that opens a user's file before it becomes a shard: windowed raster readers at
native precision (:mod:`.raster_base`, :mod:`.rasters`), the one table of raster formats
(:mod:`.formats`), images and masks (:mod:`.imageio`; picture files decoded by
:mod:`.pictures`), vector labels (:mod:`.vector_labels`), the classes
file (:mod:`.classes`), mask inspection (:mod:`.mask_inspect`), image/label pairing
(:mod:`.pairing`), band selection by number or name (:mod:`.band_select`), STAC items
(:mod:`.stac`: catalogs; :mod:`.stac_assets`, :mod:`.stac_grid`, :mod:`.stac_reader`: their
assets on one grid) and the data folders of tests and benchmarks (:mod:`.paths`).
"""
