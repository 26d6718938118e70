#!/usr/bin/env bash
# Set up (first time only) and run ldct-node. Examples:
#   scripts/run.sh demo                          # a synthetic series end to end
#   scripts/run.sh serve --config my-node.toml   # the node itself
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ldct-node "${@:-demo}"
