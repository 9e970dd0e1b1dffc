"""``python -m engine.commands SUBCOMMAND …``: the ``terraseg`` command without its script.

``accelerate launch -m engine.commands train --config unet --out runs/unet`` starts the
training subcommand on every process.
"""

import sys

from engine.commands.main import main

sys.exit(main())
