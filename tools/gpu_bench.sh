#!/usr/bin/env bash
# Training throughput of the default LibriSpeech model on one GPU (bf16 and fp32) and the epoch times it implies.
# Needs only torch, torchaudio and this repository; no network. Finishes in under 5 minutes. Arguments go to
# tools/gpu_bench.py (see its --help); its report is printed and written to gpu_bench.json.
#
#   bash tools/gpu_bench.sh                          # one NVIDIA GPU
#   bash tools/gpu_bench.sh --device cpu --quick     # a dry run anywhere
#
# PYTHON picks the interpreter (default: the repository's .venv when there is one, else python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The hard limit: a run that would take longer is cut at 5 minutes rather than holding the machine.
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec timeout 295 "$PYTHON" "$repo/tools/gpu_bench.py" \
    --json-out gpu_bench.json "$@"
