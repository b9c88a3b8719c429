#!/usr/bin/env bash
# Sourced by the recipes for their sherpa-onnx stage; needs the caller's `asr` function.
#
# sherpa_onnx_export EXP_DIR: exports EXP_DIR/package in each layout sherpa-onnx has for it, fp32
# and int8: EXP_DIR/onnx, and EXP_DIR/onnx-streaming when the package streams and sherpa-onnx can
# stream it (RNN-T transducers; not TDT, CTC or CIF models), printing each export's report. Sets
# onnx_dirs to the directories written. Fails as an export fails, also where the caller's set -e
# does not reach (e.g. under `timed ... || rc=$?`).
sherpa_onnx_export() {
  local exp_dir=$1 mode dir report
  local modes=(offline) flags=()
  onnx_dirs=()
  if grep -q '"streaming": true' "$exp_dir/package/metadata.json"; then
    modes+=(streaming)
  fi
  for mode in "${modes[@]}"; do
    dir=$exp_dir/onnx
    flags=()
    if [ "$mode" = streaming ]; then
      dir=$exp_dir/onnx-streaming
      flags=(--streaming)
    fi
    # --if-supported: no layout for this mode is no error; the export then prints no report
    report=$(asr export-onnx --model "$exp_dir/package" --output-dir "$dir" "${flags[@]}" --int8 \
      --force --if-supported) || return
    if [ -n "$report" ]; then
      echo "$report"
      onnx_dirs+=("$dir")
    fi
  done
}
