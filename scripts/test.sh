#!/usr/bin/env bash
# The project's checks, in order of speed: lint, types (gateway: mypy strict; agent: MicroPython stubs), tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy (gateway, simulator, agent CPython port: strict)"
.venv/bin/mypy
if [ -f scripts/check_agent_types.sh ]; then
  echo "== agent types against MicroPython stubs"
  bash scripts/check_agent_types.sh
fi
echo "== pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
