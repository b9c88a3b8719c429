#!/usr/bin/env bash
# Sourced by the recipes for their sherpa-onnx stage; needs the caller's `asr` function and $VENV.
#
# package_streams PACKAGE_DIR: prints true or false, the "streaming" field of the package's
# metadata.json (false where it is left out, as asr reads a package); a file that is missing,
# unreadable, not a JSON object or whose field is no boolean fails (status 2) naming the file.
package_streams() {
  "$VENV/bin/python" -c '
import json
import os
import sys

path = os.path.abspath(sys.argv[1])
try:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
except OSError as err:
    sys.stderr.write(f"{path}: cannot read the package metadata: {err.strerror}\n")
    sys.exit(2)
except ValueError as err:  # not UTF-8, not JSON
    sys.stderr.write(f"{path}: cannot read the package metadata: {err}\n")
    sys.exit(2)
streaming = data.get("streaming", False) if isinstance(data, dict) else None
if not isinstance(streaming, bool):
    sys.stderr.write(f"{path}: the package metadata has no boolean \"streaming\" field\n")
    sys.exit(2)
print("true" if streaming else "false")
' "$1/metadata.json"
}

# sherpa_onnx_export EXP_DIR: exports EXP_DIR/package in each layout sherpa-onnx has for it, fp32
# and int8: EXP_DIR/onnx, and EXP_DIR/onnx-streaming when the package streams and sherpa-onnx can
# stream it (RNN-T transducers; not TDT, CTC or CIF models), printing each export's report. Sets
# onnx_dirs to the directories written. Fails as an export fails, also where the caller's set -e
# does not reach (e.g. under `timed ... || rc=$?`).
sherpa_onnx_export() {
  local exp_dir=$1 mode dir report streams
  local modes=(offline) flags=()
  onnx_dirs=()
  streams=$(package_streams "$exp_dir/package") || return  # an assignment: fails under set -e too
  [ "$streams" = true ] && modes+=(streaming)
  for mode in "${modes[@]}"; do
    dir=$exp_dir/onnx
    flags=()
    if [ "$mode" = streaming ]; then
      dir=$exp_dir/onnx-streaming
      flags=(--streaming)
    fi
    # --if-supported: no layout for this mode is no error; the export then prints no report
    report=$(asr export-onnx --model "$exp_dir/package" --output-dir "$dir" "${flags[@]}" --int8 \
      --overwrite --if-supported) || return
    if [ -n "$report" ]; then
      echo "$report"
      onnx_dirs+=("$dir")
    fi
  done
}
