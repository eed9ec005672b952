"""Frames per second of asr.features.LogMel against librosa and torchaudio's Kaldi fbank, on CPU.

Each method computes 80-band log-mel features of the same real recordings, one utterance at a time (as in data
loading and in transcription). librosa is configured exactly as LogMel, so both compute the same numbers; Kaldi's
fbank has its own conventions (Povey window, no centering) and is there as the usual reference point. Audio is loaded
once, before timing; each method is run once untimed (numba compiles librosa's kernels then), and the median of the
repeats is reported.

    python tools/bench_features.py                              # the sentence sets of the shared data
    python tools/bench_features.py --files 'corpus/**/*.flac' --repeats 3 --json-out bench.json
    python tools/bench_features.py --quick                      # a smoke run in seconds
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time
from pathlib import Path

import librosa
import numpy as np
import torch
import torchaudio
from provenance import provenance

from asr.audio import load_audio
from asr.features import FeatureConfig, LogMel

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED", REPO.parent / "shared"))
DEFAULT_FILES = str(SHARED / "data" / "sentences" / "*" / "wav" / "*.wav")
QUICK_FILES, QUICK_REPEATS = 3, 2


def logmel_method(cfg: FeatureConfig):
    """A function that computes one utterance's features with LogMel and returns how many frames it made."""
    logmel = LogMel(cfg)

    def frames(wave: torch.Tensor) -> int:
        feats, _ = logmel(wave[None], torch.tensor([len(wave)]))
        return feats.shape[1]

    return frames


def librosa_method(cfg: FeatureConfig):
    """The same with librosa, configured to give LogMel's numbers."""

    def frames(wave: torch.Tensor) -> int:
        mel = librosa.feature.melspectrogram(
            y=wave.numpy(),
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window="hann",
            center=True,
            pad_mode="constant",
            power=2.0,
            n_mels=cfg.n_mels,
            fmin=cfg.f_min,
            fmax=cfg.f_max,
            htk=False,
            norm="slaney",
        )
        return np.log(np.maximum(mel, cfg.log_floor)).shape[1]

    return frames


def kaldi_fbank_method(cfg: FeatureConfig):
    """The same with torchaudio's port of Kaldi's fbank, on the same window, hop, bands and frequency range."""

    def frames(wave: torch.Tensor) -> int:
        feats = torchaudio.compliance.kaldi.fbank(
            wave[None] * 32768,  # Kaldi works on 16-bit integer sample values
            sample_frequency=cfg.sample_rate,
            num_mel_bins=cfg.n_mels,
            frame_length=cfg.win_ms,
            frame_shift=cfg.hop_ms,
            low_freq=cfg.f_min,
            high_freq=cfg.f_max,
            dither=0.0,
        )
        return feats.shape[0]

    return frames


METHODS = {"asr LogMel": logmel_method, "librosa": librosa_method, "kaldi fbank": kaldi_fbank_method}


def median_seconds(compute_frames, waves: list[torch.Tensor], repeats: int) -> tuple[int, float]:
    """Frames the method gives for all waves, and the median seconds it takes over `repeats` runs after a warm-up."""
    frames = sum(compute_frames(wave) for wave in waves)  # the untimed warm-up run
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for wave in waves:
            compute_frames(wave)
        seconds.append(time.perf_counter() - start)
    return frames, statistics.median(seconds)


def run(files: list[str], repeats: int) -> dict:
    """Time every method over the files; the report as JSON-ready data."""
    cfg = FeatureConfig()
    waves = [load_audio(path, cfg.sample_rate) for path in files]
    results = []
    with torch.inference_mode():
        for name, make_method in METHODS.items():
            frames, seconds = median_seconds(make_method(cfg), waves, repeats)
            results.append(
                {"method": name, "frames": frames, "median_seconds": seconds, "frames_per_second": frames / seconds}
            )
    logmel_speed = results[0]["frames_per_second"]
    for result in results:
        result["speed_relative_to_logmel"] = result["frames_per_second"] / logmel_speed
    return {
        **provenance(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "librosa": librosa.__version__,
        "torch_threads": torch.get_num_threads(),
        "files": len(files),
        "audio_seconds": sum(len(wave) for wave in waves) / cfg.sample_rate,
        "repeats": repeats,
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"{report['files']} files, {report['audio_seconds']:.1f} s of audio, median of {report['repeats']} repeats, "
        f"{report['torch_threads']} torch threads, {report['machine']['cpu']}"
    )
    print(f"{'method':<12} {'frames':>8} {'median s':>9} {'frames/s':>10} {'vs LogMel':>9}")
    for result in report["results"]:
        print(
            f"{result['method']:<12} {result['frames']:>8} {result['median_seconds']:>9.3f} "
            f"{result['frames_per_second']:>10.0f} {result['speed_relative_to_logmel']:>8.2f}×"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default=DEFAULT_FILES, help="glob of audio files (default: the sentence sets)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs over all files; the median is reported")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FILES} files, {QUICK_REPEATS} repeats")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(glob.glob(args.files, recursive=True))
    if not files:
        parser.error(f"no files match {args.files}")
    repeats = args.repeats
    if args.quick:
        files, repeats = files[:QUICK_FILES], QUICK_REPEATS
    report = run(files, repeats)
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
