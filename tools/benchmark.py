"""Every speed figure of the toolkit in one command: training throughput, transcription speed and feature extraction,
each beside its peers, measured side by side in the same run; tables on stdout and one JSON report.

    python tools/benchmark.py                                      # all sections (`make bench`)
    python tools/benchmark.py --sections transcription features    # some of them
    python tools/benchmark.py --quick                              # tiny sizes: a smoke run
    python tools/benchmark.py --json-out bench.json                # the report's path (default exp/benchmark.json)

Sections, each a tool of its own with more options (see its --help):
  training       tools/bench_training.py       audio seconds trained per second and peak memory: the toolkit,
                                               ESPnet's RNN encoder and a naive pipeline; model only and whole
                                               pipeline; the default LibriSpeech model and the digits model
  transcription  tools/bench_transcription.py  real-time factor of `asr transcribe` beside pocketsphinx, and what
                                               each inference option is worth (int8, threads, batching, ONNX
                                               Runtime, TorchScript)
  features       tools/bench_features.py       frames per second of LogMel, librosa and Kaldi fbank
GPU figures come from tools/gpu_bench.sh, on a machine with a GPU. Peers that are not installed (ESPnet,
pocketsphinx, ONNX Runtime: `pip install -e '.[bench]'`) are reported as "not installed". docs/benchmarks.md holds
the figures measured so far and how to read them.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep, as `asr transcribe` has them (asr.cli); torch reads the variable once, when imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import glob
import json
import platform
import sys
import time
from pathlib import Path

import bench_features
import bench_training
import bench_transcription
import torch
import torchaudio
from provenance import provenance

SECTIONS = ("training", "transcription", "features")


def features_section(quick: bool) -> dict:
    """bench_features over the shared sentence recordings (its own defaults, or its quick sizes)."""
    files = sorted(glob.glob(bench_features.DEFAULT_FILES))
    repeats = 5
    if quick:
        files, repeats = files[:bench_features.QUICK_FILES], bench_features.QUICK_REPEATS
    return bench_features.run(files, repeats)


def section_arguments(name: str, args) -> list[str]:
    """The command-line arguments of a section's tool for this run's options."""
    if args.quick:
        return ["--quick"]
    arguments = []
    if name == "training":
        arguments += ["--rounds", str(args.repeats)]
        arguments += ["--variants", *args.variants] if args.variants else []
    if name == "transcription":
        arguments += ["--repeats", str(args.repeats)]
        arguments += ["--spin"] if "spin" in args.variants else []
        arguments += ["--digits-model", args.digits_model] if args.digits_model else []
    return arguments


def run_section(name: str, args) -> dict:
    """One section's report, printed as its tool prints it."""
    print(f"== {name} ==", flush=True)
    if name == "features":
        report = features_section(args.quick)
        bench_features.print_table(report)
    else:
        tool = {"training": bench_training, "transcription": bench_transcription}[name]
        report = tool.run(tool.parse_args(section_arguments(name, args)))
        print()
        tool.print_report(report)
    print(flush=True)
    return report


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="each section at its tool's --quick size")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every training cell and transcription case; medians are reported")
    parser.add_argument("--variants", nargs="*", choices=["spin", "bf16"], default=[],
                        help="also measure idle OpenMP threads spinning (training and transcription; slow on a busy "
                             "CPU) and bf16 autocast on a CPU (training)")
    parser.add_argument("--digits-model", help="a trained digits model for the int8 WER (default: the digits "
                                               "recipe's exp/digits/model.pt, when it exists)")
    parser.add_argument("--json-out", type=Path, default=Path("exp") / "benchmark.json",
                        help="the JSON report (default: exp/benchmark.json, beside experiments and out of git)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    report = {
        **provenance(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "sections": {},
    }
    for name in args.sections:
        report["sections"][name] = run_section(name, args)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['wall_seconds'] / 60:.1f} min; report written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
