"""Synthetic land-cover scenes: the embedded default data, so nothing needs a download.

:mod:`.scenes` makes scenes and writes datasets; :mod:`.layout` decides what is where,
:mod:`.paint` colours it, from the noise and geometry of :mod:`.primitives` and the classes
and materials of :mod:`.classes`.
"""
