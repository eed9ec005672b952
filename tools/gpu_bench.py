"""Training throughput of the default LibriSpeech model on one GPU, in bf16 and fp32, and the epoch time it implies.

    bash tools/gpu_bench.sh                          # on a machine with one NVIDIA GPU; no network needed
    bash tools/gpu_bench.sh --device cpu --quick     # a dry run of the script anywhere, in seconds

Synthetic audio (white noise) with LibriSpeech's duration distribution is cut into batches by the toolkit's own
DurationBucketSampler, with recipes/librispeech/conf/train_100.yaml's 2400 padded seconds a batch. For each precision
the default model (5 × 512 bidirectional GRU over 256 BPE pieces, 22.5 M parameters) takes a few warm-up steps, then
`--steps` timed ones, each as asr.train takes it: forward under autocast, CTC in fp32, backward (losses scaled under
autocast), gradient clipping, AdamW. Printed: audio seconds trained per wall second, peak memory, and at that rate
the time of one epoch of train-clean-100 (100.6 h) and of all of LibriSpeech (960 h). Data loading is not included:
the trainer's workers decode audio on the CPU cores while the GPU computes.

Only torch, torchaudio and this repository are needed. The features are torchaudio's MelSpectrogram with
asr.features.LogMel's settings, because asr.features imports the audio-file libraries (soundfile, soxr) that a bare
GPU image lacks; CMVN and SpecAugment, a few element-wise operations, are left out.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from asr.data.sampler import DurationBucketSampler
from asr.model import AcousticModel, ModelConfig
from provenance import provenance

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # LogMel's 10 ms
TRAIN_CLEAN_100_HOURS = 100.6
LIBRISPEECH_HOURS = 960.0
# BPE-256 pieces a second of LibriSpeech speech (about 2.7 words a second, two to three pieces a word): only the CTC
# targets' lengths depend on it, and CTC is a small part of a step.
TOKENS_PER_SECOND = 6.0
GRAD_CLIP = 5.0  # asr.config.OptimConfig's default
LEARNING_RATE = 1.5e-3  # train_100.yaml's


def librispeech_durations(count: int, seed: int = 0) -> list[float]:
    """`count` utterance durations, in seconds, shaped like those of LibriSpeech's training sets.

    LibriSpeech cut its chapters at pauses into segments of at most 35 s, most of them 11 to 17 s long: 85% of the
    draws come from a normal law around 13.95 s (standard deviation 1.9 s, kept within 10 and 24.5 s, the longest
    of train-clean-100), the rest uniformly between 1.3 s (its shortest) and 10 s. The mean, 12.7 s, is
    train-clean-100's: 100.6 hours in 28,539 utterances.
    """
    rng = np.random.default_rng(seed)
    short = rng.random(count) < 0.15
    durations = np.where(short, rng.uniform(1.3, 10.0, count), np.clip(rng.normal(13.95, 1.9, count), 10.0, 24.5))
    return [round(float(d), 2) for d in durations]


def bucketed_batches(durations: list[float], max_seconds: float, seed: int = 0) -> list[list[float]]:
    """The durations grouped as the trainer's sampler groups them for its first shuffled epoch."""
    sampler = DurationBucketSampler(durations, max_seconds, seed=seed, shuffle=True)
    return [[durations[i] for i in batch] for batch in sampler]


def synthetic_batch(durations: list[float], vocab_size: int, device: torch.device, generator: torch.Generator):
    """Padded white noise of the given durations, random target tokens and both lengths, on `device`."""
    audio_lengths = torch.tensor([round(d * SAMPLE_RATE) for d in durations])
    token_lengths = torch.tensor([max(1, round(d * TOKENS_PER_SECOND)) for d in durations])
    audio = 0.1 * torch.randn(len(durations), int(audio_lengths.max()), generator=generator)
    audio *= torch.arange(audio.size(1))[None, :] < audio_lengths[:, None]
    tokens = torch.randint(1, vocab_size, (len(durations), int(token_lengths.max())), generator=generator)
    return audio.to(device), audio_lengths.to(device), tokens.to(device), token_lengths.to(device)


class MelFrontend(nn.Module):
    """Log-mel features with asr.features.LogMel's settings, from torchaudio: (B, S) audio → (B, T, 80)."""

    def __init__(self):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=HOP_LENGTH, f_min=20.0, f_max=7600.0,
            n_mels=80, pad_mode="constant", norm="slaney", mel_scale="slaney")

    def forward(self, audio: torch.Tensor, audio_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(audio.device.type, enabled=False):  # as LogMel: energies near the floor need fp32
            feats = self.mel(audio.float()).clamp(min=1e-10).log().transpose(1, 2)
        return feats, 1 + audio_lengths // HOP_LENGTH


@dataclass
class Measurement:
    """What one precision measured; `audio_seconds_per_second` is total audio over total time of the timed steps."""

    precision: str
    steps: int
    audio_seconds: float
    seconds: float
    median_step_seconds: float
    audio_seconds_per_second: float
    peak_memory_gb: float
    train_clean_100_epoch_minutes: float
    librispeech_960h_epoch_minutes: float


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch; on a CPU, the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(precision: str, model_config: ModelConfig, batches: list[list[float]], warmup: int,
            device: torch.device, seed: int = 0) -> Measurement:
    """Train a fresh model on `warmup` + the remaining batches in `precision`; time all but the warm-up steps."""
    torch.manual_seed(seed)
    model = AcousticModel(model_config).to(device).train()
    frontend = MelFrontend().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    amp_dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    # Losses scaled under autocast, as asr.train.scales_losses does (cuDNN runs the GRUs in fp16 under bf16 too).
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is not None and device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds, audio_seconds = [], []
    for index, durations in enumerate(batches):
        audio, audio_lengths, tokens, token_lengths = synthetic_batch(durations, model_config.vocab_size, device,
                                                                      generator)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            log_probs, out_lengths = model(*frontend(audio, audio_lengths))
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), tokens, out_lengths, token_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if index >= warmup:
            step_seconds.append(time.perf_counter() - start)
            audio_seconds.append(sum(durations))
    rate = sum(audio_seconds) / sum(step_seconds)
    return Measurement(
        precision=precision, steps=len(step_seconds), audio_seconds=round(sum(audio_seconds), 1),
        seconds=round(sum(step_seconds), 3), median_step_seconds=round(statistics.median(step_seconds), 3),
        audio_seconds_per_second=round(rate, 1), peak_memory_gb=round(peak_memory_gb(device), 2),
        train_clean_100_epoch_minutes=round(TRAIN_CLEAN_100_HOURS * 3600 / rate / 60, 2),
        librispeech_960h_epoch_minutes=round(LIBRISPEECH_HOURS * 3600 / rate / 60, 2))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def print_report(report: dict) -> None:
    print(f"{report['device']} · torch {report['torch']} · {report['model']} · batches of at most "
          f"{report['max_seconds']:g} padded audio seconds, {report['warmup']} warm-up steps")
    print(f"{'precision':<9} {'steps':>5} {'audio s':>8} {'median s/step':>13} {'audio s/s':>9} {'peak GB':>8} "
          f"{'100 h epoch':>11} {'960 h epoch':>11}")
    for row in report["results"]:
        print(f"{row['precision']:<9} {row['steps']:>5} {row['audio_seconds']:>8.0f} "
              f"{row['median_step_seconds']:>13.3f} {row['audio_seconds_per_second']:>9.1f} "
              f"{row['peak_memory_gb']:>8.2f} {row['train_clean_100_epoch_minutes']:>9.1f} m "
              f"{row['librispeech_960h_epoch_minutes']:>9.1f} m")
    for note in report["notes"]:
        print(f"note: {note}")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    parser.add_argument("--max-seconds", type=float, default=2400.0, help="padded audio seconds a batch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN plans, allocator)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps a precision")
    parser.add_argument("--budget-seconds", type=float, default=240.0,
                        help="stop starting new precisions after this long (the whole run must stay under 5 min)")
    parser.add_argument("--quick", action="store_true",
                        help="a dry run: a 2 × 64 model, 30-second batches, 1 warm-up and 2 timed steps")
    parser.add_argument("--json-out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_seconds, args.warmup, args.steps = 30.0, 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if args.quick:
        model_config = ModelConfig(num_layers=2, hidden_size=64, subsampling_channels=8, vocab_size=256)
    else:
        model_config = ModelConfig(num_layers=5, hidden_size=512, dropout=0.2, vocab_size=256)  # train_100.yaml
    # Enough utterances for every step: a batch holds at most max_seconds / 1.3 s of them.
    durations = librispeech_durations(int((args.warmup + args.steps) * args.max_seconds / 1.3) + 1)
    batches = bucketed_batches(durations, args.max_seconds)[:args.warmup + args.steps]
    notes = []
    results = []
    for precision in args.precisions:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            notes.append(f"bf16 skipped: {device_name(device)} does not support it")
            continue
        if time.perf_counter() - started > args.budget_seconds:
            notes.append(f"{precision} skipped: the {args.budget_seconds:g} s budget was spent")
            continue
        results.append(asdict(measure(precision, model_config, batches, args.warmup, device)))
    model = AcousticModel(model_config)
    report = {
        **provenance(),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "model": f"{model_config.num_layers} × {model_config.hidden_size} BiGRU, "
                 f"{model.num_parameters() / 1e6:.1f} M parameters",
        "max_seconds": args.max_seconds,
        "warmup": args.warmup,
        "batch_utterances": [len(batch) for batch in batches],
        "results": results,
        "notes": notes,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
