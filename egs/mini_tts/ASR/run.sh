#!/usr/bin/env bash
# mini_tts: the embedded default job. Synthesizes a small LibriSpeech-layout corpus with TTS voices,
# prepares it, trains a streaming Transformer transducer and reports the test-clean WER on held-out
# voices and sentences, then transcribes one held-out file with an exported model package.
#
#   bash egs/mini_tts/ASR/run.sh                          # everything (from any directory)
#   bash egs/mini_tts/ASR/run.sh --stage 4 --stop-stage 5 # train and decode only
#   bash egs/mini_tts/ASR/run.sh --recipe conformer_ctc_aed --searchers "ctc_greedy aed_beam"
#   bash egs/mini_tts/ASR/run.sh --stage 5 --lm-weight 0.4 # re-decode with another LM weight
#
# Stages:
#   0  synthesize the corpus        (data/LibriSpeech)
#   1  lhotse manifests             (data/manifests)
#   2  fbank features               (data/fbank; with --speed-perturb true also 0.9/1.1 copies)
#   3  BPE tokenizer (training transcripts), a token n-gram LM and a word n-gram LM of the
#                                   corpus's training text (data/lang_bpe_${vocab_size},
#                                   .../token_${lm_order}gram.arpa, .../word_${word_lm_order}gram.arpa;
#                                   a rerun keeps each one while what made it is the same: its
#                                   *.fingerprint.json, asr/fingerprint.py)
#   4  train                        (exp/${recipe}; for the time --time-budget leaves: the step
#                                   count is planned on the machine, see asr/train/budget.py)
#   5  average the last checkpoints (exp/${recipe}/averaged.safetensors) and decode test-clean
#                                   (exp/${recipe}/<searcher>/wer-summary-test-clean-<searcher>.txt,
#                                   and one "SEARCHER NAME WER [SEARCH OPTIONS]" line per
#                                   searcher in exp/${recipe}/wer-test-clean.txt); transducer_beam, tdt_beam,
#                                   ctc_prefix_beam and cif_beam fuse the LM of --lm-unit (token;
#                                   word: lexicon-constrained)
#   6  export a model package (exp/${recipe}/package) that decodes with --package-searcher and
#                                   the search options stage 5 used for it (beam, LM copied into
#                                   the package) and records its test-clean WER of stage 5 (when
#                                   stage 5 measured it with the same search options), then
#                                   transcribe a held-out test-clean file with it
#   7  export the package for sherpa-onnx (exp/${recipe}/onnx, and onnx-streaming when the model
#                                   streams and is an RNN-T transducer; fp32 and int8: each
#                                   layout sherpa-onnx has for it) and decode test-clean through
#                                   sherpa-onnx (exp/${recipe}/onnx*/wer-summary-*; docs/ONNX.md)
#   8  only with --biasing N: the contextual-biasing set (dev-biasing, test-biasing: N sentences
#                                   each with a phrase unseen in training, held-out voices;
#                                   asr/synth/biasing.py), decoded by the beam search with and
#                                   without its phrases + 100 distractors as hotwords (phrase
#                                   recall and WER), and test-clean with the distractors
#
# Paths are relative to --work-dir (default: this directory, egs/mini_tts/ASR), as in the recipe YAMLs.
set -euo pipefail
started=$(date +%s)  # the time budget below counts from here, set-up included
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)

stage=0
stop_stage=100
recipe=transformer_transducer   # recipes/mini_tts/<recipe>.yaml
searchers="greedy beam"         # searcher names, or the roles greedy / beam: those of the
                                # first trained head (asr decode --searcher); all but greedy ones
                                # decode with the LM, beam size and blank penalty below
avg=2                           # stage 5 averages the newest $avg step checkpoints
num_jobs=2                      # synthesis / manifest processes
fbank_jobs=1                    # one 2-thread process; 2 one-thread workers gain only ~10% here
num_train=15000                 # synthesized training utterances (train-clean-5): distinct
                                # segments, each with its own rate, pitch, noise and room
num_dev=100
num_test=100
voices_per_sentence=1           # training sentences spoken in this many different voices
train_text=segments             # training text: word-run "segments" or whole pool "sentences"
speed_perturb=false             # true: 0.9/1.1 copies of the training features, on top of the
                                # 0.9-1.1 speed that stage 0 gives every training utterance
                                # (copies learn more slowly; recipes/mini_tts/EXPERIMENTS.md)
vocab_size=128
lm_order=6                      # token n-gram LM (stage 3) for shallow fusion in beam searches
word_lm_order=3                 # word n-gram LM (stage 3): its words are the decoding lexicon
lm_unit=token                   # the LM stage 5 fuses: token, or word (only lexicon words are
                                # said; recipes/mini_tts/EXPERIMENTS.md has both tuned on dev)
lm_weight=0.55                  # LM weight, beam size, blank penalty, per-token insertion bonus and
beam_size=8                     # length normalisation (rank by score / (L + 1)^alpha) of the fused
blank_penalty=1.5               # beam searches: the main job's, tuned on dev-clean-2 (2026-12-05,
insertion_bonus=0.75            # recipes/mini_tts/EXPERIMENTS.md section 8, with the other
length_norm=0.5                 # recipes' best points)
package_searcher=beam           # the package's default searcher (stage 6), with the options and
                                # LM stage 5 decoded it with
work_dir=$HERE                  # where data/, exp/ (and download/) go; relative paths start here
skip_setup=false                # true: use the existing .venv without running tools/setup.sh
train_args=""                   # extra `asr train` arguments, e.g. "--set train.max_epochs=2",
                                # split into words as the shell splits them (quote a value with
                                # spaces inside: see the usage below)
time_budget=1710                # seconds this invocation may take; training gets what the stages
                                # before it left, less $post_train_reserve (0: the recipe's steps)
post_train_reserve=60           # seconds kept for training start-up and stages 5-6
onnx_reserve=60                 # seconds kept for stage 7 as well, when it is to run
biasing=0                       # stage 8: sentences per biasing part (0: no stage 8)
hotwords_score=3.0              # stage 8: per-token boost (tuned on dev-biasing and dev-clean-2)

usage="Usage: $0 [--stage N] [--stop-stage N] [--recipe NAME] [--searchers \"A B\"] [--avg N]
  [--num-jobs N] [--fbank-jobs N] [--num-train N] [--num-dev N] [--num-test N]
  [--voices-per-sentence N] [--train-text sentences|segments] [--speed-perturb true|false]
  [--vocab-size N] [--lm-order N] [--word-lm-order N] [--lm-unit token|word] [--lm-weight W]
  [--beam-size N] [--blank-penalty P] [--insertion-bonus B] [--length-norm A] [--package-searcher NAME]
  [--work-dir DIR] [--skip-setup true|false] [--train-args \"...\"] [--time-budget SECONDS]
  [--post-train-reserve SECONDS] [--onnx-reserve SECONDS] [--biasing N] [--hotwords-score S]
defaults: stage=$stage stop_stage=$stop_stage recipe=$recipe num_jobs=$num_jobs num_train=$num_train
  num_dev=$num_dev num_test=$num_test voices_per_sentence=$voices_per_sentence train_text=$train_text
  speed_perturb=$speed_perturb vocab_size=$vocab_size lm_order=$lm_order
  word_lm_order=$word_lm_order lm_unit=$lm_unit lm_weight=$lm_weight
  beam_size=$beam_size blank_penalty=$blank_penalty insertion_bonus=$insertion_bonus
  length_norm=$length_norm package_searcher=$package_searcher
  time_budget=$time_budget
--train-args is split into words as the shell splits them: quote a value with spaces inside,
  e.g. --train-args \"--set 'data.train_cuts=[my data/cuts.jsonl.gz]'\""
. "$ROOT/egs/shared/parse_options.sh"
. "$ROOT/egs/shared/sherpa_onnx.sh"
. "$ROOT/egs/shared/checks.sh"
option_words train_args train_words
work_dir=$(mkdir -p "$work_dir" && cd "$work_dir" && pwd)
cd "$work_dir"

if [ "$skip_setup" != true ]; then
  bash "$ROOT/tools/setup.sh"
fi
VENV=${ASR_VENV:-$ROOT/.venv}
[[ $VENV = /* ]] || VENV=$ROOT/$VENV  # relative to the repository, as tools/setup.sh takes it
asr() { "$VENV/bin/asr" "$@"; }
log() { echo "$(date '+%F %T') [mini_tts] $*" >&2; }
timed() {  # timed NAME CMD...: runs CMD and logs its wall-clock time; fails as CMD fails (also
           # inside $(...), where set -e does not reach)
  local name=$1 start rc=0; shift
  start=$(date +%s)
  "$@" || rc=$?
  if [ $rc -ne 0 ]; then
    log "stage '$name' failed (exit status $rc)"
    return $rc
  fi
  log "stage '$name' took $(( $(date +%s) - start )) s"
}

config="$ROOT/recipes/mini_tts/${recipe}.yaml"
if [ $stop_stage -ge 4 ] && [ ! -f "$config" ]; then
  echo "$0: no recipe $config (see recipes/mini_tts/)" >&2
  exit 2
fi
exp_dir=exp/$recipe
weights=$exp_dir/averaged.safetensors
lang_dir=data/lang_bpe_${vocab_size}
lm_path=$lang_dir/token_${lm_order}gram.arpa
word_lm_path=$lang_dir/word_${word_lm_order}gram.arpa
fused_lm=$lm_path  # the LM of --lm-unit, which the beam searches fuse
[ "$lm_unit" = word ] && fused_lm=$word_lm_path
case "$lm_unit" in token|word) ;; *) echo "$0: --lm-unit must be token or word, got $lm_unit" >&2; exit 2 ;; esac
# what a stage after the synthesis or training would be the first to read: checked now
if [ $stage -le 3 ] && [ $stop_stage -ge 2 ]; then check_at_least 1 fbank_jobs lm_order word_lm_order; fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then check_at_least 1 avg; check_not_empty searchers; fi
parts="train-clean-5 dev-clean-2 test-clean"
wer_file=$exp_dir/wer-test-clean.txt  # stage 5: "SEARCHER NAME WER [SEARCH OPTIONS]" per
                                      # searcher; stage 6 reads it

# The search options of searcher $1 (a name or role), in search_args: none for the greedy ones;
# the LM of --lm-unit, beam size, blank penalty, insertion bonus and length norm for the others.
# Stage 5 decodes with them and stage 6 stores them in the package.
set_search_args() {
  search_args=()
  case "$1" in
    greedy|*_greedy) ;;
    *)
      search_args=(--set "search.beam_size=$beam_size" "search.blank_penalty=$blank_penalty"
        "search.lm_path=$fused_lm" "search.lm_unit=$lm_unit" "search.lm_weight=$lm_weight"
        "search.insertion_bonus=$insertion_bonus" "search.length_norm=$length_norm") ;;
  esac
}

# A run that starts after stage 3 and decodes with a searcher that fuses the LM (stages 5, 6
# and 8) needs the LM stage 3 made for these --vocab-size, --lm-unit and LM order: checked now,
# not after training.
if [ $stage -ge 4 ]; then
  fusing=()
  [ $stage -le 5 ] && [ $stop_stage -ge 5 ] && read -ra fusing <<< "$searchers"
  [ $stage -le 6 ] && [ $stop_stage -ge 6 ] && fusing+=("$package_searcher")
  [ $stage -le 8 ] && [ $stop_stage -ge 8 ] && [ "$biasing" -gt 0 ] && fusing+=(beam)
  for name in "${fusing[@]}"; do
    set_search_args "$name"
    if [ ${#search_args[@]} -gt 0 ]; then
      check_made "stage 3 (the LMs, --vocab-size $vocab_size)" "$fused_lm"
    fi
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  # the BPE vocabulary of stage 3: against the training transcripts when stage 0 does not make
  # them again
  texts=()
  [ $stage -ge 1 ] && [ -d data/LibriSpeech/train-clean-5 ] && texts=(data/LibriSpeech/train-clean-5)
  check_vocab_size "${texts[@]}"
fi
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  # The recipe with --train-args, and the searchers and search options of stages 5, 6 and 8,
  # checked as those stages will take them (a misspelt key or searcher, one the recipe's heads
  # lack, a bad --beam-size, a beam search that takes no hotwords for stage 8), before the
  # synthesis; a run from stage 5 on checks them against the trained model at once.
  check=(--set "tokenizer_dir=$lang_dir")
  # from stage 4 on, the tokenizer of stage 3 must be there already (training loads it)
  [ $stage -ge 4 ] && check+=(--tokenizer-made-by "stage 3 (BPE, --vocab-size $vocab_size)")
  names=()
  [ $stop_stage -ge 5 ] && read -ra names <<< "$searchers"
  [ $stop_stage -ge 6 ] && names+=("$package_searcher")
  [ $stop_stage -ge 8 ] && [ "$biasing" -gt 0 ] && check+=(--biasing-searchers beam)
  if [ ${#names[@]} -gt 0 ]; then
    set_search_args beam  # the options of every searcher but the greedy ones
    check+=(--searchers "${names[@]}" "${search_args[@]}")
  fi
  check_recipe "--train-args / --searchers / --package-searcher / search options" "${check[@]}"
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "stage 0: synthesize the corpus"
  timed synthesize asr synthesize --root data --preset mini_tts --num-jobs "$num_jobs" --no-progress \
    --num-utts train-clean-5="$num_train" dev-clean-2="$num_dev" test-clean="$num_test" \
    --voices-per-sentence "$voices_per_sentence" --train-text "$train_text"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: lhotse manifests"
  timed manifests asr prepare manifests --corpus-dir data/LibriSpeech --output-dir data/manifests \
    --parts $parts --num-jobs "$num_jobs"
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "stage 2: fbank features"
  perturb=""
  [ "$speed_perturb" = true ] && perturb="--speed-perturb"
  timed fbank asr prepare fbank --manifest-dir data/manifests --output-dir data/fbank \
    --parts $parts $perturb --num-jobs "$fbank_jobs"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: BPE with $vocab_size tokens"
  timed bpe asr bpe --transcripts data/LibriSpeech/train-clean-5 --output-dir "$lang_dir" \
    --vocab-size "$vocab_size"
  # The LM text: every text training may say (data/LibriSpeech/train-text.txt, written by stage 0;
  # LibriSpeech's counterpart is librispeech-lm-norm.txt), else the training transcripts.
  lm_text=data/LibriSpeech/train-text.txt
  [ -f "$lm_text" ] || lm_text=data/LibriSpeech/train-clean-5
  log "stage 3: token ${lm_order}-gram LM of $lm_text"
  timed lm asr lm --transcripts "$lm_text" --tokenizer-dir "$lang_dir" \
    --order "$lm_order" --output "$lm_path"
  log "stage 3: word ${word_lm_order}-gram LM of $lm_text (its words are the lexicon)"
  timed "word lm" asr lm --unit word --transcripts "$lm_text" --order "$word_lm_order" \
    --output "$word_lm_path"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "stage 4: train $recipe (resumes from the newest checkpoint in $exp_dir)"
  budget_args=()
  if [ "$time_budget" -gt 0 ]; then
    # The step count is planned to fit the time left (asr/train/budget.py): ~1700 float32 steps on
    # a 2-core AVX2 machine (estimated), 4300-5428 bf16 steps measured on one with AMX when
    # nothing else runs there (recipes/mini_tts/README.md); max_epochs still caps it.
    train_budget=$(( time_budget - ($(date +%s) - started) - post_train_reserve ))
    [ $stop_stage -ge 7 ] && train_budget=$(( train_budget - onnx_reserve ))
    if [ "$train_budget" -lt 60 ]; then
      echo "$0: only ${train_budget} s of the ${time_budget} s time budget left for training;" \
        "raise --time-budget, or 0 to train the recipe's fixed step count" >&2
      exit 1
    fi
    log "stage 4: time budget: $train_budget s of training (--time-budget $time_budget)"
    budget_args=("train.time_budget_s=$train_budget" "train.max_steps=0")
  fi
  timed train asr train --config "$config" --exp-dir "$exp_dir" \
    --set tokenizer_dir="$lang_dir" "${budget_args[@]}" "${train_words[@]}"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  # the time budget decides how many checkpoints a run makes: a slow or busy machine may leave
  # fewer than --avg, and then all of them are averaged (none, or no $exp_dir at all: asr
  # average names the problem; find's failure must not end the script without a word)
  have=$(find "$exp_dir" -maxdepth 1 -name 'checkpoint-[0-9]*.pt' 2>/dev/null | wc -l) || true
  use=$avg
  if [ "$have" -ge 1 ] && [ "$have" -lt "$avg" ]; then
    use=$have
    log "stage 5: the training left $have checkpoint(s), fewer than --avg $avg: averaging $use"
  fi
  log "stage 5: average the last $use checkpoints, decode test-clean with: $searchers"
  timed average asr average --exp-dir "$exp_dir" --last "$use" --output "$weights"
  : > "$wer_file"
  for searcher in $searchers; do
    set_search_args "$searcher"
    # asr decode prints the path of each WER summary it writes: <searcher name>/wer-summary-...
    summaries=$(timed "decode $searcher" asr decode --exp-dir "$exp_dir" --checkpoint "$weights" \
      --searcher "$searcher" --parts test-clean "${search_args[@]}")
    for summary in $summaries; do
      cat "$summary" >&2
      name=$(basename "$(dirname "$summary")")
      # with the search options, which stage 6 compares with those it packages
      echo "$searcher $name $(awk -F'\t' 'NR == 2 {print $2}' "$summary")${search_args[*]:+ ${search_args[*]}}" \
        >> "$wer_file"
    done
  done
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: export a model package and transcribe a held-out test-clean file"
  # A held-out voice and sentence: the first utterance listed in test-clean.
  trans=$(find data/LibriSpeech/test-clean -name '*.trans.txt' | sort | head -n 1)
  utt=$(head -n 1 "$trans" | cut -d' ' -f1)
  audio=$(dirname "$trans")/$utt.flac
  set_search_args "$package_searcher"
  # the test-clean WER stage 5 measured with this searcher (by the name given or its own name)
  # and the search options the package gets (a WER of other options would be recorded as its own)
  wer=""
  [ -f "$wer_file" ] && wer=$(awk -v s="$package_searcher" -v a="${search_args[*]}" '
    { options = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ ?/, "", options) }
    ($1 == s || $2 == s) && options == a {w = $3} END {print w}' "$wer_file")
  wer_args=()
  if [ -n "$wer" ]; then
    wer_args=(--wer "test-clean=$wer")
  else
    log "stage 6: no test-clean WER of $package_searcher with these search options in" \
      "$wer_file (stage 5 with --searchers including it and the same options writes one);" \
      "the package records none"
  fi
  timed export asr export-package --exp-dir "$exp_dir" --checkpoint "$weights" \
    --output-dir "$exp_dir/package" --overwrite --searcher "$package_searcher" \
    "${search_args[@]}" "${wer_args[@]}"
  log "reference:  $(head -n 1 "$trans" | cut -d' ' -f2-)"
  # the package's own search: $package_searcher with the options and LM it was exported with
  timed transcribe asr transcribe "$audio" --model "$exp_dir/package"
fi
if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  log "stage 7: export $exp_dir/package for sherpa-onnx, decode test-clean with it"
  timed "export onnx" sherpa_onnx_export "$exp_dir"  # sets onnx_dirs (egs/shared/sherpa_onnx.sh)
  for dir in "${onnx_dirs[@]}"; do
    for int8 in "" --int8; do
      # asr decode-onnx prints the path of each WER summary it writes. --blank-penalty 0: the
      # greedy search of stage 5, without the package's penalty (its beam search's) that the
      # export carries
      # shellcheck disable=SC2086
      summaries=$(timed "sherpa-onnx decode $(basename "$dir")${int8:+ int8}" asr decode-onnx \
        --onnx-dir "$dir" $int8 --manifest-dir data/fbank --parts test-clean --num-threads 2 \
        --blank-penalty 0)
      for summary in $summaries; do cat "$summary" >&2; done
    done
  done
fi
if [ $stage -le 8 ] && [ $stop_stage -ge 8 ] && [ "$biasing" -gt 0 ]; then
  log "stage 8: the biasing set ($biasing + $biasing sentences), beam search with and without hotwords"
  bias_dir=data/LibriSpeech/biasing
  timed "biasing set" asr synthesize --root data --biasing "$biasing" --num-jobs "$num_jobs" --no-progress
  timed "biasing manifests" asr prepare manifests --corpus-dir data/LibriSpeech \
    --output-dir data/manifests --parts dev-biasing test-biasing --num-jobs "$num_jobs"
  timed "biasing fbank" asr prepare fbank --manifest-dir data/manifests --output-dir data/fbank \
    --parts dev-biasing test-biasing --num-jobs "$fbank_jobs"
  set_search_args beam
  decode_biased() {  # decode_biased PART TAG HOTWORD_FILE|"": prints WER (and phrase recall)
    local hot=() summary
    [ -n "$3" ] && hot=("search.hotwords_file=$3" "search.hotwords_score=$hotwords_score")
    summary=$(asr decode --exp-dir "$exp_dir" --checkpoint "$weights" --searcher beam --parts "$1" \
      --tag "$2" "${search_args[@]}" "${hot[@]}")
    local phrases=() scores
    [ -f "$bias_dir/$1.phrases.tsv" ] && phrases=(--phrases "$bias_dir/$1.phrases.tsv")
    # an assignment of its own: inside log's argument a failing asr wer would not stop the script
    scores=$(asr wer "${summary/wer-summary-/recogs-}" "${phrases[@]}")
    log "$1 $2: $(echo "$scores" | tr '\n' ' ')"
  }
  for part in dev-biasing test-biasing; do
    cat "$bias_dir/$part.hotwords.txt" "$bias_dir/distractors.txt" > "$bias_dir/$part.list.txt"
    decode_biased "$part" plain ""
    decode_biased "$part" hotwords "$bias_dir/$part.list.txt"
  done
  decode_biased test-clean distractors "$bias_dir/distractors.txt"
fi
log "done (stages $stage..$stop_stage) in $(( $(date +%s) - started )) s"
