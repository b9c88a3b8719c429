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
# An option that holds extra arguments of a command (--train-args "--set a=1 b=2") is split into
# its words by option_words (below) as the shell splits a command line, so that quotes keep a
# value with spaces whole: --train-args "--set 'data.train_cuts=[my data/cuts.jsonl.gz]'".
# Bash only; the caller must define `usage` (a string) and the defaults before sourcing.

# option_words NAME ARRAY: the words of option NAME (the variable of --NAME) in the array ARRAY,
# split as the shell splits a command line but with no expansion or comment ($, *, ~, ` and #
# are kept as they are): blanks and newlines separate words; '...' keeps what it holds whole;
# "..." too, where \" \\ \$ and \` stand for the character after the backslash; outside quotes a
# backslash keeps the next character. An unclosed quote or a backslash at the end exits 2 naming
# the option.
option_words() {
  declare -n _words=$2
  local text=${!1} word="" quote="" started=false c i=0
  _words=()
  while [ $i -lt ${#text} ]; do
    c=${text:i:1}
    i=$((i + 1))
    if [ "$quote" = "'" ]; then
      if [ "$c" = "'" ]; then quote=""; else word+=$c; fi
    elif [ "$quote" = '"' ]; then
      if [ "$c" = '"' ]; then
        quote=""
      elif [ "$c" = '\' ] && [[ "${text:i:1}" == [\"\\\$\`] ]]; then
        word+=${text:i:1}
        i=$((i + 1))
      else
        word+=$c
      fi
    elif [[ "$c" == [[:space:]] ]]; then
      if [ $started = true ]; then _words+=("$word"); fi
      word="" started=false
    else
      started=true
      case "$c" in
        "'" | '"') quote=$c ;;
        '\')
          if [ $i -ge ${#text} ]; then
            echo "$0: --${1//_/-}: a backslash ends: $text (quote a value with spaces: see" \
              "--help)" >&2
            exit 2
          fi
          word+=${text:i:1}
          i=$((i + 1)) ;;
        *) word+=$c ;;
      esac
    fi
  done
  if [ -n "$quote" ]; then
    echo "$0: --${1//_/-}: unclosed $quote quote in: $text (quote a value with spaces as in" \
      "the shell, e.g. --${1//_/-} \"--set 'k=a b'\")" >&2
    exit 2
  fi
  if [ $started = true ]; then _words+=("$word"); fi
}

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
