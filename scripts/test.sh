#!/usr/bin/env bash
# Set up (first time only) and run the whole test suite: unit tests and integration tests
# against real peers (dcmtk, Orthanc, dciodvfy, PostgreSQL) that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -q -ra "$@"
