"""Training throughput beside ESPnet's RNN encoder and a naive pipeline: audio seconds trained per wall second and
peak memory, of the model alone and of the whole pipeline, on the same batches and the same device.

    python tools/bench_training.py                          # the default LibriSpeech model and the digits model
    python tools/bench_training.py --models default --steps 5 --rounds 2 --json-out train.json
    python tools/bench_training.py --variants spin bf16     # also the toolkit's model with spinning threads, in bf16
    python tools/bench_training.py --quick                  # a smoke run: the digits model, one step a cell

The batches: utterances with LibriSpeech's duration distribution (gpu_bench.librispeech_durations), cut by the
trainer's DurationBucketSampler into batches of at most --max-seconds padded seconds, then written as FLAC files of
real speech (slices of the shared sentence recordings) under a manifest. Every system takes each step as asr.train
does: CTC loss, backward, gradient clipping, AdamW with the recipe's settings.

Model only (the batches' audio already in memory, features by asr.frontend.Frontend on the device for every system):
  asr     the toolkit's model, as the recipe configures it (recipes/librispeech/conf/train_100.yaml for `default`,
          recipes/digits/conf/train.yaml for `digits`, with characters instead of its word pieces, which cannot
          spell the English text of the batches)
  espnet  ESPnet's RNNEncoder (rnn_type gru, bidirectional, the recipe's layers and units, its default projection
          and subsampling) with its CTC; a benchmark-only extra, reported as "not installed" when absent
  plain   the same shape written the usual way: two stride-2 Conv2d, one multi-layer bidirectional nn.GRU over the
          padded batch, a Linear
The whole pipeline (from the manifest: decoding, features, batching, --workers DataLoader workers):
  asr     SpeechDataset, the same bucketed batches, collate; features on the device, as asr.train runs
  naive   random batches of as many utterances on average, padded to the longest, log-mel features computed on the
          CPU in the workers, the plain model, fp32

Each (model, mode, system) cell runs in a process of its own, so that its peak memory is its own (on a CPU the
process's peak resident memory, torch included; on a GPU torch's peak allocation). Its throughput is the audio of
the timed steps over the wall time from the end of the warm-up steps to the end of the last one, waits for data
included. With --rounds N every cell runs N times, the order reversed every other round, and the median is kept.
ESPnet appears in the model-only rows only: that figure bounds its whole pipeline from above, so "asr pipeline ÷
espnet model" understates the toolkit's lead.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
import torch.nn.functional as F
from gpu_bench import librispeech_durations
from provenance import provenance
from torch import nn

from asr.audio import SAMPLE_RATE, load_audio
from asr.config import ExperimentConfig, TokenizerConfig, load_config
from asr.data.dataset import Batch, SpeechDataset, collate
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.sampler import DurationBucketSampler
from asr.features import LogMel
from asr.frontend import Frontend
from asr.model import ModelConfig
from asr.normalization import utterance_cmvn
from asr.recognizer import Recognizer
from asr.text import load_tokenizer, normalize_text, save_tokenizer
from asr.train import autocast_dtype, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED", REPO.parent / "shared"))
RECIPES = {"default": REPO / "recipes" / "librispeech" / "conf" / "train_100.yaml",
           "digits": REPO / "recipes" / "digits" / "conf" / "train.yaml"}
CELLS = (("model", "asr"), ("model", "espnet"), ("model", "plain"), ("pipeline", "asr"), ("pipeline", "naive"))
# Extra cells of the toolkit's model, asked for with --variants:
#   spin  idle OpenMP threads spin, libgomp's default (every other cell has them sleep, as `asr transcribe` does,
#         unless OMP_WAIT_POLICY is set); on a busy CPU a step can take minutes
#   bf16  autocast to bfloat16 on a CPU too (asr.train autocasts on GPUs only)
VARIANTS = {"spin": ("model", "asr, spin"), "bf16": ("model", "asr, bf16")}
CELL_ENVIRONMENT = {"asr, spin": {"OMP_WAIT_POLICY": "ACTIVE"}}
CHARS_PER_SECOND = 14  # of read English: a transcript's length for a duration


def ljspeech_sentences() -> list[str]:
    return (SHARED / "data" / "text" / "ljspeech-train-sentences.txt").read_text(encoding="utf-8").splitlines()


def identity_cmvn(config: ExperimentConfig) -> dict:
    """CMVN statistics that leave the features as they are: speed does not depend on their values."""
    return {"mean": [0.0] * config.features.n_mels, "std": [1.0] * config.features.n_mels}


# ----------------------------------------------------------------------------------------------------------------
# The corpus


def write_corpus(folder: Path, durations: list[float], seed: int = 0) -> Path:
    """FLAC files of real speech with the given durations and a manifest of them; returns the manifest's path.

    Each file is a slice, at a random offset, of all the shared sentence recordings put end to end; each transcript
    is LJSpeech text about as long as the speech would say in that time.
    """
    rng = random.Random(seed)
    speech = torch.cat([load_audio(path) for path in sorted((SHARED / "data" / "sentences").glob("*/wav/*.wav"))])
    # Letters, apostrophes and spaces only, which every tokenizer spells.
    normalized = " ".join(map(normalize_text, ljspeech_sentences()[:2000]))
    text = "".join(c for c in normalized if c.isascii() and (c.isalpha() or c in " '"))
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    utterances = []
    for index, duration in enumerate(durations):
        samples = round(duration * SAMPLE_RATE)
        start = rng.randrange(len(speech) - samples)
        path = folder / "wav" / f"utt{index:05d}.flac"
        soundfile.write(path, speech[start:start + samples].numpy(), SAMPLE_RATE, subtype="PCM_16")
        first = rng.randrange(len(text) // 2)
        transcript = " ".join(text[first:first + round(duration * CHARS_PER_SECOND)].split()[1:-1]) or "A"
        utterances.append(Utterance(f"utt{index:05d}", str(path), samples / SAMPLE_RATE, transcript))
    manifest = folder / "corpus.jsonl"
    write_manifest(manifest, utterances)
    return manifest


def plan_batches(count: int, max_seconds: float, seed: int = 0) -> tuple[list[float], list[list[int]]]:
    """Durations of the utterances of `count` bucketed batches, and the batches as lists of their indices."""
    pool = librispeech_durations(max(50, int(count * max_seconds / 1.3) + 1), seed)
    batches = list(DurationBucketSampler(pool, max_seconds, seed=seed, shuffle=True))[:count]
    used = [index for batch in batches for index in batch]
    renumbered = {old: new for new, old in enumerate(used)}
    return [pool[i] for i in used], [[renumbered[i] for i in batch] for batch in batches]


# ----------------------------------------------------------------------------------------------------------------
# The systems: each turns a batch into a CTC loss


def ctc_loss(log_probs: torch.Tensor, out_lengths, tokens, token_lengths) -> torch.Tensor:
    """asr.train's loss: CTC in fp32, each utterance's loss over its target length, averaged over the batch."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), tokens, out_lengths, token_lengths, blank=0,
                      reduction="mean", zero_infinity=True)


class AsrSystem(nn.Module):
    """The toolkit's Recognizer: frontend and acoustic model, as asr.train calls them."""

    def __init__(self, config: ExperimentConfig, tokenizer):
        super().__init__()
        self.recognizer = Recognizer(config.model, config.features, tokenizer, config.specaugment,
                                     identity_cmvn(config))

    def loss(self, batch: Batch) -> torch.Tensor:
        return ctc_loss(*self.recognizer(batch.audio, batch.audio_lengths), batch.tokens, batch.token_lengths)


class EspnetSystem(nn.Module):
    """ESPnet's RNNEncoder and CTC on the toolkit's features."""

    def __init__(self, config: ExperimentConfig, tokenizer):
        super().__init__()
        from espnet2.asr.ctc import CTC
        from espnet2.asr.encoder.rnn_encoder import RNNEncoder

        model = config.model
        self.frontend = Frontend(config.features, config.specaugment, identity_cmvn(config))
        self.encoder = RNNEncoder(config.features.n_mels, rnn_type="gru", bidirectional=True,
                                  num_layers=model.num_layers, hidden_size=model.hidden_size,
                                  output_size=model.hidden_size, dropout=model.dropout)
        self.ctc = CTC(tokenizer.vocab_size, model.hidden_size)

    def loss(self, batch: Batch) -> torch.Tensor:
        # ESPnet packs each layer's input, which needs the batch longest first; its own loader sorts so.
        order = batch.audio_lengths.argsort(descending=True)
        feats, feat_lengths = self.frontend(batch.audio[order], batch.audio_lengths[order])
        encoded, encoded_lengths, _ = self.encoder(feats, feat_lengths)
        return self.ctc(encoded, encoded_lengths, batch.tokens[order], batch.token_lengths[order])


class PlainModel(nn.Module):
    """The design's shape written the usual way: (B, T, F) padded features → (B, ⌈T/4⌉, V) log-probabilities.

    One multi-layer bidirectional nn.GRU reads the padded batch as it is, so its backward direction starts on padding:
    quicker than asr.model's per-direction layers, and wrong for every utterance shorter than its batch.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        first, second = config.channels_per_layer()
        kernel = config.subsampling_kernel
        self.convs = nn.Sequential(nn.Conv2d(1, first, kernel, 2, kernel // 2), nn.ReLU(),
                                   nn.Conv2d(first, second, kernel, 2, kernel // 2), nn.ReLU())
        freq_bins = (config.input_dim - 1) // 4 + 1
        self.rnn = nn.GRU(second * freq_bins, config.hidden_size, num_layers=config.num_layers, bidirectional=True,
                          batch_first=True, dropout=config.dropout)
        self.head = nn.Linear(2 * config.hidden_size, config.vocab_size)

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(feats.unsqueeze(1))  # (B, C, T/4, F/4)
        x = x.transpose(1, 2).flatten(2)
        return torch.log_softmax(self.head(self.rnn(x)[0]), dim=-1), (feat_lengths - 1) // 4 + 1


class PlainSystem(nn.Module):
    """The plain model on the toolkit's features (model only)."""

    def __init__(self, config: ExperimentConfig, tokenizer):
        super().__init__()
        self.frontend = Frontend(config.features, config.specaugment, identity_cmvn(config))
        self.model = PlainModel(config.model)

    def loss(self, batch: Batch) -> torch.Tensor:
        return ctc_loss(*self.model(*self.frontend(batch.audio, batch.audio_lengths)), batch.tokens,
                        batch.token_lengths)


@dataclass
class FeatureBatch:
    """The naive pipeline's batch: features computed in the loader, padded to the longest."""

    feats: torch.Tensor
    feat_lengths: torch.Tensor
    tokens: torch.Tensor
    token_lengths: torch.Tensor
    audio_seconds: float

    def to(self, device, non_blocking: bool = False) -> FeatureBatch:
        return FeatureBatch(self.feats.to(device), self.feat_lengths.to(device), self.tokens.to(device),
                            self.token_lengths.to(device), self.audio_seconds)


class FeatureDataset(torch.utils.data.Dataset):
    """The naive pipeline's dataset: each utterance's log-mel features, normalized, computed on the CPU."""

    def __init__(self, utterances: list[Utterance], tokenizer, config: ExperimentConfig):
        self.utterances = utterances
        self.tokenizer = tokenizer
        self.logmel = LogMel(config.features)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        audio = load_audio(self.utterances[index].audio)
        with torch.no_grad():
            feats, lengths = self.logmel(audio[None], torch.tensor([len(audio)]))
        tokens = torch.tensor(self.tokenizer.encode(self.utterances[index].text))
        return utterance_cmvn(feats, lengths)[0], tokens, len(audio) / SAMPLE_RATE


def collate_features(items: list[tuple[torch.Tensor, torch.Tensor, float]]) -> FeatureBatch:
    feats, tokens, seconds = zip(*items)
    return FeatureBatch(nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats]),
                        nn.utils.rnn.pad_sequence(tokens, batch_first=True), torch.tensor([len(t) for t in tokens]),
                        sum(seconds))


class NaiveSystem(nn.Module):
    """The plain model on features from the loader (the naive pipeline)."""

    def __init__(self, config: ExperimentConfig, tokenizer):
        super().__init__()
        self.model = PlainModel(config.model)

    def loss(self, batch: FeatureBatch) -> torch.Tensor:
        return ctc_loss(*self.model(batch.feats, batch.feat_lengths), batch.tokens, batch.token_lengths)


SYSTEMS = {("model", "asr"): AsrSystem, ("model", "asr, spin"): AsrSystem, ("model", "asr, bf16"): AsrSystem,
           ("model", "espnet"): EspnetSystem, ("model", "plain"): PlainSystem, ("pipeline", "asr"): AsrSystem,
           ("pipeline", "naive"): NaiveSystem}


# ----------------------------------------------------------------------------------------------------------------
# One cell: a system trained on the batches, in this process


def audio_seconds(batch) -> float:
    if isinstance(batch, FeatureBatch):
        return batch.audio_seconds
    return float(batch.audio_lengths.sum()) / SAMPLE_RATE


def batch_source(spec: dict, config: ExperimentConfig, tokenizer, device: torch.device):
    """The batches a cell trains on: collated in memory beforehand (model only), or from a DataLoader."""
    utterances = read_manifest(spec["manifest"])
    batches = spec["batches"]
    if spec["mode"] == "model":
        dataset = SpeechDataset(utterances, tokenizer, sample_rate=config.features.sample_rate)
        return [collate([dataset[i] for i in batch]) for batch in batches]
    generator = torch.Generator().manual_seed(spec["seed"])
    if spec["system"] == "asr":
        return torch.utils.data.DataLoader(
            SpeechDataset(utterances, tokenizer, sample_rate=config.features.sample_rate), batch_sampler=batches,
            collate_fn=collate, num_workers=spec["workers"], pin_memory=device.type == "cuda", generator=generator)
    # Random batches with as many utterances on average, as many of them as the bucketed epoch has.
    batch_size = round(sum(map(len, batches)) / len(batches))
    sampler = torch.utils.data.RandomSampler(utterances, num_samples=batch_size * len(batches), generator=generator)
    return torch.utils.data.DataLoader(FeatureDataset(utterances, tokenizer, config), batch_size=batch_size,
                                       sampler=sampler, collate_fn=collate_features, num_workers=spec["workers"])


def run_cell(spec: dict) -> dict:
    """Train one system on the spec's batches; its throughput, step times and peak memory."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    config = load_config(spec["recipe"])
    tokenizer = load_tokenizer(spec["tokenizer"])
    config.model.vocab_size = tokenizer.vocab_size
    config.model.input_dim = config.features.n_mels
    torch.manual_seed(spec["seed"])
    system = SYSTEMS[spec["mode"], spec["system"]](config, tokenizer).to(device).train()
    parameters = [p for p in system.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.AdamW(parameters, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    # The naive pipeline stays in fp32; the others use the recipe's precision (fp32 on a CPU, bf16 on most GPUs).
    if spec["system"] == "naive":
        amp_dtype = None
    elif spec["system"] == "asr, bf16":
        amp_dtype = torch.bfloat16
    else:
        amp_dtype = autocast_dtype(config.train.precision, device)
    source = batch_source(spec, config, tokenizer, device)
    memory_before = peak_memory_gb(device)
    step_ends, step_audio = [], []
    for index, batch in enumerate(source):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = system.loss(batch)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_ends.append(time.perf_counter())
        step_audio.append(audio_seconds(batch))
    warmup = spec["warmup"]
    seconds = step_ends[-1] - step_ends[warmup - 1]
    timed_audio = sum(step_audio[warmup:])
    step_seconds = [end - start for start, end in zip(step_ends[warmup - 1:], step_ends[warmup:])]
    return {"parameters_m": round(sum(p.numel() for p in parameters) / 1e6, 2), "steps": len(step_seconds),
            "audio_seconds": round(timed_audio, 1), "seconds": round(seconds, 2),
            "median_step_seconds": round(statistics.median(step_seconds), 3),
            "audio_seconds_per_second": round(timed_audio / seconds, 2),
            "memory_before_steps_gb": round(memory_before, 2), "peak_memory_gb": round(peak_memory_gb(device), 2)}


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch; on a CPU, the process's peak resident memory (torch itself included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux


# ----------------------------------------------------------------------------------------------------------------
# The run: a corpus, then every cell in a process of its own


def run(args) -> dict:
    """Every cell of the run, --rounds times; the report as JSON-ready data."""
    started = time.perf_counter()
    header = provenance()  # the date the run started
    print_header()
    espnet_installed = all(importlib.util.find_spec(name) for name in ("espnet2", "typeguard"))
    with tempfile.TemporaryDirectory(prefix="bench_training.") as folder:
        folder = Path(folder)
        durations, batches = plan_batches(args.warmup + args.steps, args.max_seconds, args.seed)
        manifest = write_corpus(folder, durations, args.seed)
        texts = ljspeech_sentences()
        specs = []
        for model in args.models:
            tokenizer_path = folder / f"{model}.tokenizer.json"
            config = load_config(RECIPES[model])
            if model == "digits":
                # Its 28 word pieces (the letters and words of digit names) cannot spell these English sentences;
                # the 29 characters can, with an output layer of the same size.
                config.tokenizer = TokenizerConfig(kind="char")
            save_tokenizer(build_tokenizer(config, texts), tokenizer_path)
            for mode, system in CELLS + tuple(VARIANTS[name] for name in args.variants):
                specs.append({"model": model, "mode": mode, "system": system, "recipe": str(RECIPES[model]),
                              "tokenizer": str(tokenizer_path), "manifest": str(manifest), "batches": batches,
                              "warmup": args.warmup, "seed": args.seed, "device": args.device,
                              "threads": args.threads, "workers": args.workers})
        runs = [[] for _ in specs]
        for round_index in range(args.rounds):
            order = range(len(specs)) if round_index % 2 == 0 else reversed(range(len(specs)))
            for index in order:
                if specs[index]["system"] == "espnet" and not espnet_installed:
                    runs[index].append({"status": "not installed"})
                else:
                    runs[index].append(run_cell_process(specs[index]))
                print_row({**cell_name(specs[index]), **runs[index][-1]})
    results = [{**cell_name(spec), **combine_rounds(cell_runs)} for spec, cell_runs in zip(specs, runs)]
    add_ratios(results)
    return {
        **header,
        "device": args.device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "max_seconds": args.max_seconds, "warmup": args.warmup, "steps": args.steps, "workers": args.workers,
        "rounds": args.rounds,
        "batch_utterances": [len(batch) for batch in batches],
        "batch_seconds": [round(sum(durations[i] for i in batch), 1) for batch in batches],
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def cell_name(spec: dict) -> dict:
    return {"model": spec["model"], "mode": spec["mode"], "system": spec["system"]}


def run_cell_process(spec: dict) -> dict:
    """run_cell in a fresh Python process; its result, or the error it ended with."""
    environment = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **CELL_ENVIRONMENT.get(spec["system"], {})}
    process = subprocess.run([sys.executable, __file__, "--cell", json.dumps(spec)], capture_output=True, text=True,
                             env=environment)
    if process.returncode != 0:
        return {"status": f"failed: {process.stderr.strip().splitlines()[-1] if process.stderr.strip() else '?'}"}
    return {"status": "ok", **json.loads(process.stdout.strip().splitlines()[-1])}


def combine_rounds(runs: list[dict]) -> dict:
    """One cell's figures over its rounds: the median throughput, the largest peak memory."""
    measured = [run for run in runs if run["status"] == "ok"]
    if not measured:
        return {"status": runs[0]["status"]}
    rates = [run["audio_seconds_per_second"] for run in measured]
    return {**measured[0], "audio_seconds_per_second": round(statistics.median(rates), 2), "rounds": rates,
            "peak_memory_gb": max(run["peak_memory_gb"] for run in measured)}


def add_ratios(results: list[dict]) -> None:
    """Each row's throughput over the toolkit's model-only figure for the same model."""
    reference = {r["model"]: r["audio_seconds_per_second"] for r in results
                 if (r["mode"], r["system"]) == ("model", "asr") and r["status"] == "ok"}
    for row in results:
        if row["status"] == "ok" and row["model"] in reference:
            row["vs_asr_model"] = round(row["audio_seconds_per_second"] / reference[row["model"]], 3)


def print_header() -> None:
    print(f"{'model':<8} {'mode':<9} {'system':<7} {'params M':>8} {'steps':>5} {'audio s':>7} {'audio s/s':>9} "
          f"{'vs asr':>7} {'peak GB':>7}")


def print_row(row: dict) -> None:
    if row["status"] != "ok":
        print(f"{row['model']:<8} {row['mode']:<9} {row['system']:<7} {row['status']}", flush=True)
        return
    ratio = f"{row['vs_asr_model']:.2f}×" if "vs_asr_model" in row else ""
    print(f"{row['model']:<8} {row['mode']:<9} {row['system']:<7} {row['parameters_m']:>8.2f} {row['steps']:>5} "
          f"{row['audio_seconds']:>7.0f} {row['audio_seconds_per_second']:>9.2f} {ratio:>7} "
          f"{row['peak_memory_gb']:>7.2f}", flush=True)


def print_report(report: dict) -> None:
    print(f"training throughput · {report['device']} · {report['threads']} threads · torch {report['torch']} · "
          f"batches of at most {report['max_seconds']:g} padded s ({report['batch_utterances']} utterances) · "
          f"{report['warmup']} warm-up + {report['steps']} timed steps · {report['workers']} loader workers")
    print_header()
    for row in report["results"]:
        print_row(row)


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["default", "digits"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    # 120 padded seconds hold 7 to 9 LibriSpeech utterances, the batches of the prototype (8 of 10-16 s) and
    # still a small batch for training; at 30 s (1 or 2 utterances) a padded GRU's matrix products shrink to
    # matrix-vector ones and the toolkit's lead over ESPnet's packed RNNs falls from 13x to 3.4x (docs/benchmarks.md).
    parser.add_argument("--max-seconds", type=float, default=120.0, help="padded audio seconds a batch")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps a cell")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pipeline cells")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=[],
                        help="extra cells of the toolkit's model: spin (idle OpenMP threads spinning; slow on a busy "
                             "CPU), bf16 (autocast to bfloat16 on a CPU)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every cell this many times, the order reversed every other round; medians")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: the digits model, 25-second batches, "
                                                             "one warm-up and one timed step, one worker")
    parser.add_argument("--json-out", type=Path, help="also write the report here as JSON")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell (JSON spec) and print its result
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.max_seconds, args.warmup, args.steps, args.workers = ["digits"], 25.0, 1, 1, 1
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the timing starts at the end of a warm-up step)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return 0
    report = run(args)
    print()
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
