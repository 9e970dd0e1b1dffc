"""terraseg's library, one package per stage a sample passes through (the api stage is a module).

``data`` → ``render`` → ``evaluate`` → ``train`` → ``export`` → ``infer`` → ``api`` →
``commands``: a stage imports only from stages before it in this order (and from
:mod:`archs` and the shared leaf modules: :mod:`engine.errors`, the ``UserError`` base every
stage raises, :mod:`engine.jsonfile`, :mod:`engine.settings`, :mod:`engine.cli` and
:mod:`engine.configs`), never
from ``launch/``.

- :mod:`engine.data`: source images and masks, classes, shards, the loader.
- :mod:`engine.render`: colours, figures and plots of masks and runs.
- :mod:`engine.evaluate`: metrics, evaluation of shards and folders, reports.
- :mod:`engine.train`: config, device augmentation, losses, the loop, checkpoints, export.
- :mod:`engine.export`: self-contained ONNX files (QGIS Deepness, onnxruntime).
- :mod:`engine.infer`: sliding-window prediction over rasters and its writers.
- :mod:`engine.api`: the four jobs from Python (build, train, evaluate, predict).
- :mod:`engine.commands`: the ``terraseg`` command and its subcommands.
"""

#: The one place the version is written (pyproject.toml reads it; ``terraseg --version``).
__version__ = "0.2.0"

#: The stages in import order: each may import only the ones before it.
STAGES = ("data", "render", "evaluate", "train", "export", "infer", "api", "commands")
