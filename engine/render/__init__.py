"""Rendering: colours of masks, figures of predictions and metrics, plots of a run.

:mod:`.colors` (palettes, colourised masks, overlays, error maps), :mod:`.figures` (panels,
legends, confusion heatmaps) and :mod:`.history_plots` (a run's curves). Headless and
deterministic; imports nothing from the other stages.
"""
