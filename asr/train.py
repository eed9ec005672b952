"""The training loop: CTC on bucketed batches, AdamW with warmup, mixed precision, DDP, checkpoints and exact resume.

`asr train --config conf/train.yaml --exp-dir exp/NAME [section.key=value ...] [--resume]`, or under torchrun for
several GPUs or machines (`torchrun --nproc_per_node 8 -m asr train ...`). One optimizer step takes one global batch of
`data.max_seconds` padded seconds, the same batches whatever the number of processes: each rank takes its share and
forwards it in micro-batches of at most `data.device_max_seconds`, accumulating gradients; the loss is divided by the
target tokens of the whole step, so 1 process or 64 take the same steps to the same weights, only at another speed
(tests/test_distributed_training.py). Only global rank 0 writes files.

What a run leaves in `exp/NAME/`: `config.yaml` (the effective config), `train.log`, `metrics.jsonl` (one JSON record
a logged step and a validation), `tensorboard/`, `checkpoints/` (`ckpt-<step>.pt` with the trainer's state;
`best-<step>.pt` model files, the best by dev WER), `model.pt` (the best, or the last: `train.final_model`),
`skipped.tsv` (every utterance not trained on, and why).

Resuming restores the model, optimizer, scheduler, grad scaler, the sampler's position inside the epoch and every
random number generator, so a resumed run follows the same losses as one never stopped (tests/test_train.py).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asr import distributed
from asr.checkpoint import CheckpointDir, load_checkpoint, read_plain_data, save_model, write_atomically
from asr.config import ExperimentConfig, OptimConfig, save_config
from asr.data.dataset import Batch, SpeechDataset, collate
from asr.data.manifest import SkipLog, Utterance, read_manifest
from asr.data.sampler import DurationBucketSampler
from asr.errors import AsrError, ConfigError
from asr.evaluate import score_utterances
from asr.metrics import MetricsLog
from asr.normalization import (
    SpeakerStats,
    estimate_cmvn,
    load_cmvn,
    load_speaker_stats,
    save_cmvn,
    save_speaker_stats,
)
from asr.recognizer import Recognizer
from asr.text import BpeTokenizer, CharTokenizer, Tokenizer, load_tokenizer, tokenizer_from_dict

log = logging.getLogger("asr.train")


# ----------------------------------------------------------------------------------------------------------------
# Random numbers and precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": _numpy_state_to_plain(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state) -> list:
    # numpy arrays are not allowed under torch.load(weights_only=True); lists of ints are.
    kind, keys, pos, has_gauss, cached = state
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. Mixed precision is for GPUs; on CPU we always train in fp32."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: {precision!r} is not one of auto, fp32, bf16, fp16")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def scales_losses(amp_dtype: torch.dtype | None) -> bool:
    """Whether training scales its losses (GradScaler): under autocast to either dtype.

    fp16 needs it, its small gradients flushing to zero otherwise. So does bf16 here: under bf16 autocast torch still
    runs cuDNN's recurrent layers in float16 (aten/src/ATen/cudnn/AutocastRNN.cpp casts their inputs and weights to
    half, whatever the autocast dtype), and this model is mostly GRUs.
    """
    return amp_dtype is not None


# ----------------------------------------------------------------------------------------------------------------
# Data


def build_tokenizer(config: ExperimentConfig, train_texts: list[str]):
    tok = config.tokenizer
    if tok.path:
        return load_tokenizer(tok.path)
    if tok.kind == "char":
        return CharTokenizer()
    if tok.kind == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=tok.vocab_size, model_type=tok.model_type)
    raise ConfigError(f"tokenizer.kind: {tok.kind!r} is not 'char' or 'bpe'")


def main_process_tokenizer(config: ExperimentConfig, train_texts: list[str]):
    """The tokenizer built by the main process, on every process. Nothing guarantees that sentencepiece, run once a
    process, gives every process the same pieces in the same order; if it did not, the replicas would train one output
    layer on different meanings of each token, silently."""
    if distributed.world_size() == 1:
        return build_tokenizer(config, train_texts)
    built = distributed.from_main(build_tokenizer(config, train_texts).to_dict() if distributed.is_main() else None)
    return tokenizer_from_dict(built)


def usable_utterances(utterances, tokenizer, config: ExperimentConfig, skips: SkipLog) -> list:
    """Drop (and log) what CTC cannot train on: too long, no usable tokens, more tokens than output frames."""
    frames_per_second = 1000.0 / config.features.hop_ms / 4  # the model subsamples 4× in time
    kept = []
    for utt in utterances:
        if utt.duration > config.data.max_duration:
            skips.add(utt.id, f"longer than data.max_duration: {utt.duration:.1f} s > {config.data.max_duration} s")
            continue
        unknown = tokenizer.unknown_characters(utt.text)
        if unknown:
            skips.add(utt.id, f"characters the tokenizer lacks: {''.join(sorted(unknown))!r}")
            continue
        tokens = tokenizer.encode(utt.text)
        if not tokens and utt.text.strip():  # an empty transcript is an utterance of no word: CTC's all-blank path
            skips.add(utt.id, "transcript has no usable characters")
            continue
        # CTC needs a frame per token, plus a blank between repeated tokens.
        needed = len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))
        if needed > int(utt.duration * frames_per_second):
            skips.add(utt.id, f"transcript too long for the audio: {needed} CTC frames needed")
            continue
        kept.append(utt)
    return kept


# ----------------------------------------------------------------------------------------------------------------
# Schedule


def lr_factor(optim: OptimConfig, warmup_progress: float, decay_progress: float) -> float:
    """Multiplier of optim.lr: linear warmup, then cosine decay, Noam's inverse square root, or constant.

    `warmup_progress` is how far along the warmup is (1 at its end: (step + 1) / warmup steps, or under
    `optim.decay_by: time` the time spent over the warmup's share of the budget); `decay_progress` how far the decay
    is, from 0 (end of warmup) to 1 (end of training), so that a run on a time budget still anneals to its lowest
    rate whatever the speed of the machine.
    """
    if warmup_progress < 1:
        return max(0.0, warmup_progress)
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "noam":
        return math.sqrt(1 / warmup_progress)
    if optim.schedule == "cosine":
        progress = min(1.0, max(0.0, decay_progress))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError(f"optim.schedule: {optim.schedule!r} is not cosine, noam or constant")


@dataclass
class Schedule:
    """The learning rate's multiplier at each step of a run of `total_steps`: warmup and decay by steps, or by the
    time spent of a budget of `budget_seconds` (train.max_minutes) under `optim.decay_by: time`."""
    optim: OptimConfig
    total_steps: int
    budget_seconds: float

    def __post_init__(self):
        if self.optim.schedule == "noam" and not self.optim.warmup_fraction:
            raise ConfigError("optim.schedule: noam decays from the end of its warmup; set optim.warmup_fraction")
        if self.optim.decay_by not in ("steps", "time"):
            raise ConfigError(f"optim.decay_by: {self.optim.decay_by!r} is not 'steps' or 'time'")
        if self.optim.decay_by == "time" and not self.budget_seconds:
            raise ConfigError("optim.decay_by: 'time' needs a time budget (train.max_minutes)")
        self.warmup_steps = max(1, round(self.optim.warmup_fraction * self.total_steps))

    def factor(self, step: int, elapsed: float) -> float:
        """The multiplier of optim.lr for the step after `step` steps taken and `elapsed` seconds trained."""
        optim, budget = self.optim, self.budget_seconds
        if optim.decay_by == "time":
            warmup = optim.warmup_fraction * budget
            return lr_factor(optim, elapsed / warmup if warmup else math.inf, (elapsed - warmup) / (budget - warmup))
        return lr_factor(optim, (step + 1) / self.warmup_steps,
                         (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))


# ----------------------------------------------------------------------------------------------------------------
# Preparation: what training needs from the config, the data and the checkpoint, before any model


@dataclass
class Prepared:
    config: ExperimentConfig  # a copy of the caller's, with the model's input and output sizes the data decided
    tokenizer: Tokenizer
    train_utts: list[Utterance]  # those CTC can train on
    dev_utts: list[Utterance]
    skips: SkipLog  # the training utterances left out, and why
    cmvn: dict | None  # global statistics, under normalization global (or speaker: for audio of no known speaker)
    speaker_cmvn: SpeakerStats | None  # each speaker's statistics, under normalization speaker
    dev_speaker_cmvn: SpeakerStats | None
    checkpoint_path: Path | None  # the checkpoint to resume from, and what it holds
    checkpoint: dict | None


def prepare_training(config: ExperimentConfig, out: Path, resume: bool = False, progress: bool = False) -> Prepared:
    """Read the manifests, build the tokenizer (or take the checkpoint's), keep what CTC can train on, and estimate
    the CMVN statistics the features need. Every process calls it: the main process builds the tokenizer and the
    statistics, the others take them from it. A resumed run takes its tokenizer from the checkpoint and its statistics
    from the files the first start wrote. The caller's config is left as it was."""
    checkpoint_path = latest_checkpoint(out) if resume else None
    if resume and checkpoint_path is None and distributed.is_main():
        log.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
    checkpoint = load_checkpoint(checkpoint_path) if checkpoint_path else None
    if not config.data.train:
        raise ConfigError("data.train: no training manifest given")
    utterances = read_manifest(config.data.train)
    if checkpoint:
        tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
    else:
        tokenizer = main_process_tokenizer(config, [u.text for u in utterances])
    skips = SkipLog()
    train_utts = usable_utterances(utterances, tokenizer, config, skips)
    if not train_utts:
        raise AsrError(f"{config.data.train}: no usable training utterances ({skips.summary()})")
    dev_utts = read_manifest(config.data.dev) if config.data.dev else []
    config = copy.deepcopy(config)
    config.model.vocab_size, config.model.input_dim = tokenizer.vocab_size, config.features.n_mels

    features, cmvn, speaker_cmvn, dev_speaker_cmvn = config.features, None, None, None
    if features.normalization in ("global", "speaker"):
        cmvn = load_cmvn(config.data.cmvn, features) if config.data.cmvn else estimated_once(
            out / "cmvn.json", lambda path: load_cmvn(path, features),
            lambda: estimate_cmvn(train_utts, features, max_utterances=2000, progress=progress))
    if features.normalization == "speaker":
        def by_speaker(name: str, utterances) -> SpeakerStats:
            # Estimated again on resume if the manifest has speakers the file lacks.
            speakers = {utterance.speaker for utterance in utterances} - {None}
            return estimated_once(out / f"speaker_cmvn_{name}.json", lambda path: load_speaker_stats(path, cmvn),
                                  lambda: SpeakerStats.estimate(utterances, features, cmvn, progress=progress),
                                  save=save_speaker_stats, still_valid=lambda saved: speakers <= saved.speakers)

        speaker_cmvn, dev_speaker_cmvn = by_speaker("train", train_utts), by_speaker("dev", dev_utts)
    return Prepared(config, tokenizer, train_utts, dev_utts, skips, cmvn, speaker_cmvn, dev_speaker_cmvn,
                    checkpoint_path, checkpoint)


def estimated_once(path: Path, load, estimate, save=save_cmvn, still_valid=lambda saved: True):
    """Statistics computed by the main process with `estimate()` and written to `path` with `save` (unless the file
    there is `still_valid`), then read from it with `load` by every process, and by a resumed run."""
    if distributed.is_main() and not (path.exists() and still_valid(load(path))):
        save(path, estimate())
    distributed.barrier()
    return load(path)


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint the main process resumes from, on every process. The experiment folder must be one that every
    node sees (a shared file system): a node that does not see the checkpoint stops the run, rather than train from
    scratch beside the others."""
    latest = CheckpointDir(out / "checkpoints").latest()
    chosen = distributed.from_main(str(latest) if latest else None)
    if not distributed.all_agree(chosen is None or Path(chosen).is_file()):
        raise AsrError(f"{chosen}: the checkpoint to resume from is missing on some node; --exp-dir must be a folder "
                       f"that every node sees (a shared file system)")
    return Path(chosen) if chosen else None




# ----------------------------------------------------------------------------------------------------------------
# Start-up: this process's side of a run, up to a trainer ready to run


def train(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True) -> Path | None:
    """Train a model as configured; returns the path of model.pt (on rank 0; None on the others)."""
    return start_training(config, out_dir, resume=resume, device=device, progress=progress).run()


def start_training(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
                   progress: bool = True) -> Trainer:
    """Join the run's processes, seed, open the experiment folder (train.log; what interrupted writes left in its
    checkpoints removed), prepare what training needs and assemble the trainer."""
    out = Path(out_dir)
    device = distributed.start(device)
    progress = progress and distributed.is_main()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        open_train_log(out / "train.log")
        for leftover in CheckpointDir(out / "checkpoints").remove_unfinished_writes():
            log.warning("removed %s: a checkpoint whose writing was interrupted", leftover)
    return Trainer(prepare_training(config, out, resume=resume, progress=progress), out, device, progress)


def open_train_log(path: Path) -> None:
    """Log asr.train to `path` (the main process only), in place of a crashed trainer's log in this process."""
    close_train_log()
    handler = logging.FileHandler(path)
    handler.asr_train_log = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def close_train_log() -> None:
    for handler in [h for h in log.handlers if getattr(h, "asr_train_log", False)]:
        log.removeHandler(handler)
        handler.close()


def open_tensorboard(folder: Path):
    """A tensorboard SummaryWriter into `folder`, or None without tensorboard (train.log has every figure too)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard not installed: scalars go to train.log only")
        return None
    return SummaryWriter(str(folder))


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model under DDP when there are several processes; the model itself in one."""
    if distributed.world_size() == 1:
        return model
    # No buffer broadcast at each forward: the only buffers are CMVN statistics, the same on every rank, and that
    # broadcast would make the ranks' numbers of micro-batches a step have to match. (torch >= 2.14 names the setting
    # forward_sync_buffers and warns about the old name.)
    ddp = torch.nn.parallel.DistributedDataParallel
    no_forward_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
        else "broadcast_buffers"
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **{no_forward_sync: False})


# ----------------------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class TrainingState:
    """How far training is: saved in every checkpoint, restored on resume (with the optimizer's, the sampler's and the
    random generators' own states)."""
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    elapsed: float = 0.0  # seconds spent training, summed over resumed runs (the time budget and decay_by read it)
    bad_batches: int = 0  # steps skipped: a NaN loss, or a batch too large for the GPU
    history: list[dict] = field(default_factory=list)  # validation results
    best: list[tuple[float, int]] = field(default_factory=list)  # (dev WER, step) of the kept best checkpoints
    # Not saved: a resumed run counts afresh.
    bad_in_row: int = 0  # steps skipped since the last one taken
    clock: float = 0.0  # time.perf_counter() when training time last started counting


@dataclass
class LogWindow:
    """The steps since the last train record: their loss and tokens (this rank's loss; every rank's tokens)."""
    loss_sum: float = 0.0
    tokens: float = 0.0
    audio_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, figures: dict) -> None:
        self.loss_sum += figures["loss_sum"]
        self.tokens += figures["tokens"]
        self.audio_seconds += figures["audio_seconds"]


class Trainer:
    """The model, its optimizer and the batches of a prepared run, and the loop that trains them (`run`)."""

    def __init__(self, prepared: Prepared, out: Path, device: torch.device, progress: bool = False):
        self.config = config = prepared.config
        self.out, self.device, self.progress = out, device, progress
        self.world_size = distributed.world_size()
        self.tokenizer, self.skips = prepared.tokenizer, prepared.skips
        self.train_utts, self.dev_utts, self.dev_speaker_cmvn = prepared.train_utts, prepared.dev_utts, \
            prepared.dev_speaker_cmvn
        self.checkpoints = CheckpointDir(out / "checkpoints")
        if distributed.is_main():  # with what the data decided: the model's input and output sizes
            save_config(config, out / "config.yaml")

        self.model = Recognizer(config.model, config.features, self.tokenizer, config.specaugment, prepared.cmvn)
        self.model.to(device)
        self.ddp_model = data_parallel(self.model, device)

        # Batches: every rank computes the same global batches, one an optimizer step, and takes its share of each.
        self.dataset = SpeechDataset(self.train_utts, self.tokenizer, speed_factors=tuple(config.data.speed_factors),
                                     seed=config.train.seed, sample_rate=config.features.sample_rate,
                                     speaker_stats=prepared.speaker_cmvn, augment=config.augment)
        self.sampler = DurationBucketSampler(self.dataset.played_durations, config.data.max_seconds,
                                             seed=config.train.seed, shuffle=True, num_buckets=config.data.num_buckets,
                                             rank=distributed.rank(), world_size=self.world_size,
                                             sortagrad=config.data.sortagrad,
                                             device_max_seconds=config.data.device_max_seconds)
        self.loader_seeds = torch.Generator()  # loaders draw worker seeds from it, not from the global RNG
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=config.data.num_workers,
            pin_memory=device.type == "cuda", generator=self.loader_seeds, persistent_workers=False)
        # The run's length counts shuffled epochs: SortaGrad's sorted first epoch packs into fewer batches.
        self.steps_per_epoch = self.sampler.steps_in_shuffled_epoch()
        self.schedule = Schedule(config.optim, config.train.max_steps or self.steps_per_epoch * config.train.epochs,
                                 config.train.max_minutes * 60)
        self.state = TrainingState()

        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.schedule.factor(step, self.state.elapsed))
        self.amp_dtype = autocast_dtype(config.train.precision, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=scales_losses(self.amp_dtype))

        if prepared.checkpoint is not None:
            self.restore(prepared.checkpoint)
            log.info("resumed from %s at step %d (epoch %d)", prepared.checkpoint_path, self.state.step,
                     self.state.epoch)
        self.metrics = MetricsLog(out / "metrics.jsonl", self.state.step) if distributed.is_main() else None
        self.tensorboard = open_tensorboard(out / "tensorboard") if distributed.is_main() else None
        self.log_start()

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self) -> Path | None:
        """Train to the end of the run (its steps, epochs or minutes, or early stopping), then `finish`."""
        state, every = self.state, self.config.train
        stop = self.run_is_over()  # a finished run, resumed
        while not stop and state.epoch < every.epochs:
            window = LogWindow()
            for micro_batches in self.epoch_steps():
                figures = self.forward_backward(micro_batches)  # None: the step is skipped on every rank
                if figures is not None:
                    figures.update(self.optimizer_step())  # clip, step
                self.sampler.advance(1)
                self.count_training_time()
                if figures is None:
                    continue
                self.scheduler.step()
                state.step, state.bad_in_row = state.step + 1, 0
                window.add(figures)
                if state.step % every.log_every == 0:
                    self.log_step(window, figures)
                    window = LogWindow()
                stop = self.run_is_over()
                if stop or self.due(every.validate_every):
                    stop = self.validate() or stop
                if stop or self.due(every.checkpoint_every):
                    self.save_checkpoint()
                if stop:
                    break
                state.clock = time.perf_counter()  # validation and checkpoints are not training time
            if self.sampler.position >= self.sampler.num_steps:  # the epoch ran to its end
                stop = self.end_epoch(stop)
        return self.finish()

    def epoch_steps(self):
        """This rank's micro-batches for each step left in the epoch (all of it, or the rest of a resumed one)."""
        epoch = self.state.epoch
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.loader_seeds.manual_seed(self.config.train.seed + epoch)
        self.bar = tqdm(total=self.sampler.num_steps, initial=self.sampler.position, desc=f"epoch {epoch + 1}",
                        disable=not self.progress, dynamic_ncols=True)
        self.state.clock = time.perf_counter()
        loaded = iter(self.loader)  # this rank's micro-batches, in the order of rank_steps()
        try:
            for share in self.sampler.rank_steps():
                yield [next(loaded) for _ in share]
                self.bar.update(1)
        finally:
            self.bar.close()

    def end_epoch(self, stop: bool) -> bool:
        """Count the epoch; validate and checkpoint when not set by steps. True when training should stop."""
        self.state.epoch += 1
        self.sampler.set_epoch(self.state.epoch)  # position back to 0: a checkpoint now resumes at the new epoch
        if not stop and not self.config.train.validate_every:
            stop = self.validate()
        if not stop and not self.config.train.checkpoint_every:
            self.save_checkpoint()
        return stop

    def run_is_over(self) -> bool:
        budget = self.config.train.max_minutes * 60
        return bool(self.state.step >= self.schedule.total_steps or (budget and self.state.elapsed >= budget))

    def due(self, every: int) -> bool:
        return bool(every and self.state.step % every == 0)

    def count_training_time(self) -> None:
        """Add the time since `state.clock` to `state.elapsed` (data loading included), as rank 0 measured it: the
        time budget must end all ranks at the same step, and a learning rate decayed by time must be the same
        everywhere (the scheduler reads it next)."""
        now = time.perf_counter()
        self.state.elapsed = distributed.from_main(self.state.elapsed + now - self.state.clock)
        self.state.clock = now

    # -- one step ------------------------------------------------------------------------------------------------

    def forward_backward(self, batches: list[Batch]) -> dict | None:
        """Accumulate the gradients of this rank's micro-batches of a global batch.

        The loss is the CTC loss summed over every utterance of the step, on every rank, divided by the target tokens
        of the step, on every rank (an empty transcript, a clip of no word, counts as one: its all-blank path): the
        gradient is the same however the global batch was split. (DDP averages the ranks' gradients; each rank's loss
        is multiplied by the number of ranks to make that average a sum.) Returns the step's figures (this rank's
        loss sum; every rank's target tokens and audio seconds), or None when the step is skipped on every rank: all
        its audio unreadable, a loss not finite on some rank, or out of GPU memory."""
        for batch in batches:
            for utt_id, reason in batch.skipped:
                self.skips.add(utt_id, f"unreadable audio: {reason}")
        batches = [batch for batch in batches if len(batch)]
        tokens, audio_seconds, utterances = distributed.sum_over_ranks(
            [sum(target_tokens(b) for b in batches),
             sum(float(b.audio_lengths.sum()) for b in batches) / self.config.features.sample_rate,
             sum(len(b) for b in batches)])
        if not utterances:  # every utterance of the global batch was unreadable
            return None
        weight = 1.0
        if not batches:  # this rank's share is empty, yet DDP needs its backward: silence, weighing nothing
            batches, weight = [silent_batch(self.config.features.sample_rate)], 0.0
        ok, loss_sum, ids = True, 0.0, [utt_id for batch in batches for utt_id in batch.ids]
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            # Gradients are summed over ranks at the backward of each rank's last micro-batch only.
            with nullcontext() if last or self.world_size == 1 else self.ddp_model.no_sync():
                if ok:
                    try:
                        loss = batch_loss(self.ddp_model, batch.to(self.device, non_blocking=True),
                                          self.amp_dtype) * weight
                    except torch.cuda.OutOfMemoryError as error:
                        self.out_of_memory(batch, error)
                        return None
                    ok = bool(torch.isfinite(loss))
                if last:  # before the backward that sums gradients: a NaN on one rank skips the step on all
                    ok = distributed.all_agree(ok)
                if ok:
                    self.scaler.scale(loss * (self.world_size / tokens)).backward()
                    loss_sum += loss.item()
        if not ok:
            self.skip_step("loss is NaN or infinite", ids)
            return None
        return {"loss_sum": loss_sum, "tokens": tokens, "audio_seconds": audio_seconds}

    def out_of_memory(self, batch: Batch, error: Exception) -> None:
        if self.world_size > 1:  # the other ranks would wait for this one's gradients forever
            raise AsrError(f"step {self.state.step}: out of GPU memory on a batch of {len(batch)} utterances "
                           f"({' '.join(batch.ids[:5])}); lower data.device_max_seconds") from error
        torch.cuda.empty_cache()
        self.skip_step("out of GPU memory; lower data.device_max_seconds", batch.ids)

    def skip_step(self, reason: str, ids: list[str]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.bad_batches += 1
        self.state.bad_in_row += 1
        log.warning("step %d: skipped a batch (%s): %s", self.state.step, reason, " ".join(ids[:5]))
        if self.state.bad_in_row >= self.config.train.max_bad_batches_in_row:
            raise AsrError(f"{self.state.bad_in_row} bad batches in a row (last: {reason}); stopping. Lower "
                           f"optim.lr, check the data, or raise train.max_bad_batches_in_row")

    def optimizer_step(self) -> dict:
        """Clip the accumulated gradients and take the step; returns its learning rate and gradient norm."""
        lr = self.optimizer.param_groups[0]["lr"]  # this step's (the scheduler moves on after it)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": lr, "grad_norm": float(grad_norm)}

    # -- what the run reports ------------------------------------------------------------------------------------

    def log_start(self) -> None:
        """What the run is, in train.log and metrics.jsonl: the processes, the global batch and the run's length."""
        if not distributed.is_main():
            return
        data, schedule = self.config.data, self.schedule
        hours = sum(u.duration for u in self.train_utts) / 3600
        log.info("model: %s", self.model.describe())
        log.info("training on %d utterances (%.1f h) on %s, %d process(es); skipped: %s", len(self.train_utts),
                 hours, self.device, self.world_size, self.skips.summary())
        forwarding = "its whole share at once"
        if data.device_max_seconds:
            micro = math.ceil(data.max_seconds / (self.world_size * data.device_max_seconds))
            forwarding = f"at most {data.device_max_seconds:g} s at once (about {micro} micro-batch(es) a step)"
        by_time = self.config.optim.decay_by == "time"
        warmup = f"{self.config.optim.warmup_fraction:g} of train.max_minutes" if by_time else \
            f"{schedule.warmup_steps} steps"
        log.info("global batch %g padded s a step over %d process(es), each forwarding %s; %d steps an epoch, %d steps "
                 "in all, warmup %s", data.max_seconds, self.world_size, forwarding, self.steps_per_epoch,
                 schedule.total_steps, warmup)
        self.metrics.write(event="start", step=self.state.step, epochs_done=self.state.epoch,
                           world_size=self.world_size, device=str(self.device), global_batch_seconds=data.max_seconds,
                           device_max_seconds=data.device_max_seconds, steps_per_epoch=self.steps_per_epoch,
                           total_steps=schedule.total_steps, warmup_steps=None if by_time else schedule.warmup_steps,
                           utterances=len(self.train_utts), audio_hours=hours, train_manifest=data.train)

    def log_step(self, window: LogWindow, figures: dict) -> None:
        """The loss per token over the steps since the last log (every rank's), the learning rate of the last step."""
        loss = distributed.sum_over_ranks([window.loss_sum])[0] / window.tokens
        lr, grad_norm = figures["lr"], figures["grad_norm"]
        rate = window.audio_seconds / (time.perf_counter() - window.start)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{rate:.0f}")
        if not distributed.is_main():
            return
        state = self.state
        log.info("step %d epoch %d loss %.4f lr %.3e grad_norm %.2f audio_s_per_s %.1f", state.step, state.epoch + 1,
                 loss, lr, grad_norm, rate)
        self.metrics.write(event="train", step=state.step, epoch=state.epoch + 1, lr=lr, loss=loss,
                           grad_norm=grad_norm, audio_seconds=window.audio_seconds, tokens=int(window.tokens),
                           audio_seconds_per_second=rate, world_size=self.world_size,
                           global_batch_seconds=self.config.data.max_seconds, elapsed=state.elapsed)
        self.plot("train", loss=loss, lr=lr, grad_norm=grad_norm, audio_seconds_per_second=rate)

    def plot(self, prefix: str, **values: float) -> None:
        if self.tensorboard:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{prefix}/{name}", value, self.state.step)

    # -- validation and checkpoints ------------------------------------------------------------------------------

    def validate(self) -> bool:
        """Dev loss and WER (rank 0); keeps the best model files. True (on every rank) when early stopping says
        stop."""
        if not self.dev_utts:
            return False
        stop = False
        state = self.state
        if distributed.is_main():
            result = self.dev_figures()
            result.update(step=state.step, epoch=state.epoch)
            state.history.append(result)
            log.info("validation step %d: dev loss %.4f WER %.2f%% CER %.2f%% (%d utterances)", state.step,
                     result["loss"], 100 * result["wer"], 100 * result["cer"], result["utterances"])
            self.metrics.write(event="validation", step=state.step, epochs_done=state.epoch, dev_loss=result["loss"],
                               dev_wer=result["wer"], dev_cer=result["cer"], dev_utterances=result["utterances"])
            self.plot("dev", loss=result["loss"], wer=result["wer"], cer=result["cer"])
            self.keep_if_best(result["wer"])
            stop = self.no_longer_improving()
        return distributed.from_main(stop)

    def dev_figures(self) -> dict:
        """The dev set's loss per token, and its WER and CER as `asr evaluate` scores them."""
        speaker_cmvn = self.dev_speaker_cmvn
        loss = dev_loss(self.model, self.dev_utts, self.config, progress=self.progress, speaker_cmvn=speaker_cmvn)
        result, _ = score_utterances(
            self.model, self.dev_utts, name=self.config.data.dev, progress=self.progress,
            speaker_cmvn=None if speaker_cmvn is None else [speaker_cmvn.rows(u.speaker).numpy()
                                                            for u in self.dev_utts])
        return {"loss": loss, "wer": result.wer, "cer": result.cer, "utterances": result.utterances}

    def no_longer_improving(self) -> bool:
        """Early stopping: no better dev WER in the last train.early_stop_patience validations."""
        history, patience = self.state.history, self.config.train.early_stop_patience
        if not patience or len(history) <= patience:
            return False
        stop = min(h["wer"] for h in history[-patience:]) >= min(h["wer"] for h in history[:-patience])
        if stop:
            log.info("early stopping: no dev WER improvement in %d validations", patience)
        return stop

    def keep_if_best(self, wer: float) -> None:
        """Save this validation's model file, and keep the train.keep_best best (lowest dev WER)."""
        keep, best = self.config.train.keep_best, self.state.best
        best.append((wer, self.state.step))
        best.sort()
        self.checkpoints.save_best(self.state.step, self.model, self.metadata())
        for _, step in best[keep:]:
            self.checkpoints.remove_best(step)
        del best[keep:]

    def save_checkpoint(self) -> None:
        """Every process calls it: the main one writes, with every process's random generators and skipped utterances
        (each met the unreadable files of its own shares)."""
        rng_states = distributed.gather(rng_state())
        self.gather_skips()
        if distributed.is_main():
            self.checkpoints.save_checkpoint(self.state.step, self.model, self.trainer_state(rng_states),
                                             self.metadata(), keep=self.config.train.keep_checkpoints)

    def gather_skips(self) -> None:
        for entries in distributed.gather(self.skips.entries):
            for utt_id, reason in entries.items():
                self.skips.add(utt_id, reason)

    def trainer_state(self, rng_states: list[dict]) -> dict:
        """What a checkpoint holds besides the model file: the state, the optimizer's, scheduler's, scaler's and
        sampler's, every process's random generators and the utterances skipped so far."""
        saved = {key: value for key, value in dataclasses.asdict(self.state).items()
                 if key not in ("bad_in_row", "clock")}
        return {
            **saved, "best": [list(b) for b in self.state.best],
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng_states,
            "skipped": [list(s) for s in self.skips.entries.items()],
        }

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint: the model, the trainer's state, this process's random generators."""
        saved = payload["trainer"]
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_loss_scaler(self.scaler, saved["scaler"])
        self.sampler.load_state_dict(saved["sampler"])
        # Each process's own generators (they drew different SpecAugment masks and dropout); one set a process, or a
        # single one in checkpoints of a single process.
        rng_states = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]
        set_rng_state(rng_states[distributed.rank() % len(rng_states)])
        self.state = TrainingState(step=saved["step"], epoch=saved["epoch"], elapsed=saved["elapsed"],
                                   bad_batches=saved["bad_batches"], history=saved["history"],
                                   best=[tuple(b) for b in saved["best"]])
        self.skips.entries = dict(saved["skipped"])  # with the unreadable files met before the interruption

    def metadata(self) -> dict:
        state = self.state
        return {"step": state.step, "epoch": state.epoch, "train_manifest": self.config.data.train,
                "dev_manifest": self.config.data.dev, "train_hours": state.elapsed / 3600,
                "dev_wer": state.history[-1]["wer"] if state.history else None, "asr_config": self.config.to_dict()}

    # -- the end -------------------------------------------------------------------------------------------------

    def finish(self) -> Path | None:
        """Write the list of skipped utterances, the validation history, then model.pt (as train.final_model says,
        the best by dev WER or the last weights; the last where there is no dev set): a model.pt means the run
        finished."""
        model_path = None
        self.gather_skips()
        state = self.state
        if distributed.is_main():
            self.skips.write(self.out / "skipped.tsv")
            (self.out / "history.json").write_text(json.dumps(state.history, indent=1))
            model_path = self.out / "model.pt"
            if state.best and self.config.train.final_model == "best":
                # the best model file by dev WER, copied with the same atomic write as every checkpoint
                write_atomically(read_plain_data(self.checkpoints.best_model(state.best[0][1])), model_path)
            else:
                save_model(self.model, model_path, self.metadata())
            log.info("done: %d steps, %.1f min of training; %d bad batches skipped; utterances skipped: %s; model: %s",
                     state.step, state.elapsed / 60, state.bad_batches, self.skips.summary(), model_path)
            self.metrics.write(event="done", step=state.step, epochs_done=state.epoch, elapsed=state.elapsed,
                               bad_batches=state.bad_batches, skipped=len(self.skips.entries))
            if self.tensorboard:
                self.tensorboard.close()
            close_train_log()
        # Free DDP (and the Reducer that holds the process group) now, before the group is destroyed: DDP is in a
        # reference cycle, so letting it go frees nothing until a collection, and the trainer itself may live on
        # until the interpreter exits (its scheduler's lambda refers to it). A DDP freed during interpreter shutdown
        # now and then aborted a finished worker ("terminate called without an active exception").
        self.ddp_model = self.model
        gc.collect()
        distributed.stop()
        return model_path


def restore_loss_scaler(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Load a checkpoint's GradScaler state; one saved while losses were not scaled (bf16 before scales_losses) is
    empty, and a scaler that scales then starts afresh from its initial scale."""
    if saved or not scaler.is_enabled():
        scaler.load_state_dict(saved)
    else:
        log.info("the checkpoint's loss scaler was off; scaling losses from GradScaler's initial scale")


# ----------------------------------------------------------------------------------------------------------------
# Losses


def batch_loss(model: torch.nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """A training batch's CTC loss, summed over its utterances (the step divides it by the tokens of the whole
    step), under autocast to `amp_dtype` when it is one."""
    with torch.autocast(batch.audio.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
        log_probs, out_lengths = model(batch.audio, batch.audio_lengths, batch.speaker_cmvn)
    return ctc_loss_sum(log_probs, out_lengths, batch)


def ctc_loss_sum(log_probs: torch.Tensor, out_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
    # CTC in fp32: its log-sum-exp over long lattices loses too much in half precision.
    return F.ctc_loss(log_probs.float().transpose(0, 1), batch.tokens, out_lengths, batch.token_lengths,
                      blank=0, reduction="sum", zero_infinity=True)


def target_tokens(batch: Batch) -> int:
    """What a batch's summed CTC loss is divided by: its target tokens, an empty transcript counting as one."""
    return int(batch.token_lengths.clamp(min=1).sum())


def silent_batch(sample_rate: int) -> Batch:
    """A second of silence with a one-token transcript: what a rank whose share of a step is empty forwards, its loss
    weighted by zero, so that its gradients (zeros) join the other ranks'."""
    return collate([{"id": "(silence)", "audio": torch.zeros(sample_rate), "tokens": torch.tensor([1]),
                     "text": ""}])


@torch.no_grad()
def dev_loss(model: Recognizer, utterances, config: ExperimentConfig, progress: bool = False,
             speaker_cmvn: SpeakerStats | None = None) -> float:
    """CTC loss per target token (as the trainer's) of a model on utterances, in batches of what one device forwards
    at once, without augmentation; `speaker_cmvn`: their speakers' statistics, for a model normalized by speaker.
    (Their WER is `asr.evaluate.score_utterances`', which names the unreadable ones.)"""
    was_training = model.training
    model.eval()
    dataset = SpeechDataset(utterances, model.tokenizer, sample_rate=config.features.sample_rate,
                            speaker_stats=speaker_cmvn)
    sampler = DurationBucketSampler([u.duration for u in utterances],
                                    config.data.device_max_seconds or config.data.max_seconds, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=min(2, config.data.num_workers))
    loss_sum, tokens = 0.0, 0
    for batch in tqdm(loader, desc="dev loss", disable=not progress, leave=False, dynamic_ncols=True):
        if not batch.ids:
            continue
        batch = batch.to(model.device)
        log_probs, out_lengths = model(batch.audio, batch.audio_lengths, batch.speaker_cmvn)
        loss_sum += ctc_loss_sum(log_probs, out_lengths, batch).item()
        tokens += target_tokens(batch)
    model.train(was_training)
    return loss_sum / max(1, tokens)
