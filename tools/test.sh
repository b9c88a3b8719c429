#!/usr/bin/env bash
# The README's test command: set up (idempotent) with the test-only Debian packages (chromium,
# nodejs, ffmpeg), then run the default test suite.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` or `bash tools/test.sh tests/test_config.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --test-deps
VENV=${ASR_VENV:-$(pwd)/.venv}
exec "$VENV/bin/python" -m pytest "$@"
