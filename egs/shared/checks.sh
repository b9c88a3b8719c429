#!/usr/bin/env bash
# Sourced by the stage scripts after parse_options.sh: checks of option values that a script
# makes before its first stage, for options whose bad value a later stage (after hours of data
# preparation or training) would be the first to read. Each one exits with 2 naming the option.
# What needs the toolkit's own rules (a recipe's heads and their searchers, search options, an
# `asr decode` command line) is checked by `asr train --check-only` instead, and the BPE
# vocabulary size by `asr bpe --check-only`.

# check_at_least MIN NAME...: each option NAME (the variable of --NAME) is an integer >= MIN.
check_at_least() {
  local min=$1 name
  shift
  for name in "$@"; do
    if [ "${!name}" -lt "$min" ]; then
      echo "$0: --${name//_/-} must be at least $min, got ${!name}" >&2
      exit 2
    fi
  done
}

# check_not_empty NAME...: each list option NAME (a string of words, e.g. --searchers "A B") holds
# at least one word: an empty one would make its stage loop over nothing and report success.
check_not_empty() {
  local name words
  for name in "$@"; do
    read -ra words <<< "${!name}"
    if [ ${#words[@]} -eq 0 ]; then
      echo "$0: --${name//_/-} is empty; give at least one name (see --help)" >&2
      exit 2
    fi
  done
}

# check_one_of NAME CHOICE...: option NAME holds only words among the CHOICEs (a list option such
# as --test-parts "test-clean test-other" may hold several).
check_one_of() {
  local name=$1 word words
  shift
  read -ra words <<< "${!name}"
  for word in "${words[@]}"; do
    if [[ " $* " != *" $word "* ]]; then
      echo "$0: --${name//_/-}: unknown '$word'; expected one of: $*" >&2
      exit 2
    fi
  done
}

# check_paths_exist NAME: every path of the array option NAME exists (relative to the current
# directory, the work directory).
check_paths_exist() {
  declare -n _paths=$1
  local path
  for path in "${_paths[@]}"; do
    if [ ! -e "$path" ]; then
      echo "$0: --${1//_/-} '$path': no such file or directory (in $PWD; give each file its" \
        "own --${1//_/-})" >&2
      exit 2
    fi
  done
}

# check_made STAGE PATH...: each PATH (relative to the work directory), which STAGE makes, is
# there for a run that starts after STAGE (--stage $stage) and reads it; exits 2 naming the
# first missing one and STAGE.
check_made() {
  local made_by=$1 path
  shift
  for path in "$@"; do
    if [ ! -e "$path" ]; then
      echo "$0: no $path (in $PWD), which $made_by makes: --stage $stage starts after it;" \
        "run that stage first, or give the options it ran with; nothing was run" >&2
      exit 2
    fi
  done
}

# check_recipe WHAT ARG...: `asr train --check-only` of the recipe ($config, $exp_dir and the
# words of --train-args, $train_words, of the calling script) with the extra ARGs (--searchers,
# --biasing-searchers, --decode-arg=..., --tokenizer-made-by, --set ...); on failure it names the
# options WHAT lists and exits with asr's status (2), before any stage ran.
check_recipe() {
  local what=$1 rc=0
  shift
  asr train --config "$config" --exp-dir "$exp_dir" --check-only "$@" "${train_words[@]}" || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$0: refused: --recipe $recipe with these $what (above); nothing was run" >&2
    exit $rc
  fi
}

# check_vocab_size [TRANSCRIPT...]: `asr bpe --check-only` of --vocab-size ($vocab_size): at least
# what any text needs and, given the TRANSCRIPTs (the training text, where it exists already and
# no stage will make it again), what they need; on failure it exits with asr's status (2),
# before any stage ran.
check_vocab_size() {
  local rc=0 texts=()
  [ $# -gt 0 ] && texts=(--transcripts "$@")
  asr bpe --check-only --vocab-size "$vocab_size" "${texts[@]}" || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$0: --vocab-size $vocab_size is too small for the BPE stage (above); nothing was run" >&2
    exit $rc
  fi
}
