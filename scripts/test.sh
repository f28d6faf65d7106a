#!/usr/bin/env bash
# Runs every check CI runs: ruff, mypy --strict on the package, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
