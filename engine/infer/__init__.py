"""The inference stage: sliding-window prediction over rasters of any size, and its outputs.

:mod:`.bands` opens an input with the bands the model was trained on, :mod:`.windows` lays
the windows out, :mod:`.sliding` runs the model over them in bounded memory
(:class:`~.sliding.SlidingOptions`; the pass itself is :mod:`.strips`: native band values
normalised on the device), :mod:`.writer` and :mod:`.sinks` write the outputs (PNG, GeoTIFF
or COG through rasterio, nodata where the input is nodata; :mod:`.outputs` names them
beforehand, :class:`~.outputs.OutputSpec`), in class indices or, with :mod:`.values`, in the
dataset's own label values; :mod:`.polygons` vectorises a written mask. The overlay's
true-colour view is :func:`engine.render.colors.display_rgb`. :mod:`.model` loads the models
exported by training, and ONNX files through :mod:`.onnx_model` (onnxruntime, the same
windows: the pass hands it native bands, a :class:`~.strips.ProbabilityModel`). :mod:`.run`
is prediction as a library (:func:`~.run.predict_file`, and :func:`~.run.predict_files`
behind ``terraseg predict``), :mod:`.session` its inputs and cleanup on errors and signals;
:mod:`.limits` checks the pixel limit and the free disk before anything is written.
"""
