#!/usr/bin/env bash
# Training throughput of each LibriSpeech config's own model (train_100, train_460, train_960) on one GPU: the
# toolkit's model on synthetic batches, the same layers as one bidirectional cuDNN GRU call on packed input, and the
# whole input path from FLAC files through the data loader. Needs torch, torchaudio, PyYAML and this repository (the
# loader variant also soundfile and soxr); no network. Fits in one 10-minute call: each measurement is a fixed
# number of steps, and none starts after --budget-seconds (500). Arguments go to tools/gpu_bench.py (see --help);
# its report is printed and written to gpu_bench.json.
#
#   bash tools/gpu_bench.sh                               # one NVIDIA GPU
#   bash tools/gpu_bench.sh --flac-tree /tmp/synth        # the loader on synth_librispeech.py's speech
#   bash tools/gpu_bench.sh --smoke                       # every code path on the CPU, tiny models
#
# PYTHON picks the interpreter (default: the repository's .venv when there is one, else python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The hard limit: a run that would take longer is cut short of 10 minutes rather than holding the machine.
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec timeout 580 "$PYTHON" "$repo/tools/gpu_bench.py" \
    --json-out gpu_bench.json "$@"
