# Sourced by prepare.sh and run.sh: the LibriSpeech training parts that --full-libri selects.
# librispeech_train_parts true|false -> "train-clean-100 train-clean-360 train-other-500" | "train-clean-100"
librispeech_train_parts() {
  if [ "$1" = true ]; then
    echo "train-clean-100 train-clean-360 train-other-500"
  else
    echo "train-clean-100"
  fi
}
