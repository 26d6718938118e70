#!/usr/bin/env bash
# Lint, format check and type check, as CI runs them before the tests (the tools are pinned in
# pyproject.toml's test extras). To fix what can be fixed mechanically:
#   .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
