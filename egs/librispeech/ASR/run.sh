#!/usr/bin/env bash
# LibriSpeech end to end (icefall-style stages): data preparation (prepare.sh), training one recipe
# of recipes/librispeech/, decoding with every searcher its heads support, checkpoint averaging and
# a model package. Run from anywhere; outputs go to egs/librispeech/ASR/{download,data,exp}.
#
#   bash run.sh --recipe conformer_transducer --nproc 4          # 4 GPUs (torchrun DDP)
#   bash run.sh --dl-dir /data/corpora --stage 1                 # existing LibriSpeech/, no download
#   bash run.sh --stage 7 --epoch 30 --avg 9                     # decode / average / export only
#   bash run.sh --stage 7 --val-best 5                           # the same, 5 best by valid loss
#
# Stages:
#   0-5  prepare.sh: download, manifests, MUSAN, fbank with speed perturbation, MUSAN fbank, BPE
#        and n-gram LMs (token and word)
#   6    train recipes/librispeech/${recipe}.yaml into exp/${recipe} (resumes after a kill; a
#        preemption, SIGTERM or SIGUSR1, exits 143 or 138, with --nproc above 1 too); with
#        --use-shar true the training cuts are first written as Lhotse Shar shards
#        (data/shar/train-<parts>, features as lilcom; kept on a rerun while the cuts are the
#        same) and training reads those sequentially
#   7    decode test-clean and test-other with every searcher of the model (epoch/avg averaging,
#        or with --val-best N the average of the N epochs of lowest validation loss);
#        a streaming recipe also at full context (results in <searcher>-full-context/); with
#        --lm-unit token|word the beam searches fuse that LM of stage 5 (--lm-weight; not
#        tuned on LibriSpeech: pick it on dev-clean)
#   8    average epochs (epoch-avg+1)..epoch into
#        exp/${recipe}/averaged-epoch-E-avg-N-use-averaged-model.safetensors (without the suffix
#        with --use-averaged-model false); with --val-best N the N epochs of lowest validation
#        loss into exp/${recipe}/averaged-val-best-N.safetensors (its metadata names the epochs)
#   9    export a model package exp/${recipe}/package from the averaged weights
#   10   export it for sherpa-onnx (exp/${recipe}/onnx, and exp/${recipe}/onnx-streaming when the
#        model streams and is an RNN-T transducer; fp32 and int8: each layout sherpa-onnx has for
#        it) and decode the test sets through sherpa-onnx (docs/ONNX.md)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)

stage=0
stop_stage=100
dl_dir=download
full_libri=true
num_jobs=4
vocab_size=500
download_musan=false
musan_url=https://www.openslr.org/resources/17/musan.tar.gz  # stage 0 with --download-musan true
lm_order=4                     # token n-gram LM (prepare.sh stage 5)
word_lm_order=3                # word n-gram LM (prepare.sh stage 5)
lm_text=()                     # their training texts, one --lm-text each (prepare.sh --lm-text);
                               # default: the training parts' transcripts
lm_unit=none                   # stage 7 fuses no LM, the token LM or the word LM (lexicon)
lm_weight=0.3                  # its weight in the beam searches
recipe=conformer_transducer    # recipes/librispeech/<recipe>.yaml
nproc=1                        # training processes (torchrun --nproc-per-node) on this node
epoch=30                       # last epoch decoded / averaged / exported
avg=9                          # number of epochs averaged
use_averaged_model=true        # average the running averages over the epochs' steps (icefall)
val_best=0                     # N > 0: stages 7-9 average the N epochs of lowest validation loss
                               # (WeNet's --val_best) instead of --epoch/--avg/--use-averaged-model
searchers=all                  # decode with these searchers ("all": every one the heads support)
test_parts="test-clean test-other"
train_args=""                  # extra `asr train` arguments, e.g. "--set train.max_epochs=2"
decode_args=""                 # extra `asr decode` arguments, e.g. "--set search.beam_size=8";
                               # both split into words as the shell splits them: quote a value
                               # with spaces inside, "--set 'data.train_cuts=[my dir/c.jsonl.gz]'"
work_dir=$HERE                  # where data/, exp/ (and download/) go; relative paths start here
skip_setup=false
use_shar=false                 # true: train from Lhotse Shar shards of the training cuts

usage="Usage: $0 [--stage N] [--stop-stage N] [--dl-dir DIR] [--full-libri true|false]
  [--num-jobs N] [--vocab-size N] [--download-musan true|false] [--musan-url URL]
  [--lm-order N] [--word-lm-order N] [--lm-text F]... [--lm-unit none|token|word] [--lm-weight W] [--recipe NAME] [--nproc N]
  [--epoch E] [--avg N] [--use-averaged-model true|false] [--val-best N] [--searchers \"A B\"|all]
  [--test-parts \"P Q\"] [--train-args \"...\"] [--decode-args \"...\"] [--work-dir DIR] [--skip-setup true|false]
  [--use-shar true|false]
--train-args / --decode-args are split into words as the shell splits them: quote a value with
  spaces inside, e.g. --train-args \"--set 'data.train_cuts=[my data/cuts.jsonl.gz]'\""
. "$ROOT/egs/shared/parse_options.sh"
. "$ROOT/egs/shared/sherpa_onnx.sh"
. "$ROOT/egs/shared/checks.sh"
. "$HERE/train_parts.sh"
option_words train_args train_words
option_words decode_args decode_words
work_dir=$(mkdir -p "$work_dir" && cd "$work_dir" && pwd)
cd "$work_dir"

log() { echo "$(date '+%F %T') [librispeech] $*" >&2; }
config="$ROOT/recipes/librispeech/${recipe}.yaml"
case "$lm_unit" in none|token|word) ;; *)
  echo "$0: --lm-unit must be none, token or word, got $lm_unit" >&2; exit 2 ;; esac
if [ ! -f "$config" ]; then
  echo "$0: no recipe $config (see recipes/librispeech/README.md)" >&2
  exit 2
fi
# what stages 7-10 would be the first to read, after training: checked now
if [ $stage -le 9 ] && [ $stop_stage -ge 7 ]; then
  check_at_least 0 val_best
  if [ "$val_best" -eq 0 ]; then  # --epoch/--avg are not used with --val-best
    check_at_least 1 epoch avg
    if [ "$avg" -gt "$epoch" ]; then
      echo "$0: --avg $avg averages more epochs than --epoch $epoch has" >&2
      exit 2
    fi
  fi
fi
[ $stage -le 7 ] && [ $stop_stage -ge 7 ] && check_not_empty searchers
if [ $stage -le 10 ] && [ $stop_stage -ge 7 ]; then
  check_not_empty test_parts
  check_one_of test_parts $(librispeech_eval_parts)
fi
[ $stage -le 6 ] && [ $stop_stage -ge 6 ] && check_at_least 1 nproc
# prepare.sh checks its own options again (also run on its own)
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  check_at_least 1 lm_order word_lm_order
  check_paths_exist lm_text
fi
exp_dir=exp/$recipe
lm_args=()  # stage 7's LM (--lm-unit), and the prepare.sh options that make it at stage 5
if [ "$lm_unit" != none ]; then
  lm_path=data/lang_bpe_${vocab_size}/token_${lm_order}gram.arpa
  lm_made_by="stage 5 (prepare.sh's LMs, with --vocab-size $vocab_size --lm-order $lm_order)"
  if [ "$lm_unit" = word ]; then
    lm_path=data/lang_bpe_${vocab_size}/word_${word_lm_order}gram.arpa
    lm_made_by="stage 5 (prepare.sh's LMs, with --vocab-size $vocab_size --word-lm-order $word_lm_order)"
  fi
  lm_args=(--set "search.lm_path=$lm_path" "search.lm_unit=$lm_unit" "search.lm_weight=$lm_weight")
  # a run that starts at stage 7 fuses the LM stage 5 made (from stage 6 on, `asr train
  # --check-only` checks it below); an LM path of --decode-args' own is asr decode's to check
  if [ $stage -eq 7 ] && [ $stop_stage -ge 7 ] && [[ "${decode_words[*]}" != *search.lm_path=* ]]; then
    check_made "$lm_made_by" "$lm_path"
  fi
fi
averaged=()
[ "$use_averaged_model" = true ] && averaged=(--use-averaged-model)
# the weights stages 7-9 use (asr average / decode / export-package options), and what stage 8
# writes and stage 9 packages: the weights of exactly these settings
if [ "$val_best" -gt 0 ]; then
  selection=(--val-best "$val_best")
  selection_words="the $val_best epochs of lowest validation loss"
  averaged_weights=$exp_dir/averaged-val-best-$val_best.safetensors
  same_settings="--val-best"
else
  selection=(--epoch "$epoch" --avg "$avg" "${averaged[@]}")
  selection_words="epochs $(( epoch - avg + 1 ))..$epoch"
  averaged_weights=$exp_dir/averaged-epoch-$epoch-avg-$avg${averaged[*]:+-use-averaged-model}.safetensors
  same_settings="--epoch, --avg and --use-averaged-model"
fi
# stage 7's `asr decode` arguments (but --exp-dir), also checked before the first stage below
read -ra searcher_names <<< "$searchers"
read -ra parts_to_test <<< "$test_parts"
decode_line=(--searcher "${searcher_names[@]}" "${selection[@]}"
  --parts "${parts_to_test[@]}" "${lm_args[@]}" "${decode_words[@]}")

if [ "$skip_setup" != true ]; then
  bash "$ROOT/tools/setup.sh"
fi
VENV=${ASR_VENV:-$ROOT/.venv}
[[ $VENV = /* ]] || VENV=$ROOT/$VENV  # relative to the repository, as tools/setup.sh takes it
asr() { "$VENV/bin/asr" "$@"; }
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  # The recipe with --train-args, and stage 7's decode command line (searchers, LM options,
  # --decode-args) checked as stage 6 and 7 will take them (a misspelt key, option or searcher,
  # one the recipe's heads lack, a bad value), before the data preparation; stage 7 alone checks
  # them against the trained model at once. Its test sets: before the data stages, --parts of
  # --decode-args among those prepare.sh makes (but in a --manifest-dir of the user's own);
  # from stage 6 on, their manifests there, and the LM of --lm-unit (named with stage 5).
  check=(--set "tokenizer_dir=data/lang_bpe_${vocab_size}")
  # from stage 6 on, the tokenizer of stage 5 must be there already (training loads it)
  [ $stage -ge 6 ] && check+=(--tokenizer-made-by "stage 5 (BPE, --vocab-size $vocab_size)")
  if [ $stop_stage -ge 7 ]; then
    for arg in "${decode_line[@]}"; do check+=("--decode-arg=$arg"); done
    # shellcheck disable=SC2046  # the part names: words without spaces
    check+=(--decode-prepared-parts $(librispeech_eval_parts))
    if [ $stage -ge 6 ]; then
      check+=(--decode-data-ready)
      # a missing LM of --lm-unit (not one of --decode-args' own) is named with its stage
      [ "$lm_unit" != none ] && check+=(--decode-lm-made-by "$lm_path" "$lm_made_by")
    fi
  fi
  check_recipe "--train-args / --searchers / LM options / --decode-args" "${check[@]}"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 0 ]; then
  lm_text_args=()
  for text in "${lm_text[@]}"; do lm_text_args+=(--lm-text "$text"); done
  bash "$HERE/prepare.sh" --work-dir "$work_dir" --stage "$stage" --stop-stage "$(( stop_stage < 5 ? stop_stage : 5 ))" \
    --dl-dir "$dl_dir" --full-libri "$full_libri" --num-jobs "$num_jobs" \
    --vocab-size "$vocab_size" --download-musan "$download_musan" --musan-url "$musan_url" \
    --skip-setup true \
    --lm-order "$lm_order" --word-lm-order "$word_lm_order" "${lm_text_args[@]}"
fi
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "stage 6: train $recipe on $nproc process(es)"
  shuffled=$(librispeech_shuffled_cuts "$full_libri")
  sets="tokenizer_dir=data/lang_bpe_${vocab_size} data.train_cuts=[$shuffled]"
  [ -f data/fbank/musan_cuts.jsonl.gz ] && sets="$sets data.noise.cuts_path=data/fbank/musan_cuts.jsonl.gz"
  if [ "$use_shar" = true ]; then
    shar_parts=$(librispeech_train_parts "$full_libri")
    shar_dir=data/shar/train-$(echo $shar_parts | sed 's/train-//g; s/ /+/g')
    log "stage 6: the training cuts of $shar_parts as Lhotse Shar shards -> $shar_dir"
    # from the shuffled manifest, so that every shard mixes the parts and speeds; asr shar keeps
    # shards made from this very manifest and feature data (its fingerprint: the manifest's
    # sha256, the archives' size and time) and writes them again when they changed
    asr shar --cuts "data/fbank/$shuffled" --output-dir "$shar_dir" --num-jobs "$num_jobs"
    sets="$sets data.train_shar_dirs=[$shar_dir]"
  fi
  launcher=("$VENV/bin/asr")
  if [ "$nproc" -gt 1 ]; then
    # torchrun passes on to its processes only the signals named here, and dies of the others:
    # its default set and SIGUSR1, SLURM's usual notice before the time limit (--signal=USR1@90)
    launcher=("$VENV/bin/torchrun" --standalone --nproc-per-node "$nproc"
      --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 -m asr.cli.main)
  fi
  # train.log's checksum before the run: a different one after it means this run logged. Not
  # its time: on NFS a file's mtime comes from the server's clock, not from ours
  train_log=$exp_dir/train.log
  log_before=$( { [ -f "$train_log" ] && cksum < "$train_log"; } || true)
  rc=0
  # shellcheck disable=SC2086  # $sets: words without spaces
  "${launcher[@]}" train --config "$config" --exp-dir "$exp_dir" --set $sets "${train_words[@]}" || rc=$?
  if [ $rc -ne 0 ] && [ "$nproc" -gt 1 ] && [ -f "$train_log" ] \
      && [ "$(cksum < "$train_log")" != "$log_before" ]; then
    # torchrun exits 1 whatever ended its processes: a preemption is the last line this run's
    # training logged ("preempted by SIGUSR1 at step N: ...; exiting with 138"), whose status
    # (143 SIGTERM, 138 SIGUSR1) run.sh exits with, as `asr train` does on its own
    preempted=$(tail -n 1 "$train_log" | sed -n 's/.* preempted by SIG[A-Z0-9]* at step [0-9]*: .*; exiting with \([0-9][0-9]*\)$/\1/p')
    if [ -n "$preempted" ]; then
      log "stage 6: preempted (exit status $preempted, see $train_log); run stage 6 again to resume"
      rc=$preempted
    fi
  fi
  [ $rc -eq 0 ] || exit $rc
fi

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  # the whole line: --decode-args may override what the options above chose (e.g. --parts)
  log "stage 7: decode (LM: $lm_unit): asr decode --exp-dir $exp_dir ${decode_line[*]}"
  summaries=$(asr decode --exp-dir "$exp_dir" "${decode_line[@]}")
  # an assignment of its own, so that a failure to read the config stops the script (as an
  # `if` condition it read as "not streaming" and dropped the full-context decode silently)
  mode=$("$VENV/bin/python" -c "import sys; from asr.experiment import load_experiment_config as c
print('streaming' if c(sys.argv[1]).encoder.chunk_size > 0 else 'offline')" "$exp_dir")
  if [ "$mode" = streaming ]; then
    # a streaming recipe: also at full context (icefall reports both modes)
    summaries+=" "$(asr decode --exp-dir "$exp_dir" "${decode_line[@]}" --tag full-context \
      --set encoder.chunk_size=0 encoder.left_chunks=-1)
  fi
  for summary in $summaries; do
    echo "$summary: $(sed -n 2p "$summary")" >&2
  done
fi

if [ $stage -le 8 ] && [ $stop_stage -ge 8 ]; then
  log "stage 8: average $selection_words"
  asr average --exp-dir "$exp_dir" "${selection[@]}" --output "$averaged_weights"
fi

if [ $stage -le 9 ] && [ $stop_stage -ge 9 ]; then
  log "stage 9: export a model package"
  if [ ! -f "$averaged_weights" ]; then
    echo "$0: no $averaged_weights: run stage 8 with the same $same_settings first" >&2
    exit 1
  fi
  asr export-package --exp-dir "$exp_dir" --checkpoint "$averaged_weights" \
    --output-dir "$exp_dir/package" --overwrite
fi
if [ $stage -le 10 ] && [ $stop_stage -ge 10 ]; then
  log "stage 10: export $exp_dir/package for sherpa-onnx and decode $test_parts with it"
  sherpa_onnx_export "$exp_dir"  # sets onnx_dirs (egs/shared/sherpa_onnx.sh)
  for dir in "${onnx_dirs[@]}"; do
    for int8 in "" --int8; do
      # into a variable first: a failure inside `for x in $(...)` would not stop the script
      # shellcheck disable=SC2086
      summaries=$(asr decode-onnx --onnx-dir "$dir" $int8 --manifest-dir data/fbank \
        --parts $test_parts --num-threads 2)
      for summary in $summaries; do
        echo "$summary: $(sed -n 2p "$summary")" >&2
      done
    done
  done
fi
log "done (stages $stage..$stop_stage)"
