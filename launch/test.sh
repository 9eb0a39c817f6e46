#!/usr/bin/env bash
# Run the test suite (sets up .venv the first time). Extra arguments go to pytest,
# e.g. `launch/test.sh -m "not slow"` for the quick run, `launch/test.sh tests/data`.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/_env.sh
exec python -m pytest "$@"
