#!/usr/bin/env bash
# The README's test command: set up (idempotent) with the test-only Debian packages (chromium,
# nodejs, ffmpeg), then run the default test suite on every core: pytest-xdist workers
# (ASR_TEST_WORKERS, default auto: one per core; 0 runs the tests serially in this process, as
# does `-p no:xdist`), handed tests one at a time as they free up (--dist worksteal).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` or `bash tools/test.sh tests/test_config.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh --test-deps
VENV=${ASR_VENV:-$(pwd)/.venv}
workers=(-n "${ASR_TEST_WORKERS:-auto}" --dist worksteal)
for arg in "$@"; do
  # pytest refuses -n once the plugin is off: the caller asked for a serial run
  [ "$arg" = "no:xdist" ] || [ "$arg" = "-pno:xdist" ] && workers=()
done
exec "$VENV/bin/python" -m pytest "${workers[@]}" "$@"
