"""The inference stage: sliding-window prediction over rasters of any size, and its outputs.

:mod:`.bands` opens an input with the bands the model was trained on, :mod:`.windows` lays
the windows out, :mod:`.sliding` runs the model over them in bounded memory (native band
values normalised on the device), :mod:`.writer` and :mod:`.sinks` write the outputs (PNG,
GeoTIFF or COG through rasterio, nodata where the input is nodata; :mod:`.outputs` names
them beforehand), in class indices or, with :mod:`.values`, in the dataset's own label
values; :mod:`.polygons` vectorises a written mask. The overlay's true-colour view is
:func:`engine.render.colors.display_rgb`. It loads models exported by training.
:mod:`.run` is ``predict.py`` as a library (inputs, model, the run's cleanup on errors and
signals); :mod:`.limits` checks the pixel limit and the free disk before anything is written.
"""
