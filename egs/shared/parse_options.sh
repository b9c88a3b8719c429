#!/usr/bin/env bash
# Kaldi/icefall-style option parsing, sourced by the stage scripts after they set their defaults:
#   --stage 3 --stop-stage 5 --dl-dir /data   sets $stage, $stop_stage, $dl_dir
# The options are those the caller's `usage` lists, each as `[--NAME ...]`, and each must have its
# default (the variable of --NAME, dashes as underscores; --stop_stage is taken for --stop-stage,
# as in Kaldi) set before this file is sourced; any
# other --NAME is an error naming it and listing the valid ones (exit 2), so that neither a
# misspelt option nor the name of another shell variable (--PATH, --IFS, --ROOT) is taken. As in
# Kaldi's parse_options.sh, the default also fixes the type: an option whose default is true or
# false takes only true or false, and one whose default is an integer takes only an integer
# (`--stage six` would otherwise skip every stage and exit 0) of at most 9 digits (leading zeros
# aside: a longer one would wrap around in bash's 64-bit arithmetic), stored in base 10
# (`--stage 08` is 8: bash's arithmetic reads a leading 0 as octal), and one whose default is a
# decimal number (`lm_weight=0.3`) only a number (a typo there failed only at the decode stage,
# after training).
# An option whose default is an array (`lm_text=()`) is a list: each occurrence adds one value,
# kept whole (a path may hold spaces).
# The scripts take no positional arguments: one left over (e.g. `--train-args --set k=v`, where
# only `--set` is the value) is an error. `--help` prints the caller's `usage` (and exits 0).
# An option that holds extra arguments of a command (--train-args "--set a=1 b=2") is split into
# its words by option_words (below) as the shell splits a command line, so that quotes keep a
# value with spaces whole: --train-args "--set 'data.train_cuts=[my data/cuts.jsonl.gz]'".
# Bash only; the caller must define `usage` (a string) and the defaults before sourcing.

# option_words NAME ARRAY: the words of option NAME (the variable of --NAME) in the array ARRAY,
# split as bash splits the words of a command line, but with no expansion ($, *, ?, [, ~, {, `
# are kept as they are) and no operators (;, &, |, <, >, ( and ) are word characters): blanks
# (space, tab) and newlines separate words; # at the start of a word begins a comment, to the
# end of its line; '...' keeps what it holds whole; "..." too, where \" \\ \$ and \` stand for
# the character after the backslash; outside quotes a backslash keeps the next character; a
# backslash before a newline (outside '...') joins the lines; "" and '' are an empty word; a
# backslash at the very end is kept. An unclosed quote exits 2 naming the option.
option_words() {
  declare -n _words=$2
  local text=${!1} word="" quote="" started=false c next i=0
  _words=()
  while [ $i -lt ${#text} ]; do
    c=${text:i:1}
    next=${text:i+1:1}
    i=$((i + 1))
    if [ "$quote" = "'" ]; then
      if [ "$c" = "'" ]; then quote=""; else word+=$c; fi
    elif [ "$c" = '\' ] && [ "$next" = $'\n' ]; then
      i=$((i + 1))  # a line continuation, inside "..." too: both characters go
    elif [ "$quote" = '"' ]; then
      if [ "$c" = '"' ]; then
        quote=""
      elif [ "$c" = '\' ] && [[ "$next" == [\"\\\$\`] ]]; then
        word+=$next
        i=$((i + 1))
      else
        word+=$c
      fi
    elif [ "$c" = ' ' ] || [ "$c" = $'\t' ] || [ "$c" = $'\n' ]; then
      if [ $started = true ]; then _words+=("$word"); fi
      word="" started=false
    elif [ "$c" = '#' ] && [ $started = false ]; then
      while [ $i -lt ${#text} ] && [ "${text:i:1}" != $'\n' ]; do i=$((i + 1)); done
    else
      started=true
      case "$c" in
        "'" | '"') quote=$c ;;
        '\')
          word+=${next:-\\}  # the next character; a backslash at the very end stays
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

# the options of the caller's usage ([--NAME ...]), as variable names; each needs its default
_options=()
_rest=${usage:-}
while [[ "$_rest" =~ \[--([a-z][a-z0-9-]*) ]]; do
  _name=${BASH_REMATCH[1]//-/_}
  _rest=${_rest#*"${BASH_REMATCH[0]}"}
  if ! declare -p "$_name" >/dev/null 2>&1; then
    echo "$0: its usage lists --${_name//_/-}, but it sets no default \$$_name before" \
      "parse_options.sh" >&2
    exit 2
  fi
  _options+=("$_name")
done

# exits (2) naming an option that is not one of the usage's: spelt with dashes or (as Kaldi's
# parse_options.sh also takes) with underscores, --stop-stage or --stop_stage; any variable that
# is no option (--PATH, --IFS, --usage) is unknown
_check_option() {
  if ! [[ "$1" =~ ^[a-z][a-z0-9_-]*$ ]] || [[ " ${_options[*]} " != *" ${1//-/_} "* ]]; then
    local valid=("${_options[@]//_/-}")
    echo "$0: unknown option --$1; the options are: ${valid[*]/#/--} (see --help)" >&2
    exit 2
  fi
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
      if [ $# -lt 2 ]; then  # a misspelt last option is unknown, not short of a value
        _check_option "${1#--}"
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
  _check_option "$_name"
  _name="${_name//-/_}"
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
  if [[ "${!_name}" =~ ^-?[0-9]+$ ]]; then
    if ! [[ "$_value" =~ ^(-?)([0-9]+)$ ]]; then
      echo "$0: --${_name//_/-} takes an integer, got '$_value'" >&2
      exit 2
    fi
    _digits=${BASH_REMATCH[2]#"${BASH_REMATCH[2]%%[!0]*}"}  # without its leading zeros
    if [ ${#_digits} -gt 9 ]; then  # bash's 64-bit arithmetic would wrap a longer one around
      echo "$0: --${_name//_/-} takes an integer of at most 9 digits, got '$_value'" >&2
      exit 2
    fi
    _value=${BASH_REMATCH[1]}$((10#${_digits:-0}))  # base 10: 08 is 8, not an octal error
  fi
  if [[ "${!_name}" =~ ^-?[0-9]*\.[0-9]+$ ]] \
      && ! [[ "$_value" =~ ^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; then
    echo "$0: --${_name//_/-} takes a number, got '$_value'" >&2
    exit 2
  fi
  printf -v "$_name" '%s' "$_value"
done
unset _name _value _rest _options _valid _digits
