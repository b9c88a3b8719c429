#!/usr/bin/env bash
# Kaldi/icefall-style option parsing, sourced by the stage scripts after they set their defaults:
#   --stage 3 --stop-stage 5 --dl-dir /data   sets $stage, $stop_stage, $dl_dir
# An option must name a variable that is already defined (its default), so a misspelt option is
# an error, not a silently ignored setting. As in Kaldi's parse_options.sh, the default also fixes
# the type: an option whose default is true or false takes only true or false, and one whose
# default is an integer takes only an integer (`--stage six` would otherwise skip every stage and
# exit 0), and one whose default is a decimal number (`lm_weight=0.3`) only a number (a typo there
# failed only at the decode stage, after training). An option whose default is an array
# (`lm_text=()`) is a list: each occurrence adds one value, kept whole (a path may hold spaces).
# The scripts take no positional arguments: one left over (e.g. `--train-args --set k=v`, where
# only `--set` is the value) is an error. `--help` prints the caller's `usage` (and exits 0).
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
      echo "$0: unexpected argument '$1': options take one value each (quote a value with" \
        "spaces, e.g. --train-args \"--set a=1 b=2\"; see --help)" >&2
      exit 2
      ;;
  esac
  _name="${_name#--}"
  _name="${_name//-/_}"
  if ! declare -p "$_name" >/dev/null 2>&1; then
    echo "$0: unknown option --${_name//_/-} (see --help)" >&2
    exit 2
  fi
  if [[ "$(declare -p "$_name")" == "declare -a"* ]]; then
    declare -n _list="$_name"
    _list+=("$_value")
    unset -n _list
    continue
  fi
  case "${!_name}" in
    true|false)
      if [ "$_value" != true ] && [ "$_value" != false ]; then
        echo "$0: --${_name//_/-} takes true or false, got '$_value'" >&2
        exit 2
      fi
      ;;
  esac
  if [[ "${!_name}" =~ ^-?[0-9]+$ ]] && ! [[ "$_value" =~ ^-?[0-9]+$ ]]; then
    echo "$0: --${_name//_/-} takes an integer, got '$_value'" >&2
    exit 2
  fi
  if [[ "${!_name}" =~ ^-?[0-9]*\.[0-9]+$ ]] \
      && ! [[ "$_value" =~ ^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; then
    echo "$0: --${_name//_/-} takes a number, got '$_value'" >&2
    exit 2
  fi
  printf -v "$_name" '%s' "$_value"
done
unset _name _value
