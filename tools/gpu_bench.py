"""Training throughput of each LibriSpeech config's own model on one GPU, and the epoch time it implies.

    bash tools/gpu_bench.sh                  # on a machine with one NVIDIA GPU; no network; under 10 minutes
    bash tools/gpu_bench.sh --smoke          # every code path on the CPU with tiny models, in about a minute

For each of recipes/librispeech/conf/train_100, train_460 and train_960, the model is built from the config itself
(layers, width, dropout, layer norm, its BPE vocabulary) and trained on batches of the padded seconds ONE device
forwards at once (`data.device_max_seconds` where the config sets it, else `data.max_seconds`). Three variants:

- `synthetic`: the toolkit's AcousticModel on white noise with LibriSpeech's duration distribution, cut into batches
  by the toolkit's DurationBucketSampler; each step as asr.train takes it: forward under autocast, CTC in fp32,
  backward, gradient clipping, AdamW. Log-mel features from torchaudio with asr.features.LogMel's settings.
- `cudnn-bidir`: the same, but the recurrent layers are ONE call of torch's bidirectional multi-layer nn.GRU on a
  packed batch: the fastest cuDNN can go. It is not the toolkit's model: no LayerNorm between layers (cuDNN has no
  hook there) and the directions' outputs are concatenated inside cuDNN. The gap to `synthetic` is what the
  toolkit's per-direction calls (which keep every layer's LayerNorm and padding-exact backward direction) cost.
- `loader`: the toolkit's whole input path: FLAC files read and decoded by SpeechDataset in DataLoader workers
  (asr.train's settings: `data.num_workers` of the config, pinned memory, int16 batches), the asr Frontend on the
  GPU, then the `synthetic` step. The FLACs are a synthetic tree: `--flac-tree` (e.g. the output of
  /work/shared/tools/synth_librispeech.py, any LibriSpeech-shaped folder), or noise written here at LibriSpeech's
  durations (noise compresses worse than speech, so its decoding is a pessimistic figure). The time spent waiting
  for the loader is reported apart: if it is not near 0, the CPU cores, not the GPU, set the pace.

Printed: audio seconds trained per wall second, peak GPU memory, and at that rate one epoch of the config's training
set (train_100: 100.6 h, train_460: 464.2 h, train_960: 960.9 h). Only fixed numbers of steps are timed; a global
`--budget-seconds` stops starting new measurements (a skipped one is reported as skipped), so that the whole run fits
in one 10-minute device call: 3 configs × 3 variants × (3 warm-up + 8 timed steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from provenance import provenance
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.data.sampler import DurationBucketSampler
from asr.model import AcousticModel, ModelConfig, Subsampler, length_mask

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "recipes" / "librispeech" / "conf"
SAMPLE_RATE = 16000
HOP_LENGTH = 160  # LogMel's 10 ms
# Hours of each config's training set (train-clean-100, + train-clean-360, + train-other-500).
TRAINING_HOURS = {"train_100": 100.6, "train_460": 464.2, "train_960": 960.9}
CONFIGS = tuple(TRAINING_HOURS)
VARIANTS = ("synthetic", "cudnn-bidir", "loader")
# BPE pieces a second of LibriSpeech speech (about 2.7 words a second, two to three pieces a word): only the CTC
# targets' lengths depend on it, and CTC is a small part of a step.
TOKENS_PER_SECOND = 6.0
GRAD_CLIP = 5.0  # asr.config.OptimConfig's default
LEARNING_RATE = 1.5e-3
CHAR_VOCABULARY = 30  # a character tokenizer's tokens, blank included, for a config without BPE


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


def bucketed_batches(durations: list[float], max_seconds: float, seed: int = 0) -> list[list[int]]:
    """Indices of `durations` grouped as the trainer's sampler groups them for a shuffled epoch."""
    return [list(batch) for batch in DurationBucketSampler(durations, max_seconds, seed=seed, shuffle=True)]


# ---------------------------------------------------------------------------------------------------------------
# What a config asks for


@dataclass
class Setup:
    name: str
    model: ModelConfig
    device_batch_seconds: float  # padded audio seconds one device forwards at once
    num_workers: int
    training_hours: float


def read_setup(name: str, smoke: bool) -> Setup:
    """The model and the per-device batch of conf/<name>.yaml; with `smoke`, a 2 × 32 model of the same kind and
    20-second batches, so that every path runs in seconds on a CPU."""
    import yaml

    config = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    data, tokenizer = config.get("data", {}), config.get("tokenizer", {})
    known = {field.name for field in fields(ModelConfig)}
    model_settings = {key: value for key, value in config.get("model", {}).items() if key in known}
    vocab_size = tokenizer.get("vocab_size", 256) if tokenizer.get("kind", "char") == "bpe" else CHAR_VOCABULARY
    model_settings["vocab_size"] = vocab_size
    batch = float(data.get("max_seconds", 2400.0))
    if data.get("device_max_seconds"):
        batch = min(batch, float(data["device_max_seconds"]))
    workers = int(data.get("num_workers", 8))
    if smoke:
        model_settings.update(num_layers=2, hidden_size=32, subsampling_channels=8)
        batch, workers = 20.0, 1
    return Setup(name, ModelConfig(**model_settings), batch, workers, TRAINING_HOURS[name])


# ---------------------------------------------------------------------------------------------------------------
# Models and inputs


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


class CudnnBiGRU(nn.Module):
    """The config's model with its recurrent layers as one call of a bidirectional, multi-layer nn.GRU on a packed
    batch (cuDNN's fastest path); no LayerNorm between the layers. Same subsampler and head as AcousticModel."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.subsampler = Subsampler(config.input_dim, config.channels_per_layer(), config.subsampling_kernel)
        self.rnn = nn.GRU(self.subsampler.output_dim, config.hidden_size, num_layers=config.num_layers,
                          dropout=config.dropout, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * config.hidden_size, config.vocab_size)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampler(feats, feat_lengths.to(feats.device))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        x = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.size(1))[0]
        return torch.log_softmax(self.head(x), dim=-1), lengths


def noise_batch(durations: list[float], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded white noise of the given durations and its lengths (CPU)."""
    lengths = torch.tensor([round(d * SAMPLE_RATE) for d in durations])
    audio = 0.1 * torch.randn(len(durations), int(lengths.max()), generator=generator)
    audio *= length_mask(lengths, audio.size(1))
    return audio, lengths


def random_targets(durations: list[float], vocab_size: int, generator: torch.Generator):
    lengths = torch.tensor([max(1, round(d * TOKENS_PER_SECOND)) for d in durations])
    return torch.randint(1, vocab_size, (len(durations), int(lengths.max())), generator=generator), lengths


def write_noise_tree(folder: Path, durations: list[float], seed: int = 0) -> list[Path]:
    """One 16 kHz 16-bit FLAC of noise a duration, as LibriSpeech stores its audio."""
    import soundfile

    rng = np.random.default_rng(seed)
    paths = []
    for index, duration in enumerate(durations):
        path = folder / f"{index:05d}.flac"
        soundfile.write(str(path), (0.1 * rng.standard_normal(round(duration * SAMPLE_RATE))).astype(np.float32),
                        SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# One measurement


@dataclass
class Measurement:
    """One (config, variant, precision); `audio_seconds_per_second` is total audio over total time of the timed
    steps; `loader_wait_seconds` is how long of it the steps waited for their batch (the `loader` variant)."""

    config: str
    variant: str
    precision: str
    batch_seconds: float
    steps: int
    audio_seconds: float
    seconds: float
    median_step_seconds: float
    audio_seconds_per_second: float
    peak_memory_gb: float
    epoch_minutes: float
    loader_wait_seconds: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch; on a CPU, the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


def synthetic_inputs(durations: list[float], batches: list[list[int]], frontend: nn.Module, vocab_size: int,
                     device: torch.device):
    """(features, lengths, tokens, token_lengths, audio seconds) of each batch, made on demand."""
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        chosen = [durations[i] for i in batch]
        audio, audio_lengths = noise_batch(chosen, generator)
        tokens, token_lengths = random_targets(chosen, vocab_size, generator)
        feats, feat_lengths = frontend(audio.to(device), audio_lengths.to(device))
        yield feats, feat_lengths, tokens.to(device), token_lengths.to(device), sum(chosen)


def loader_inputs(paths: list[Path], durations: list[float], batches: list[list[int]], setup: Setup,
                  device: torch.device):
    """The same, from FLAC files through SpeechDataset, a DataLoader and the asr Frontend (on the device)."""
    from asr.data.dataset import SpeechDataset, collate
    from asr.data.manifest import Utterance
    from asr.features import FeatureConfig
    from asr.frontend import Frontend
    from asr.text import CharTokenizer

    # Transcripts long enough for the CTC targets a real batch has (the tokens' identity does not matter here).
    utterances = [Utterance(f"u{index}", str(paths[index % len(paths)]), duration,
                            " ".join(["SPEECH"] * max(1, round(duration * TOKENS_PER_SECOND / 7))))
                  for index, duration in enumerate(durations)]
    dataset = SpeechDataset(utterances, CharTokenizer(), speed_factors=(0.9, 1.0, 1.1))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         num_workers=setup.num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=False, prefetch_factor=2 if setup.num_workers else None)
    frontend = Frontend(FeatureConfig(normalization="utterance")).to(device)
    vocab = setup.model.vocab_size
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        feats, feat_lengths = frontend(batch.audio, batch.audio_lengths)
        tokens = batch.tokens.clamp(max=vocab - 1)
        yield feats, feat_lengths, tokens, batch.token_lengths, float(batch.audio_lengths.sum()) / SAMPLE_RATE


def measure(setup: Setup, variant: str, precision: str, warmup: int, steps: int, device: torch.device,
            flac_paths: list[Path] | None) -> Measurement:
    """Train a fresh model `warmup` + `steps` steps; time the last `steps`."""
    torch.manual_seed(0)
    model = (CudnnBiGRU if variant == "cudnn-bidir" else AcousticModel)(setup.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    amp_dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    # Losses scaled under autocast, as asr.train does (cuDNN runs the GRUs in fp16 under bf16 autocast too).
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is not None and device.type == "cuda")
    # Enough utterances for every step: a batch holds at most batch_seconds / 1.3 s of them.
    durations = librispeech_durations(int((warmup + steps) * setup.device_batch_seconds / 1.3) + 1)
    batches = bucketed_batches(durations, setup.device_batch_seconds)[:warmup + steps]
    if variant == "loader":
        inputs = loader_inputs(flac_paths, durations, batches, setup, device)
    else:
        inputs = synthetic_inputs(durations, batches, MelFrontend().to(device), setup.model.vocab_size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds, audio_seconds, waits = [], [], []
    synchronize(device)
    ready = time.perf_counter()
    for index in range(len(batches)):
        start = time.perf_counter() if variant != "loader" else ready  # the loader's wait is part of its step
        feats, feat_lengths, tokens, token_lengths, seconds = next(inputs)
        synchronize(device)
        fetched = time.perf_counter()
        if variant != "loader":
            start = fetched  # synthetic inputs are made outside the timed step
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            log_probs, out_lengths = model(feats, feat_lengths)
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), tokens, out_lengths, token_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        ready = time.perf_counter()
        if index >= warmup:
            step_seconds.append(ready - start)
            audio_seconds.append(seconds)
            waits.append(fetched - start)
    rate = sum(audio_seconds) / sum(step_seconds)
    return Measurement(
        config=setup.name, variant=variant, precision=precision, batch_seconds=setup.device_batch_seconds,
        steps=len(step_seconds), audio_seconds=round(sum(audio_seconds), 1), seconds=round(sum(step_seconds), 3),
        median_step_seconds=round(statistics.median(step_seconds), 3), audio_seconds_per_second=round(rate, 1),
        peak_memory_gb=round(peak_memory_gb(device), 2),
        epoch_minutes=round(setup.training_hours * 3600 / rate / 60, 1),
        loader_wait_seconds=round(sum(waits), 3) if variant == "loader" else None)


# ---------------------------------------------------------------------------------------------------------------
# The run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def print_report(report: dict) -> None:
    print(f"{report['device']} · torch {report['torch']} · {report['warmup']} warm-up + {report['steps']} timed "
          f"steps a measurement")
    for name, model in report["models"].items():
        print(f"  {name}: {model}")
    print(f"{'config':<10} {'variant':<12} {'prec':<5} {'batch s':>7} {'steps':>5} {'median s/step':>13} "
          f"{'audio s/s':>9} {'peak GB':>8} {'epoch':>9} {'loader wait':>11}")
    for row in report["results"]:
        wait = "" if row["loader_wait_seconds"] is None else f"{row['loader_wait_seconds']:.2f} s"
        print(f"{row['config']:<10} {row['variant']:<12} {row['precision']:<5} {row['batch_seconds']:>7g} "
              f"{row['steps']:>5} {row['median_step_seconds']:>13.3f} {row['audio_seconds_per_second']:>9.1f} "
              f"{row['peak_memory_gb']:>8.2f} {row['epoch_minutes']:>7.1f} m {wait:>11}")
    for note in report["notes"]:
        print(f"note: {note}")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda when available, cpu with --smoke")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16"])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN plans, allocator)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps a measurement")
    parser.add_argument("--flac-tree", type=Path,
                        help="FLACs for the loader variant (e.g. synth_librispeech.py's output); default: noise")
    parser.add_argument("--budget-seconds", type=float, default=500.0,
                        help="start no measurement after this long (the whole run must fit in 10 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="every path on the CPU: 2 × 32 models, 20-second batches, 1 warm-up and 2 timed steps")
    parser.add_argument("--json-out", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps = 1, 2
        args.device = args.device or "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    setups = [read_setup(name, args.smoke) for name in args.configs]
    notes, results = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-flac-") as folder:
        flac_paths = None
        if "loader" in args.variants:
            if args.flac_tree:
                flac_paths = sorted(args.flac_tree.rglob("*.flac"))
            else:
                # A few minutes of distinct files, read over and over: decoding, not the page cache, is the cost.
                flac_paths = write_noise_tree(Path(folder), librispeech_durations(6 if args.smoke else 48, seed=1))
            if not flac_paths:
                raise SystemExit(f"gpu_bench: no .flac files under {args.flac_tree}")
        for setup in setups:
            for variant in args.variants:
                for precision in args.precisions:
                    label = f"{setup.name} {variant} {precision}"
                    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                        notes.append(f"{label} skipped: {device_name(device)} does not support bf16")
                    elif time.perf_counter() - started > args.budget_seconds:
                        notes.append(f"{label} skipped: the {args.budget_seconds:g} s budget was spent")
                    else:
                        results.append(asdict(measure(setup, variant, precision, args.warmup, args.steps, device,
                                                      flac_paths)))
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    report = {
        **provenance(),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "models": {setup.name: AcousticModel(setup.model).describe() for setup in setups},
        "warmup": args.warmup,
        "steps": args.steps,
        "flac_tree": str(args.flac_tree) if args.flac_tree else "noise FLACs written by gpu_bench",
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
