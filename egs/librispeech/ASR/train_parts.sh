# Sourced by prepare.sh and run.sh: the LibriSpeech parts that prepare.sh makes.
# librispeech_train_parts true|false -> "train-clean-100 train-clean-360 train-other-500" | "train-clean-100"
librispeech_train_parts() {
  if [ "$1" = true ]; then
    echo "train-clean-100 train-clean-360 train-other-500"
  else
    echo "train-clean-100"
  fi
}

# librispeech_eval_parts -> the dev and test parts (prepared whatever --full-libri says; run.sh
# decodes those of --test-parts)
librispeech_eval_parts() {
  echo "dev-clean dev-other test-clean test-other"
}

# librispeech_shuffled_cuts true|false -> the file name (in data/fbank) of the globally shuffled
# training manifest that prepare.sh stage 3 writes and run.sh trains on
librispeech_shuffled_cuts() {
  local parts
  parts=$(librispeech_train_parts "$1" | sed 's/train-//g; s/ /+/g')
  echo "librispeech_cuts_train-${parts}-shuf.jsonl.gz"
}
