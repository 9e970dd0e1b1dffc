#!/usr/bin/env bash
# The main job end to end on generated scenes: `terraseg demo` (engine/commands/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m engine.commands demo --out "${DEMO_DIR:-demo}"
