#!/usr/bin/env bash
# LibriSpeech: a bidirectional-GRU CTC model trained on the subsets you choose, with WER on the dev and test sets,
# greedy and with n-gram language models.
#
#   bash recipes/librispeech/run.sh [--data-root DIR] [--config NAME|FILE] [--stage N] [--stop-stage M] [options]
#                                   [section.key=value ...]
#
# Stages (each can be rerun on its own; rerunning one gives the same result, and training resumes where it stopped):
#   0 download   the subsets from OpenSLR resource 12, sha256-verified, resumable; skipped with --data-root
#   1 prepare    data/manifests/<subset>.jsonl for every subset used
#   2 tokenizer  BPE or characters, as the config says, from the training transcripts
#   3 cmvn       global mean and variance of the log-mel features of the training set
#   4 train      exp/<name>/ (under torchrun with --gpus N > 1)
#   5 average    the best checkpoints by dev WER, averaged: exp/<name>/avg.pt
#   6 lm         the official LibriSpeech LMs (OpenSLR resource 11), or a 3-gram of --lm-text (dev and test
#                transcripts removed from it)
#   7 decode     greedy, then beam search with each LM, loaded once for both steps: LM weight and word score tuned
#                on the dev sets only (at --tune-beam), then the dev and test sets decoded with them (at --beam)
#                and scored (exp/<name>/decode_*/<set>/{hyp.txt,ref.txt,wer.json,per_utt.tsv})
#   8 report     exp/<name>/report.md (training and WER tables) and exp/<name>/curves.png
#
# Options:
#   --data-root DIR      an existing LibriSpeech tree (the folder holding LibriSpeech/, or LibriSpeech/ itself)
#   --download-dir DIR   where stage 0 downloads and extracts (default: data/download)
#   --mirror URL         an OpenSLR mirror (default https://www.openslr.org/resources; also https://us.openslr.org/
#                        resources, https://openslr.elda.org/resources, https://openslr.magicdatatech.com/resources)
#   --keep-archives      keep each subset's .tar.gz after its extraction (default: deleted once extracted)
#   --checksums FILE     JSON {subset or LM file name: sha256} overriding the published checksums (a private mirror)
#   --config NAME|FILE   train_100 (default), train_460, train_960, debug, or a YAML file
#   --train-sets "..."   training subsets (default: those the config's name says; debug: train-clean-100)
#   --dev-sets "..."     (default "dev-clean dev-other")   --test-sets "..."   (default "test-clean test-other")
#   --exp NAME           experiment folder exp/NAME (default: the config's name)
#   --gpus N             train on N GPUs of this machine (of each machine with --nnodes), one torchrun process each;
#                        refused where fewer GPUs exist (default: one process, on a GPU where there is one)
#   --cpu-procs N        train with N CPU processes (gloo) instead: no GPU needed (checks, tests, CPU clusters)
#   --nnodes N --node-rank K --master-addr HOST --master-port PORT
#                        train on N machines: run.sh runs on each (the same arguments but K = 0..N-1; every stage but
#                        4 on node 0 alone, see README.md); HOST:PORT is node 0's address and a free port there
#                        (default 29500); local/train.sbatch does it under SLURM
#   --lms "..."          official LMs to decode with (default "3-gram.pruned.1e-7 4-gram"; "" for none)
#   --lm-text FILE       instead: a --lm-order (default 3) n-gram LM built from this text, one sentence a line
#   --lm-weights "..."   --word-scores "..."   the tuning grid (default "0.25 0.5 1 1.5 2 2.5 3" and "-2 -1 0 1 2";
#                        a warning says when the best point lies on the grid's edge)
#   --tune-utterances N  utterances of each dev set the grid is decoded on (default 400; 0: all)
#   --tune-beam N        beam of the grid search (default 50)   --beam N   beam of the final decoding (default 500)
#   --work-dir DIR       where data/ and exp/ go (default: this recipe's folder)
# Bash 4.0 or newer. An empty array is expanded as ${a[@]+"${a[@]}"}: bash before 4.4 calls a bare "${a[@]}" of an
# empty array unbound under set -u. The arrays left bare are never empty (train, dev sets, LM grid).
set -euo pipefail
# One block, read whole before it runs: editing this file while it trains cannot change what the run does next.
{

recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(cd "$recipe_dir/../.." && pwd)

stage=0
stop_stage=8
data_root=
download_dir=data/download
mirror=https://www.openslr.org/resources
checksums=
keep_archives=
config=train_100
train_sets=
dev_sets="dev-clean dev-other"
test_sets="test-clean test-other"
exp_name=
gpus=
cpu_procs=0
nnodes=1
node_rank=0
master_addr=
master_port=29500
lms="3-gram.pruned.1e-7 4-gram"
lm_text=
lm_order=3
lm_weights="0.25 0.5 1 1.5 2 2.5 3"
word_scores="-2 -1 0 1 2"
tune_utterances=400
tune_beam=50
beam=500
work_dir="$recipe_dir"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift 2 ;;
    --stop-stage) stop_stage="$2"; shift 2 ;;
    --data-root) data_root=$(realpath "$2"); shift 2 ;;
    --download-dir) download_dir=$(realpath -m "$2"); shift 2 ;;
    --mirror) mirror="${2%/}"; shift 2 ;;
    --checksums) checksums=$(realpath "$2"); shift 2 ;;
    --keep-archives) keep_archives=--keep-archives; shift ;;
    --config) config="$2"; shift 2 ;;
    --train-sets) train_sets="$2"; shift 2 ;;
    --dev-sets) dev_sets="$2"; shift 2 ;;
    --test-sets) test_sets="$2"; shift 2 ;;
    --exp) exp_name="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --cpu-procs) cpu_procs="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --master-addr) master_addr="$2"; shift 2 ;;
    --master-port) master_port="$2"; shift 2 ;;
    --lms) lms="$2"; shift 2 ;;
    --lm-text) lm_text=$(realpath "$2"); shift 2 ;;
    --lm-order) lm_order="$2"; shift 2 ;;
    --lm-weights) lm_weights="$2"; shift 2 ;;
    --word-scores) word_scores="$2"; shift 2 ;;
    --tune-utterances) tune_utterances="$2"; shift 2 ;;
    --tune-beam) tune_beam="$2"; shift 2 ;;
    --beam) beam="$2"; shift 2 ;;
    --work-dir) work_dir=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$nnodes" -gt 1 ] && [ -z "$master_addr" ]; then
  echo "run.sh: --nnodes $nnodes needs --master-addr, the address of node 0 (where --node-rank is 0)" >&2; exit 2
fi

# --config names a file, or a config of conf/ by its name.
if [ -f "$config" ]; then
  config=$(realpath "$config")
elif [ -f "$recipe_dir/conf/$config.yaml" ]; then
  config="$recipe_dir/conf/$config.yaml"
else
  echo "run.sh: no config $config (neither a file nor conf/$config.yaml)" >&2; exit 2
fi
config_name=$(basename "$config" .yaml)
if [ -z "$train_sets" ]; then
  case "$config_name" in
    train_460) train_sets="train-clean-100 train-clean-360" ;;
    train_960) train_sets="train-clean-100 train-clean-360 train-other-500" ;;
    *) train_sets="train-clean-100" ;;
  esac
fi
exp="exp/${exp_name:-$config_name}"
read -ra train_list <<< "$train_sets"
read -ra dev_list <<< "$dev_sets"
read -ra test_list <<< "$test_sets"
read -ra lm_weight_list <<< "$lm_weights"
read -ra word_score_list <<< "$word_scores"
all_sets=()  # every subset named, each once, in order
for set in "${train_list[@]}" "${dev_list[@]}" ${test_list[@]+"${test_list[@]}"}; do
  [[ " ${all_sets[*]} " == *" $set "* ]] || all_sets+=("$set")
done

mkdir -p "$work_dir"
cd "$work_dir"
export PYTHONPATH="$repo_dir${PYTHONPATH:+:$PYTHONPATH}"  # the toolkit of this checkout, installed or not

asr() { python -m asr "$@"; }
say() { printf '\n=== %s ===\n' "$*"; }
manifest() { echo "data/manifests/$1.jsonl"; }

# Refuse --gpus N where this machine has fewer than N GPUs: better at once than a crash in each process.
check_gpus() {
  local found
  found=$(python -c 'import torch; print(torch.cuda.device_count())')
  if [ "$found" -lt "$1" ]; then
    echo "run.sh: --gpus $1, but this machine has $found GPU(s) (torch.cuda.device_count()); ask for at most" \
      "$found, or train on CPU processes with --cpu-procs N" >&2
    exit 2
  fi
}

# The manifest of a list of subsets: a single subset's own, or data/manifests/<a>+<b>.jsonl joining them.
joined_manifest() {
  local -a sets
  read -ra sets <<< "$1"
  local out
  out=$(manifest "$(IFS=+; echo "${sets[*]}")")
  if [ "${#sets[@]}" -gt 1 ]; then
    local inputs=()
    for set in "${sets[@]}"; do inputs+=("$(manifest "$set")"); done
    python -c 'import sys
from asr.data.manifest import read_manifest, write_manifest
write_manifest(sys.argv[1], [u for path in sys.argv[2:] for u in read_manifest(path)])' "$out" "${inputs[@]}"
  fi
  echo "$out"
}

# The tokenizer the config asks for (command-line overrides applied): sets tokenizer_kind, vocab_size, model_type
# and tokenizer_file, the file stage 2 writes and stage 4 trains with.
read_tokenizer_settings() {
  local settings
  settings=$(python -c 'import sys
from asr.config import load_config
tokenizer = load_config(sys.argv[1], sys.argv[2:]).tokenizer
print(tokenizer.kind, tokenizer.vocab_size, tokenizer.model_type)' "$config" ${overrides[@]+"${overrides[@]}"})
  read -r tokenizer_kind vocab_size model_type <<< "$settings"
  tokenizer_file="$bundle/tokenizer_char.json"
  if [ "$tokenizer_kind" = bpe ]; then tokenizer_file="$bundle/tokenizer_${model_type}${vocab_size}.json"; fi
}

# The ARPA files stage 6 makes and stage 7 decodes with.
lm_files() {
  if [ -n "$lm_text" ]; then
    echo "data/lm/$(basename "${lm_text%.*}").${lm_order}gram.arpa"
  else
    for name in $lms; do echo "data/lm/$name.arpa"; done
  fi
}

train_tag=$(IFS=+; echo "${train_list[*]}")
bundle="data/$train_tag"  # what the training set's stages make: tokenizer and CMVN statistics

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  if [ -n "$data_root" ]; then
    say "stage 0: download skipped, the corpus is in $data_root"
  else
    say "stage 0: download ${all_sets[*]} from $mirror/12"
    asr download librispeech --out-dir "$download_dir" --subsets "${all_sets[@]}" --base-url "$mirror/12" \
      ${checksums:+--checksums "$checksums"} $keep_archives
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  say "stage 1: manifests of ${all_sets[*]}"
  asr prepare librispeech --root "${data_root:-$download_dir}" --subsets "${all_sets[@]}" --out-dir data/manifests
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  read_tokenizer_settings
  say "stage 2: $tokenizer_kind tokenizer of the $train_tag transcripts"
  mkdir -p "$bundle"
  asr tokenizer --manifest "$(joined_manifest "$train_sets")" --kind "$tokenizer_kind" --vocab-size "$vocab_size" \
    --model-type "$model_type" --out "$tokenizer_file"
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  say "stage 3: global CMVN statistics of $train_tag"
  asr cmvn --manifest "$(joined_manifest "$train_sets")" --out "$bundle/cmvn.json" --config "$config" \
    --max-utterances 2000 ${overrides[@]+"${overrides[@]}"}
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  read_tokenizer_settings
  options=()
  if [ "$cpu_procs" -gt 0 ]; then
    procs=$cpu_procs device=cpu
    options+=(--device cpu)
  elif [ -n "$gpus" ]; then
    procs=$gpus device=GPU
    check_gpus "$gpus"
  else
    procs=1 device="GPU or CPU"  # one process, on a GPU where there is one
  fi
  say "stage 4: train $exp on $train_tag ($nnodes node(s) × $procs $device process(es))"
  launcher=(python -m asr)
  if [ "$nnodes" -gt 1 ]; then
    # Static rendezvous at node 0: every node's torchrun waits there for the others, then ranks are node-major.
    launcher=(torchrun --nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$master_addr"
              --master-port "$master_port" --nproc-per-node "$procs" -m asr)
  elif [ "$procs" -gt 1 ]; then
    launcher=(torchrun --standalone --nproc-per-node "$procs" -m asr)
  fi
  [ -d "$exp/checkpoints" ] && options+=(--resume)  # rerunning the stage continues an interrupted run
  [ -t 2 ] || options+=(--quiet)  # no progress bars in a log file
  "${launcher[@]}" train --config "$config" --exp-dir "$exp" ${options[@]+"${options[@]}"} \
    data.train="$(joined_manifest "$train_sets")" data.dev="$(joined_manifest "$dev_sets")" \
    data.cmvn="$bundle/cmvn.json" tokenizer.path="$tokenizer_file" ${overrides[@]+"${overrides[@]}"}
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  say "stage 5: average the best checkpoints by dev WER"
  asr average --exp-dir "$exp" --best --num 3 --out "$exp/avg.pt"
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  mkdir -p data/lm
  if [ -n "$lm_text" ]; then
    say "stage 6: a $lm_order-gram LM of $lm_text, without the dev and test transcripts"
    dev_and_test=()
    for set in "${dev_list[@]}" ${test_list[@]+"${test_list[@]}"}; do dev_and_test+=("$(manifest "$set")"); done
    lm=$(lm_files)
    python "$recipe_dir/local/lm_text.py" --text "$lm_text" --exclude "${dev_and_test[@]}" --out "${lm%.arpa}.txt"
    python "$repo_dir/tools/build_lm.py" --text "${lm%.arpa}.txt" --order "$lm_order" --out "$lm"
  elif [ -n "$lms" ]; then
    say "stage 6: the official LibriSpeech LMs $lms from $mirror/11"
    names=()
    for name in $lms; do names+=("$name.arpa.gz"); done
    asr download librispeech-lm --out-dir data/lm --files "${names[@]}" --base-url "$mirror/11" \
      ${checksums:+--checksums "$checksums"}
  fi
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  model="$exp/avg.pt"
  [ -f "$model" ] || model="$exp/model.pt"
  dev_manifests=() decoded=()  # the dev sets, and the dev and test sets
  for set in "${dev_list[@]}"; do dev_manifests+=("$(manifest "$set")"); done
  for set in "${dev_list[@]}" ${test_list[@]+"${test_list[@]}"}; do decoded+=("$(manifest "$set")"); done
  say "stage 7: greedy decoding of $dev_sets $test_sets with $model"
  asr evaluate --model "$model" --manifest "${decoded[@]}" --out-dir "$exp/decode_greedy"
  for lm in $(lm_files); do
    name=$(basename "$lm" .arpa)
    say "stage 7: $name: LM weight and word score tuned on $dev_sets, then $dev_sets $test_sets decoded"
    chosen=$(python "$recipe_dir/local/tune_lm.py" --model "$model" --lm "$lm" --dev "${dev_manifests[@]}" \
      --lm-weights "${lm_weight_list[@]}" --word-scores "${word_score_list[@]}" --max-utterances "$tune_utterances" \
      --tune-beam "$tune_beam" --beam-size "$beam" --decode "${decoded[@]}" \
      --out "$exp/decode_lm_$name")
    echo "$name: LM weight and word score chosen: $chosen"
  done
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  say "stage 8: report"
  asr report "$exp"
fi
exit
}
