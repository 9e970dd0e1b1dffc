"""Train under a distributed launcher, then record this rank's step count and weight hash.

Usage: python train_fingerprint.py CONFIG RUN_DIR [key=value ...]
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from engine.train.config import load_config
from engine.train.loop import train

config = load_config(sys.argv[1], sys.argv[3:])
result = train(config, sys.argv[2])
digest = hashlib.sha256()
for name, tensor in sorted(result.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
rank = int(os.environ.get("RANK", "0"))
record = {
    "rank": rank,
    "world": int(os.environ.get("WORLD_SIZE", "1")),
    "steps": result.metrics["steps"],
    "sha256": digest.hexdigest(),
}
Path(sys.argv[2], f"fingerprint-{rank}.json").write_text(json.dumps(record))
