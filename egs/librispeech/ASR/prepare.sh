#!/usr/bin/env bash
# LibriSpeech data preparation (icefall-style stages). Run from anywhere; outputs go to
# egs/librispeech/ASR/{download,data}.
#
#   bash prepare.sh                                   # download + everything
#   bash prepare.sh --dl-dir /data/corpora            # an existing tree: /data/corpora/LibriSpeech
#   bash prepare.sh --stage 3 --stop-stage 3          # only fbank
#
# Stages:
#   0  download LibriSpeech (and MUSAN with --download-musan true) with lhotse; skipped when
#      $dl_dir/LibriSpeech already holds every part (and no lhotse extraction was left unfinished)
#      and $dl_dir/musan is complete. MUSAN is extracted into $dl_dir/.musan.partial and renamed
#      to $dl_dir/musan when whole, then $dl_dir/.musan_completed is written (lhotse's marker)
#   1  lhotse manifests of every part             -> data/manifests/librispeech_*_<part>.jsonl.gz
#   2  MUSAN manifests (skipped when $dl_dir/musan does not exist; a rerun leaves each one whose
#      content is the same untouched). A $dl_dir/musan beside $dl_dir/musan.tar.gz without
#      $dl_dir/.musan_completed is an extraction that was killed: refused (before stage 0) unless
#      stage 0 with --download-musan true extracts it again
#   3  fbank of every part, 0.9/1.1 speed-perturbed copies of the training parts -> data/fbank
#      and the training cuts in one random order (librispeech_cuts_train-<parts>-shuf.jsonl.gz);
#      a rerun keeps a part while its cuts, transcripts, feature options and audio match stage 1's
#      manifests and its audio files keep the size and time in its *.fingerprint.json (a part
#      stored without that record is kept when the rest matches, and records the files then;
#      a corpus moved with its one folder, each file with its path below it, size and time,
#      keeps its features)
#   4  MUSAN noise cuts with fbank (skipped without MUSAN) -> data/fbank/musan_cuts.jsonl.gz;
#      run.sh then trains with data.noise.cuts_path pointing at it; kept on a rerun while it is
#      newer than the MUSAN recordings manifest
#   5  BPE tokenizer on the training transcripts -> data/lang_bpe_${vocab_size}, and n-gram LMs
#      of the training transcripts (or --lm-text) for shallow fusion in the beam searches:
#      tokens (.../token_${lm_order}gram.arpa) and words (.../word_${word_lm_order}gram.arpa, whose
#      words are the lexicon of search.lm_unit=word). The estimator is pure Python: the 960 h
#      transcripts (~9.4M words) take minutes and several GB of memory; librispeech-lm-norm.txt
#      (800M words) is beyond it. A rerun keeps the BPE model and each LM while the text, the
#      tokenizer and the options they were made from are the same (their *.fingerprint.json),
#      and makes them again otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)

stage=0
stop_stage=100
dl_dir=download            # holds (or receives) LibriSpeech/ and musan/
full_libri=true            # false: train-clean-100 only
num_jobs=4
vocab_size=500
download_musan=false
musan_url=https://www.openslr.org/resources/17/musan.tar.gz  # or a mirror (e.g. us.openslr.org)
lm_order=4                 # token n-gram LM (stage 5)
word_lm_order=3            # word n-gram LM (stage 5)
lm_text=()                 # LM training texts, one --lm-text each (plain text, one sentence per
                           # line, gzip too, e.g. librispeech-lm-norm.txt.gz; or transcript
                           # dirs); default: the training parts' transcripts
work_dir=$HERE                  # where data/, exp/ (and download/) go; relative paths start here
skip_setup=false           # true: use the existing .venv without running tools/setup.sh

usage="Usage: $0 [--stage N] [--stop-stage N] [--dl-dir DIR] [--full-libri true|false]
  [--num-jobs N] [--vocab-size N] [--download-musan true|false] [--musan-url URL]
  [--lm-order N] [--word-lm-order N] [--lm-text F]... [--work-dir DIR] [--skip-setup true|false]"
. "$ROOT/egs/shared/parse_options.sh"
. "$ROOT/egs/shared/checks.sh"
work_dir=$(mkdir -p "$work_dir" && cd "$work_dir" && pwd)
cd "$work_dir"
corpus=$dl_dir/LibriSpeech

# Options whose bad value would otherwise stop the script only at a late stage, after hours
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  check_at_least 1 lm_order word_lm_order  # --vocab-size: by asr bpe, below
  check_paths_exist lm_text
fi
if [ $stage -le 3 ] && [ $stop_stage -ge 1 ]; then check_at_least 1 num_jobs; fi
# an extraction of $dl_dir/musan that did not finish: lhotse's archive is there, its marker not
musan_unfinished() { [ -f "$dl_dir/musan.tar.gz" ] && [ ! -f "$dl_dir/.musan_completed" ]; }
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && [ -d "$dl_dir/musan" ] && musan_unfinished &&
    { [ "$download_musan" != true ] || [ $stage -gt 0 ]; }; then
  echo "$0: $dl_dir/musan is an unfinished extraction of $dl_dir/musan.tar.gz (no" \
    "$dl_dir/.musan_completed): run stage 0 with --download-musan true to extract it again, or" \
    "remove $dl_dir/musan to prepare no MUSAN noise" >&2
  exit 2
fi

if [ "$skip_setup" != true ]; then
  bash "$ROOT/tools/setup.sh"
fi
VENV=${ASR_VENV:-$ROOT/.venv}
[[ $VENV = /* ]] || VENV=$ROOT/$VENV  # relative to the repository, as tools/setup.sh takes it
asr() { "$VENV/bin/asr" "$@"; }
lhotse() { "$VENV/bin/lhotse" "$@"; }
log() { echo "$(date '+%F %T') [librispeech prepare] $*" >&2; }

. "$HERE/train_parts.sh"
train_parts=$(librispeech_train_parts "$full_libri")
parts="$(librispeech_eval_parts) $train_parts"
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  # the BPE vocabulary of stage 5: against the training transcripts when no download comes first
  texts=()
  if [ $stage -ge 1 ]; then
    for part in $train_parts; do [ -d "$corpus/$part" ] && texts+=("$corpus/$part"); done
  fi
  check_vocab_size "${texts[@]}"
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  # A part is missing without its directory, or when lhotse's archive lies in $dl_dir but its
  # .completed marker does not: an extraction killed halfway (lhotse extracts it again).
  missing=()
  for part in $parts; do
    if [ ! -d "$corpus/$part" ] ||
        { [ -f "$dl_dir/$part.tar.gz" ] && [ ! -f "$corpus/$part/.completed" ]; }; then
      missing+=("$part")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "stage 0: $corpus holds every part; no download"
  else
    log "stage 0: download LibriSpeech parts ${missing[*]} into $dl_dir"
    mkdir -p "$dl_dir"
    # lhotse's API, not its CLI: `lhotse download librispeech` fetches all seven parts or
    # mini LibriSpeech, nothing in between
    "$VENV/bin/python" -c 'import sys
from lhotse.recipes import download_librispeech
download_librispeech(sys.argv[1], dataset_parts=sys.argv[2:])' "$dl_dir" "${missing[@]}"
  fi
  if [ "$download_musan" = true ] && { [ ! -d "$dl_dir/musan" ] || musan_unfinished; }; then
    log "stage 0: download MUSAN into $dl_dir (from $musan_url) and extract it"
    mkdir -p "$dl_dir"
    # An archive already here is extracted as it is (no download) unless it is cut short; the
    # extraction goes into a staging directory renamed to musan/ when whole, and lhotse's marker
    # is written last, so that a kill at any point leaves no musan/ that looks complete.
    "$VENV/bin/python" - "$dl_dir" "$musan_url" <<'EOF'
import logging
import shutil
import sys
import tarfile
import zlib
from pathlib import Path

from lhotse.utils import resumable_download, safe_extract

dl_dir, url = Path(sys.argv[1]), sys.argv[2]
archive, staging = dl_dir / "musan.tar.gz", dl_dir / ".musan.partial"


def extract() -> None:
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        safe_extract(tar, path=staging)
    if not (staging / "musan").is_dir():
        sys.exit(f"{archive} holds no musan/ directory")
    shutil.rmtree(dl_dir / "musan", ignore_errors=True)
    (staging / "musan").rename(dl_dir / "musan")
    shutil.rmtree(staging)
    (dl_dir / ".musan_completed").touch()


if archive.is_file():
    try:
        extract()
        sys.exit(0)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        logging.warning("%s is cut short (%s): resuming its download", archive, err)
resumable_download(url, filename=archive)
extract()
EOF
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "stage 1: manifests of $parts"
  asr prepare manifests --corpus-dir "$corpus" --output-dir data/manifests --parts $parts \
    --num-jobs "$num_jobs"
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  if [ -d "$dl_dir/musan" ]; then
    log "stage 2: MUSAN manifests"
    # lhotse rewrites every manifest: made in a scratch directory, a manifest replaces the one in
    # data/manifests only when its content changed, so that stage 4 keeps the MUSAN fbank made
    # from the same recordings (it compares their times)
    scratch=data/manifests/.musan.partial
    rm -rf "$scratch"
    lhotse prepare musan "$dl_dir/musan" "$scratch"
    for made in "$scratch"/musan_*.jsonl.gz; do
      kept=data/manifests/${made##*/}
      if [ -f "$kept" ] && cmp -s <(gzip -dc "$made") <(gzip -dc "$kept"); then
        continue
      fi
      mv "$made" "$kept"
    done
    rm -rf "$scratch"
  else
    log "stage 2: no $dl_dir/musan: skipping MUSAN"
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "stage 3: fbank (speed perturbation of $train_parts)"
  # --num-jobs processes (default 4, for LibriSpeech); one is faster for a small corpus, e.g. --num-jobs 1
  asr prepare fbank --manifest-dir data/manifests --output-dir data/fbank --parts $parts \
    --speed-perturb --perturb-parts $train_parts --num-jobs "$num_jobs"
  shuffled=$(librispeech_shuffled_cuts "$full_libri")
  log "stage 3: the training cuts of $train_parts (and their speed copies) in one random order"
  manifests=()
  for part in $train_parts; do manifests+=("data/fbank/librispeech_cuts_${part}.jsonl.gz"); done
  asr prepare shuffle --cuts "${manifests[@]}" --output "data/fbank/$shuffled"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  if [ -f data/manifests/musan_recordings_noise.jsonl.gz ]; then
    log "stage 4: MUSAN noise cuts with fbank (lhotse's default 80-bin Kaldi fbank)"
    # Made again when the recordings manifest is newer (stage 2 ran again); the manifest gets its
    # name only once the extraction is complete, so a killed one is not taken for done.
    if [ ! -f data/fbank/musan_cuts.jsonl.gz ] ||
        [ data/manifests/musan_recordings_noise.jsonl.gz -nt data/fbank/musan_cuts.jsonl.gz ]; then
      rm -rf data/fbank/musan_cuts.jsonl.gz data/fbank/musan_feats data/fbank/musan_cuts.partial.jsonl.gz
      mkdir -p data/fbank
      lhotse cut simple --force-eager -r data/manifests/musan_recordings_noise.jsonl.gz \
        data/manifests/musan_cuts_noise.jsonl.gz
      lhotse feat extract-cuts -j "$num_jobs" --storage-type lilcom_chunky \
        data/manifests/musan_cuts_noise.jsonl.gz data/fbank/musan_cuts.partial.jsonl.gz \
        data/fbank/musan_feats
      mv data/fbank/musan_cuts.partial.jsonl.gz data/fbank/musan_cuts.jsonl.gz
    else
      log "stage 4: data/fbank/musan_cuts.jsonl.gz is newer than the MUSAN recordings: kept"
    fi
  else
    log "stage 4: no MUSAN manifests: skipping"
  fi
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "stage 5: BPE with $vocab_size tokens on $train_parts"
  transcripts=()  # one argument per part: $dl_dir may hold spaces
  for part in $train_parts; do transcripts+=("$corpus/$part"); done
  lang=data/lang_bpe_${vocab_size}
  asr bpe --transcripts "${transcripts[@]}" --output-dir "$lang" --vocab-size "$vocab_size"
  [ ${#lm_text[@]} -gt 0 ] && transcripts=("${lm_text[@]}")
  log "stage 5: token ${lm_order}-gram and word ${word_lm_order}-gram LMs of ${transcripts[*]}"
  asr lm --transcripts "${transcripts[@]}" --tokenizer-dir "$lang" --order "$lm_order" \
    --output "$lang/token_${lm_order}gram.arpa"
  asr lm --unit word --transcripts "${transcripts[@]}" --order "$word_lm_order" \
    --output "$lang/word_${word_lm_order}gram.arpa"
fi
log "done (stages $stage..$stop_stage)"
