# Sourced by prepare.sh and run.sh: the LibriSpeech training parts that --full-libri selects.
# librispeech_train_parts true|false -> "train-clean-100 train-clean-360 train-other-500" | "train-clean-100"
librispeech_train_parts() {
  if [ "$1" = true ]; then
    echo "train-clean-100 train-clean-360 train-other-500"
  else
    echo "train-clean-100"
  fi
}

# librispeech_shuffled_cuts true|false -> the file name (in data/fbank) of the globally shuffled
# training manifest that prepare.sh stage 3 writes and run.sh trains on
librispeech_shuffled_cuts() {
  local parts
  parts=$(librispeech_train_parts "$1" | sed 's/train-//g; s/ /+/g')
  echo "librispeech_cuts_train-${parts}-shuf.jsonl.gz"
}
