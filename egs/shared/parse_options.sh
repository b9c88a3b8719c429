#!/usr/bin/env bash
# Kaldi/icefall-style option parsing, sourced by the stage scripts after they set their defaults:
#   --stage 3 --stop-stage 5 --dl-dir /data   sets $stage, $stop_stage, $dl_dir
# An option must name a variable that is already defined (its default), so a misspelt option is
# an error, not a silently ignored setting. `--help` prints the variables and their values.
# Bash only; the caller must define `usage` (a string) and the defaults before sourcing.

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo -e "${usage:-}" >&2
      exit 0
      ;;
    --*=*)
      _name="${1%%=*}"; _value="${1#*=}"; shift
      ;;
    --*)
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2
        exit 2
      fi
      _name="$1"; _value="$2"; shift 2
      ;;
    *)
      break
      ;;
  esac
  _name="${_name#--}"
  _name="${_name//-/_}"
  if ! declare -p "$_name" >/dev/null 2>&1; then
    echo "$0: unknown option --${_name//_/-} (see --help)" >&2
    exit 2
  fi
  printf -v "$_name" '%s' "$_value"
done
unset _name _value
