"""How fast does the data pipeline deliver batches? Utterances and audio-seconds a second, for 0, 1, 2 workers.

It builds a manifest from the real recordings of the shared sentence sets (16 kHz WAV, 1 to 27 s), then runs one
epoch of DataLoader(SpeechDataset, batch_sampler=DurationBucketSampler, collate_fn=collate) per worker count,
with speed perturbation on (resampling is most of a worker's work) and pinned memory when CUDA is present.
The time includes starting the workers, as every epoch of training pays it.

    python tools/bench_dataloader.py [--quick] [--workers 0 1 2] [--json-out bench.json]

(with the package importable: `pip install -e .`, or PYTHONPATH set to the repository).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from asr.audio import audio_info
from asr.data.dataset import SpeechDataset, collate
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.sampler import DurationBucketSampler
from asr.text import CharTokenizer

# The shared data sits beside the checkout, as the tests expect it; ASR_SHARED overrides that.
SHARED = Path(os.environ.get("ASR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DEFAULT_SENTENCES = SHARED / "data" / "sentences"
QUICK_UTTERANCES = 24


def sentence_utterances(sentences_dir: Path) -> list[Utterance]:
    """Every `<set>/wav/<id>.wav` with its line in `<set>/text`, durations from the headers."""
    utterances = []
    for text_file in sorted(sentences_dir.glob("*/text")):
        for line in text_file.read_text(encoding="utf-8").splitlines():
            utt_id, _, words = line.partition(" ")
            audio = text_file.parent / "wav" / f"{utt_id}.wav"
            utterances.append(Utterance(utt_id, str(audio), audio_info(audio).duration, words))
    return utterances


def measure(dataset: SpeechDataset, durations: list[float], max_seconds: float, num_workers: int) -> dict:
    """One epoch through a DataLoader with `num_workers` workers: counts, wall time and rates."""
    sampler = DurationBucketSampler(durations, max_seconds, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                         pin_memory=torch.cuda.is_available())
    utterances = batches = skipped = samples = 0
    start = time.perf_counter()
    for batch in loader:
        batches += 1
        utterances += len(batch)
        skipped += len(batch.skipped)
        samples += int(batch.audio_lengths.sum())
    seconds = time.perf_counter() - start
    audio_seconds = samples / dataset.sample_rate
    return {"workers": num_workers, "batches": batches, "utterances": utterances, "skipped": skipped,
            "audio_seconds": round(audio_seconds, 3), "wall_seconds": round(seconds, 3),
            "utterances_per_second": round(utterances / seconds, 2),
            "audio_seconds_per_second": round(audio_seconds / seconds, 2)}


def format_table(results: list[dict]) -> str:
    header = f"{'workers':>7}  {'batches':>7}  {'utterances':>10}  {'wall s':>7}  {'utt/s':>8}  {'audio s/s':>9}"
    rows = [f"{r['workers']:>7}  {r['batches']:>7}  {r['utterances']:>10}  {r['wall_seconds']:>7.2f}  "
            f"{r['utterances_per_second']:>8.1f}  {r['audio_seconds_per_second']:>9.1f}" for r in results]
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES, help="folder of sentence sets")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-seconds", type=float, default=60.0, help="padded audio seconds per batch")
    parser.add_argument("--speed-factors", type=float, nargs="+", default=[0.9, 1.0, 1.1])
    parser.add_argument("--quick", action="store_true", help=f"only the {QUICK_UTTERANCES} shortest utterances")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    utterances = sentence_utterances(args.sentences)
    if args.quick:
        utterances = sorted(utterances, key=lambda u: u.duration)[:QUICK_UTTERANCES]
    with tempfile.TemporaryDirectory() as folder:
        # Through a manifest file, as training reads its data.
        write_manifest(Path(folder) / "bench.jsonl", utterances)
        utterances = read_manifest(Path(folder) / "bench.jsonl")
    tokenizer = CharTokenizer()
    utterances = [u for u in utterances if not tokenizer.unknown_characters(u.text)]
    dataset = SpeechDataset(utterances, tokenizer, speed_factors=args.speed_factors)
    durations = [u.duration for u in utterances]

    results = [measure(dataset, durations, args.max_seconds, workers) for workers in args.workers]
    summary = {"utterances": len(utterances), "audio_seconds": round(sum(durations), 3),
               "speed_factors": args.speed_factors, "max_seconds": args.max_seconds,
               "pin_memory": torch.cuda.is_available(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "results": results}
    print(f"{len(utterances)} utterances, {sum(durations) / 60:.1f} min of audio, speed factors {args.speed_factors}")
    print(format_table(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
