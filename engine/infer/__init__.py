"""The inference stage: sliding-window prediction over rasters of any size, and its outputs.

:mod:`.windows` lays the windows out, :mod:`.sliding` runs the model over them in bounded
memory, :mod:`.writer` and :mod:`.sinks` write the outputs, in class indices or, with
:mod:`.values`, in the dataset's own label values. It loads models exported by training.
"""
