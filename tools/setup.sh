#!/usr/bin/env bash
# Idempotent set-up on a fresh machine that has only Python 3.11:
#   1. Debian packages when missing: corpus synthesis (espeak-ng, flite, sox, fortunes); with
#      --test-deps (tools/test.sh) also chromium + nodejs for the browser and AudioWorklet tests
#      and ffmpeg for the m4a test, which a training machine does not need,
#   2. a virtual environment (default .venv, or $ASR_VENV) reused when present,
#   3. `pip install -e .[dev]`, skipped when setup.cfg and pyproject.toml, the checkout and the
#      environment's Python (version and the interpreter it was made from) are those of the
#      last install.
#
#   bash tools/setup.sh [--test-deps]
set -euo pipefail
test_deps=false
for arg in "$@"; do
  case "$arg" in
    --test-deps) test_deps=true ;;
    *) echo "usage: $0 [--test-deps]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ASR_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { echo "[setup] $*" >&2; }

missing=()
for bin in espeak-ng flite sox; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
# English sentences for the synthetic corpus come from the 'fortunes' package's text files.
[ -f /usr/share/games/fortunes/education ] || missing+=(fortunes)
if [ "$test_deps" = true ]; then
  # Headless Chromium drives the microphone page test; Node.js runs the AudioWorklet resampler
  # test; ffmpeg makes the m4a of the audio-format test (and lets asr read such formats).
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" libsndfile1 >/dev/null
fi

# pip, without the one warning a machine-wide pip configuration can add for every package: an
# index or find-links location that does not exist on this machine ("... is ignored: it is
# neither a file nor a directory"); everything else pip says gets through.
pip_quiet() {
  "$VENV/bin/pip" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
  pip_quiet install -q --upgrade pip setuptools wheel
fi

# Reinstall only when the dependency list changed, this checkout is not the one installed, or
# the environment's Python is not the one it was installed for: an environment made again from
# another interpreter (its own gone) has an empty site-packages of another version.
stamp="$VENV/.asr-setup-stamp"
venv_python=$("$VENV/bin/python" -c \
  'import sys; print("python %d.%d from %s" % (*sys.version_info[:2], sys._base_executable))')
want="$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1) $ROOT $venv_python"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing asr and its dependencies into $VENV (torch is a large download the first time)"
  pip_quiet install -q --progress-bar off -e ".[dev]"
  echo "$want" > "$stamp"
else
  log "environment at $VENV is up to date"
fi
