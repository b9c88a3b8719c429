#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): one run of at most 8 minutes on one CUDA GPU.
#
#   bash tools/gpu_check.sh [OUT_DIR]            # on the GPU machine (default $OUT, gpu_check_out)
#   bash tools/gpu_check.sh --dry-run [OUT_DIR]  # the same steps on the CPU at tiny sizes
#   bash tools/gpu_check.sh --prepare            # here, with PyPI: wheels for the GPU machine
#   bash tools/gpu_check.sh --deps-only [OUT_DIR]  # only the env and deps steps (a wheel test)
#
# Steps, in order, each under its own time limit; a failing step is recorded and the next runs:
#   env               GPU, driver, Python, torch, torchaudio, triton versions
#   deps              wheels of tools/gpu_check_wheels.txt from tools/gpu_wheels (no index)
#   tests             pytest -m gpu: Triton kernels (mutual information, TDT) vs the torch
#                     reference, losses and gradients CUDA == CPU, AMP training steps,
#                     streaming, decoding
#   rnnt_loss         pruned RNN-T (Triton) vs torchaudio full loss, TDT torch vs Triton recursion,
#                     pruned TDT, B=32 T=500 U=100 V=500/5000
#   train_throughput  LibriSpeech M recipe: audio s/s, peak memory, fp16 vs bf16, largest batch
#   decode            RTFx of batched greedy search (RNN-T, TDT, CTC) at batch 64
# then OUT_DIR/summary.md (printed at the end). Exit code 0 only if every step passed.
#
# Environment: PYTHON (interpreter to use), ASR_GPU_CHECK_FORCE_WHEELS=1 (install the wheels even
# when the modules import already), ASR_GPU_WHEELS (wheel folder instead of tools/gpu_wheels).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
WHEELS_REL=${ASR_GPU_WHEELS:-tools/gpu_wheels}
case "$WHEELS_REL" in
  /*) WHEELS="$WHEELS_REL" ;;
  *) WHEELS="$ROOT/$WHEELS_REL" ;;
esac
REQUIREMENTS="$ROOT/tools/gpu_check_wheels.txt"
MAX_WHEEL_MIB=64
# Import names of the wheels' distributions that the check itself imports (the rest are theirs).
NEEDED_MODULES="yaml tqdm pytest pytest_timeout"
TOTAL_BUDGET_S=470   # the whole check, below the 8 minutes of one GPU run
SUMMARY_RESERVE_S=15

MODE=check
OUT_ARG=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE=dry-run ;;
    --prepare) MODE=prepare ;;
    --deps-only) MODE=deps-only ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "unknown option: $arg (see --help)" >&2; exit 2 ;;
    *) OUT_ARG="$arg" ;;
  esac
done

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in "$ROOT/.venv/bin/python" ${ASR_VENV:+"$ASR_VENV/bin/python"} python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c "import torch" >/dev/null 2>&1; then
      echo "$candidate"; return
    fi
  done
  echo python3
}
PY="$(pick_python)"

# ------------------------------------------------------------------------------------- prepare
prepare() {
  echo "downloading the wheels of $(basename "$REQUIREMENTS") for CPython 3.12 manylinux x86_64" \
    "into $WHEELS_REL"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 \
      --dest "$WHEELS" -r "$REQUIREMENTS"; then
    echo "pip download failed" >&2
    return 1
  fi
  "$PY" - "$WHEELS" "$MAX_WHEEL_MIB" <<'EOF'
import hashlib, sys
from pathlib import Path
folder, limit = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(folder.glob("*.whl"))
total = sum(w.stat().st_size for w in wheels)
lines = [f"{w.stat().st_size:>10}  {hashlib.sha256(w.read_bytes()).hexdigest()[:16]}  {w.name}"
         for w in wheels]
lines.append(f"{total:>10}  total ({total / 2**20:.2f} MiB, limit {limit:g} MiB)")
(folder / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
if total > limit * 2**20:
    sys.exit(f"the wheels take {total / 2**20:.1f} MiB, more than the {limit:g} MiB that travel")
EOF
}

if [ "$MODE" = prepare ]; then
  prepare
  exit $?
fi

# ---------------------------------------------------------------------------------- the check
OUT_DIR="${OUT_ARG:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR/logs" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
# Everything an earlier run into this folder wrote: a step that is skipped, or stopped before it
# writes, must not leave that run's table, log or environment for the summary to show as this one's.
rm -f "$OUT_DIR/steps.tsv" "$OUT_DIR/gpu_tests.jsonl" "$OUT_DIR/pytest.xml" "$OUT_DIR/summary.md" \
  "$OUT_DIR/env.json" "$OUT_DIR/nvidia-smi.txt" "$OUT_DIR/site_path" "$OUT_DIR/rnnt_loss.md" \
  "$OUT_DIR/train_throughput.md" "$OUT_DIR/train_throughput.json" "$OUT_DIR/decode.md" \
  "$OUT_DIR"/logs/*.log
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
if [ "$MODE" = dry-run ]; then
  export CUDA_VISIBLE_DEVICES=""   # the CPU, even on a machine with a GPU
fi
START_S=$(date +%s)
DEADLINE_S=$((START_S + TOTAL_BUDGET_S))
FAILED=0

# run_step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under `timeout` (cut to what is left of
# the budget), logs to OUT_DIR/logs/NAME.log and appends "NAME status seconds rc" to steps.tsv.
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - $(date +%s) - SUMMARY_RESERVE_S))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped (no time left)\t0\t-\n' "$name" >>"$OUT_DIR/steps.tsv"
    FAILED=1
    return
  fi
  echo
  echo "=== $name (limit ${limit} s) ==="
  local start rc status
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/logs/$name.log"
  rc=${PIPESTATUS[0]}
  case "$rc" in
    0) status=ok ;;
    124|137) status="timeout (${limit} s)" ;;
    *) status=failed ;;
  esac
  [ "$rc" -eq 0 ] || FAILED=1
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" "$rc" \
    >>"$OUT_DIR/steps.tsv"
  echo "=== $name: $status ($(($(date +%s) - start)) s) ==="
}

install_wheels() {
  local missing
  # shellcheck disable=SC2086  # one argument per module name
  missing=$("$PY" -c "import importlib.util as u, sys
print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" $NEEDED_MODULES)
  if [ -z "$missing" ] && [ -z "${ASR_GPU_CHECK_FORCE_WHEELS:-}" ]; then
    echo "$PY imports $NEEDED_MODULES already: no wheels installed"
    return 0
  fi
  echo "missing modules: ${missing:-none (install forced)}; installing $WHEELS_REL without an index"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "no wheels in $WHEELS_REL: run 'bash tools/gpu_check.sh --prepare' where PyPI is" \
      "reachable and carry $WHEELS_REL to this machine" >&2
    return 1
  fi
  local site="$WHEELS/site"
  if ! { rm -rf "$site" && mkdir -p "$site"; } 2>/dev/null; then
    site="$(mktemp -d)/site"
  fi
  if ! "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$site" \
      "$WHEELS"/*.whl; then
    echo "pip install failed (or no pip): unpacking the wheels instead"
    "$PY" -c "import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])" \
      "$site" "$WHEELS"/*.whl || return 1
  fi
  echo "$site" >"$OUT_DIR/site_path"
  missing=$(PYTHONPATH="$site:$PYTHONPATH" "$PY" -c "import importlib, sys
bad = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception as err:
        bad.append(f'{m} ({type(err).__name__}: {err})')
print('; '.join(bad))" $NEEDED_MODULES)
  if [ -n "$missing" ]; then
    echo "still not importable: $missing" >&2
    return 1
  fi
  echo "installed into $site: $(cd "$WHEELS" && ls ./*.whl | tr '\n' ' ')"
}

echo "GPU check ($MODE), python $PY, output $OUT_DIR"
run_step env 30 "$PY" tools/bench/gpu_summary.py env "$OUT_DIR" "$MODE"
export -f install_wheels   # `timeout` runs programs, so the function runs in a child bash
export PY NEEDED_MODULES WHEELS WHEELS_REL OUT_DIR
run_step deps 60 bash -c install_wheels
if [ -s "$OUT_DIR/site_path" ]; then
  PYTHONPATH="$(cat "$OUT_DIR/site_path"):$PYTHONPATH"
  export PYTHONPATH
  rm -f "$OUT_DIR/site_path"
fi
if [ "$MODE" = deps-only ]; then
  cat "$OUT_DIR/steps.tsv"
  exit "$FAILED"
fi

TESTS=(tests/gpu tests/losses/test_mutual_information_triton.py tests/losses/test_tdt_triton.py
  tests/test_model.py)
PYTEST_ARGS=(-m gpu -p no:cacheprovider -q -ra --durations=15 --junitxml="$OUT_DIR/pytest.xml")
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
  PYTEST_ARGS+=(--timeout=120)
fi
export ASR_GPU_CHECK_RECORD="$OUT_DIR/gpu_tests.jsonl"

if [ "$MODE" = dry-run ]; then
  # The gpu tests run their code on the CPU at tiny sizes; Triton in its interpreter.
  run_step tests 240 env ASR_GPU_TESTS_ON_CPU=1 TRITON_INTERPRET=1 \
    "$PY" -m pytest "${PYTEST_ARGS[@]}" "${TESTS[@]}"
  run_step rnnt_loss 120 "$PY" tools/bench/rnnt_loss.py --device cpu --batch 2 --frames 16 \
    --tokens 8 --vocab 500 --joiner-dim 16 --methods full pruned tdt tdt_triton pruned_tdt \
    --repeats 1 --threads 1 --case-timeout 60 --markdown "$OUT_DIR/rnnt_loss.md"
  run_step train_throughput 120 "$PY" tools/bench/train_throughput.py --device cpu --tiny \
    --max-duration 6 --max-cut-duration 3 --steps 1 --warmup 1 --fit-probes 3 \
    --fake-memory-limit 10 --threads 2 --time-budget 90 \
    --markdown "$OUT_DIR/train_throughput.md" --json "$OUT_DIR/train_throughput.json"
  run_step decode 90 "$PY" tools/bench/decode.py --rtfx --device cpu --tiny --batch 4 \
    --seconds 2 --repeats 1 --threads 1 --markdown "$OUT_DIR/decode.md"
else
  # Without CUDA the gpu tests fail here instead of being skipped.
  run_step tests 170 env ASR_GPU_TESTS_REQUIRE_CUDA=1 "$PY" -m pytest "${PYTEST_ARGS[@]}" \
    "${TESTS[@]}"
  run_step rnnt_loss 100 "$PY" tools/bench/rnnt_loss.py --device cuda --batch 32 --frames 500 \
    --tokens 100 --vocab 500 5000 --joiner-dim 512 --methods full pruned tdt tdt_triton pruned_tdt \
    --repeats 3 \
    --case-timeout 45 --markdown "$OUT_DIR/rnnt_loss.md"
  run_step train_throughput 120 "$PY" tools/bench/train_throughput.py --device cuda --steps 6 \
    --warmup 2 --fit-probes 6 --time-budget 90 \
    --markdown "$OUT_DIR/train_throughput.md" --json "$OUT_DIR/train_throughput.json"
  run_step decode 60 "$PY" tools/bench/decode.py --rtfx --device cuda --batch 64 --seconds 10 \
    --repeats 3 --markdown "$OUT_DIR/decode.md"
fi

echo
timeout 60 "$PY" tools/bench/gpu_summary.py summary "$OUT_DIR" || {
  echo "summary failed; steps:"
  cat "$OUT_DIR/steps.tsv"
  FAILED=1
}
echo "GPU check ($MODE) done in $(($(date +%s) - START_S)) s; summary: $OUT_DIR/summary.md"
exit "$FAILED"
