"""Rendering: pictures of images, colours of masks, figures of predictions and metrics, plots.

:mod:`.colors` (palettes, colourised masks, overlays, error maps, and
:func:`~engine.render.colors.display_rgb`: the one way a native N-band image becomes a
picture), :mod:`.figures` (panels, legends, confusion heatmaps) and :mod:`.history_plots`
(a run's curves). Headless and deterministic; imports only :mod:`engine.data`.
"""
