#!/usr/bin/env bash
# The digits recipe: connected-digit recognition on real speech (the Free Spoken Digit Dataset), on CPU, in minutes.
#
#   bash recipes/digits/run.sh [--fsdd DIR] [--stage N] [--stop-stage M] [--exp NAME] [--procs N] [--work-dir DIR]
#                              [--synth-count N] [section.key=value ...]
#
# Stages: 0 data (connected-digit utterances from FSDD; synthesized voices and non-speech), 1 CMVN statistics,
# 2 train, 3 calibrate (the edge floor and word latency into model.pt), then decode + score (greedy, and beam search
# with a digit lexicon), 4 each file alone (local/judge.py).
# Splits: train = takes 5-49 of five FSDD speakers (connected, and alone), espeak-ng and Piper voices, non-speech;
# dev = takes 0-4 of those speakers (FSDD's official test split), used to choose checkpoints; test = speaker theo,
# held out entirely; the held-out espeak-ng voices, theo and Asterisk's Allison choose settings; Piper at unheard
# rates and laptop-style files are reported.
# FSDD is looked for in --fsdd, then $FSDD_DIR, then ../shared/data/fsdd beside the repository; when none is found,
# the public v1.0.10 release is downloaded and its content verified.
# --procs N: training processes of one torch thread each, under torchrun (default 2 where the machine has 2 cores).
# Each process takes its share of every step's data.max_seconds, so that the training is the same with one process,
# only slower.
# --work-dir DIR: where data/ and exp/ go (default: this recipe's folder).
# --synth-count N: N utterances in each synthesized set instead of each set's own number (tests use a few).
# Stage 0 needs espeak-ng, sox and Asterisk's prompts (apt-get install espeak-ng sox asterisk-core-sounds-en-wav)
# and Piper (pip install -e '.[dev]', as make does).
set -euo pipefail
# One block, read whole before it runs: editing this file while it trains cannot change what the run does next.
{

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$recipe_dir/../.." && pwd)
work_dir="$recipe_dir"

stage=0
stop_stage=4
fsdd="${FSDD_DIR:-}"
exp=exp/digits
config="$recipe_dir/conf/train.yaml"
procs=$(( $(nproc) >= 2 ? 2 : 1 ))
synth_count=()
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --fsdd) fsdd=$(realpath -m "$2"); shift 2 ;;
    --exp) exp="exp/$2"; shift 2 ;;
    --config) config=$(realpath -m "$2"); shift 2 ;;
    --procs) procs="$2"; shift 2 ;;
    --work-dir) work_dir=$(realpath -m "$2"); shift 2 ;;
    --synth-count) synth_count=(--count "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$work_dir"
cd "$work_dir"

asr() { python -m asr "$@"; }
say() { printf '\n=== %s ===\n' "$*"; }

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  say "stage 0: connected-digit data from FSDD"
  if [ -z "$fsdd" ] && [ -d "$repo_dir/../shared/data/fsdd/recordings" ]; then
    fsdd="$repo_dir/../shared/data/fsdd/recordings"
  fi
  if [ -z "$fsdd" ]; then
    asr download fsdd --out-dir data/download
    fsdd=data/download
  fi
  asr prepare digits --fsdd "$fsdd" --out-dir data
  python -c 'import sys; from asr.data.digits import single_digit_manifests; single_digit_manifests(*sys.argv[1:])' \
    "$fsdd" data
  # Voices FSDD lacks (espeak-ng, Piper, Asterisk's Allison) and non-speech with empty transcripts, synthesized once
  # and cached (a stamp); judge/ holds the non-speech files and laptop-style recordings that only judge the model.
  python -m asr.data.synth --out data/synth --judge data/judge "${synth_count[@]}"
  # Training also hears the five speakers' lone digits as FSDD publishes them (takes 5-49), trimmed to the waveform
  # as a user's recording of one word may be.
  python -c 'import sys; from asr.data.manifest import read_manifest as r, write_manifest as w
heard = {u.speaker for u in r("data/train.jsonl")}
lone = [u for u in r("data/official_train.jsonl") if u.speaker in heard]
w(sys.argv[1], [u for path in sys.argv[2:] for u in r(path)] + lone)' data/train_all.jsonl data/train.jsonl \
    data/synth/espeak_train.jsonl data/synth/piper_train.jsonl data/synth/nonspeech_train.jsonl
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  say "stage 1: global CMVN statistics"
  asr cmvn --manifest data/train_all.jsonl --out data/cmvn.json --config "$config" --max-utterances 500 \
    "${overrides[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  say "stage 2: train ($procs process(es))"
  resume=()
  [ -d "$exp/checkpoints" ] && resume=(--resume)  # rerunning the stage continues an interrupted run
  launcher=(python -m asr)
  # One thread a process (train.threads); set here too, or torchrun warns that it chose it.
  [ "$procs" -gt 1 ] && launcher=(env OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node "$procs" -m asr)
  "${launcher[@]}" train --config "$config" --exp-dir "$exp" "${resume[@]}" \
    data.train=data/train_all.jsonl data.dev=data/dev.jsonl data.cmvn=data/cmvn.json "${overrides[@]}"
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  say "stage 3: calibrate, decode and score (dev: FSDD's official test takes, connected; the rest: voices never trained on)"
  # The edge floor (chosen on dev, the five speakers' official takes and held-out lone digits) and the word latency
  # (measured on dev) go into model.pt first, where transcription and greedy decoding find them: every figure from
  # here on is the model's as users run it.
  python "$recipe_dir/local/judge.py" --model "$exp/model.pt" --data data --calibrate-only
  echo "greedy decoding:"
  asr evaluate --model "$exp/model.pt" --out-dir "$exp/decode_greedy" --manifest data/dev.jsonl data/test.jsonl \
    data/official_test.jsonl data/synth/espeak_heldout.jsonl data/synth/piper_heldout.jsonl data/synth/asterisk.jsonl \
    data/judge/laptop.jsonl
  # A digit grammar, as the classic connected-digit systems use: a bigram LM over the training transcripts, whose
  # lexicon lets the beam search write only the ten digit words (no "SEVE" or "FINE").
  python -c 'import json, sys; [print(json.loads(line)["text"]) for line in open(sys.argv[1])]' data/train.jsonl \
    > "$exp/train_text.txt"
  python "$repo_dir/tools/build_lm.py" --text "$exp/train_text.txt" --order 2 --out "$exp/digits_bigram.arpa"
  echo "beam search with the digit lexicon and bigram:"
  asr evaluate --model "$exp/model.pt" --manifest data/dev.jsonl data/test.jsonl --out-dir "$exp/decode_lexicon" \
    --lm "$exp/digits_bigram.arpa"
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  say "stage 4: each file alone: non-speech, confidences, word times"
  python "$recipe_dir/local/judge.py" --model "$exp/model.pt" --data data --out "$exp/judge"
fi
exit
}
