#!/usr/bin/env bash
# Leave one of the five training speakers out: a way to judge a setting on a voice that training never heard
# without touching the test speaker (theo), whose WER is reported and never used for a decision. Trains on the
# training takes of the other four speakers and scores on all of the held-out speaker's takes (660 utterances),
# which also serve as the trainer's validation set. Each `--drop S` leaves one more speaker out of training, unscored:
# how the held-out speaker's WER depends on which voices training hears.
#
#   bash recipes/digits/local/hold_out.sh --speaker lucas --exp loso_lucas [--drop SPEAKER ...] [--work-dir DIR]
#                                         [--config C.yaml] [section.key=value ...]
#
# Needs run.sh's stage 0 (data/) in the work directory. Trains one process of one thread, so that two settings can
# train side by side on two cores and meet the same machine load.
set -euo pipefail
# One block, read whole before it runs: editing this file while it trains cannot change what the run does next.
{

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work_dir="$recipe_dir"
config="$recipe_dir/conf/train.yaml"
speaker=""
dropped=""
exp=""
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --speaker) speaker="$2"; shift 2 ;;
    --exp) exp="exp/$2"; shift 2 ;;
    --drop) dropped="$dropped,$2"; shift 2 ;;
    --config) config=$(realpath -m "$2"); shift 2 ;;
    --work-dir) work_dir=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "hold_out.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$speaker" ] || { echo "hold_out.sh: --speaker is required" >&2; exit 2; }
name="hold_out_$speaker${dropped//,/_without_}"  # e.g. hold_out_lucas_without_nicolas
exp="${exp:-exp/$name}"
cd "$work_dir"
[ -f data/train.jsonl ] || { echo "hold_out.sh: $work_dir/data/train.jsonl missing: run run.sh --stop-stage 0 first" >&2; exit 2; }

split="data/$name"
python - "$speaker" "$split" "$dropped" <<'PY'
import sys
from asr.data.manifest import read_manifest, write_manifest
speaker, split, dropped = sys.argv[1], sys.argv[2], set(filter(None, sys.argv[3].split(",")))
utterances = {name: read_manifest(f"data/{name}.jsonl") for name in ("train", "dev")}
speakers = sorted({utterance.speaker for utterance in utterances["train"]})
for name in [speaker, *sorted(dropped)]:
    if name not in speakers:
        sys.exit(f"hold_out.sh: {name!r} is not a training speaker ({', '.join(speakers)})")
trained = set(speakers) - dropped - {speaker}
if not trained:
    sys.exit("hold_out.sh: no speaker is left to train on")
kept = [utterance for utterance in utterances["train"] if utterance.speaker in trained]
held = [utterance for name in ("train", "dev") for utterance in utterances[name] if utterance.speaker == speaker]
# Written atomically, so a second run started beside this one never reads half a file; audio stays in data/wav.
write_manifest(f"{split}/train.jsonl", kept, relative_to="data")
write_manifest(f"{split}/held_out.jsonl", held, relative_to="data")
print(f"{split}: train {len(kept)} utterances of {len(trained)} speakers ({', '.join(sorted(trained))}), "
      f"held out {len(held)} of {speaker}")
PY

# The held-out speaker is also the validation set, so the best checkpoint by its WER would flatter the score:
# keep_best=0 makes model.pt the last weights.
OMP_NUM_THREADS=1 python -m asr train --config "$config" --exp-dir "$exp" data.train="$split/train.jsonl" \
  data.dev="$split/held_out.jsonl" train.threads=1 train.keep_best=0 "${overrides[@]}"
python -m asr evaluate --model "$exp/model.pt" --manifest "$split/held_out.jsonl" --out-dir "$exp/decode_held_out"
exit
}
