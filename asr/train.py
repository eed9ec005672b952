"""The training loop: CTC on bucketed batches, AdamW with warmup, mixed precision, DDP, checkpoints and exact resume.

`asr train --config conf/train.yaml --out exp/NAME [section.key=value ...] [--resume]`, or under torchrun for several
GPUs or nodes (`torchrun --nproc_per_node 8 -m asr train ...`): each rank reads its own shard of every epoch's batches,
gradients are averaged by DistributedDataParallel, and only rank 0 writes files.

What a run leaves in `exp/NAME/`: `config.yaml` (the effective config), `train.log`, `tensorboard/`, `checkpoints/`
(`ckpt-<step>.pt` with the trainer's state; `best-<step>.pt` model files, the best by dev WER), `model.pt` (the best,
or the last when there is no dev set), `skipped.tsv` (every utterance not trained on, and why).

Resuming restores the model, optimizer, scheduler, grad scaler, the sampler's position inside the epoch and every
random number generator, so a resumed run follows the same losses as one never stopped (tests/test_train.py).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from asr.checkpoint import (load_checkpoint, read_plain_data, remove_unfinished_writes, save_checkpoint, save_model,
                            write_atomically)
from asr.config import ExperimentConfig, save_config
from asr.data.dataset import SpeechDataset, collate
from asr.data.manifest import read_manifest
from asr.data.sampler import DurationBucketSampler
from asr.decoding import GreedyDecoder
from asr.errors import AsrError, ConfigError
from asr.features import SpeakerCmvn, estimate_cmvn, estimate_speaker_cmvn, load_cmvn, save_cmvn
from asr.recognizer import Recognizer
from asr.scoring import score
from asr.text import BpeTokenizer, CharTokenizer, load_tokenizer, normalize_text, tokenizer_from_dict

log = logging.getLogger("asr.train")


# ----------------------------------------------------------------------------------------------------------------
# Processes and devices


@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_processes(device: str | None) -> Processes:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(device=torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(dist.get_rank(), world_size, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


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


@dataclass
class SkipLog:
    """Utterances not trained on, by reason: counted, listed in skipped.tsv, summed up at the end. Never silent.

    An unreadable file is met again every epoch, and again after a resume: it is listed once, with its first reason.
    """
    entries: dict = field(default_factory=dict)  # utterance id → reason

    def add(self, utt_id: str, reason: str) -> None:
        self.entries.setdefault(utt_id, reason)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for reason in self.entries.values():
            key = reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "none"


def build_tokenizer(config: ExperimentConfig, train_texts: list[str]):
    tok = config.tokenizer
    if tok.path:
        return load_tokenizer(tok.path)
    if tok.kind == "char":
        return CharTokenizer()
    if tok.kind == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=tok.vocab_size, model_type=tok.model_type)
    raise ConfigError(f"tokenizer.kind: {tok.kind!r} is not 'char' or 'bpe'")


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
        if not tokens:
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


def lr_factor(step: int, config: ExperimentConfig, decay_progress: float) -> float:
    """Multiplier of optim.lr at a step: linear warmup, then cosine decay, Noam's inverse square root, or constant.

    `decay_progress` is how far along the decay is, from 0 (end of warmup) to 1 (end of training): by steps, or with
    `optim.decay_by: time` by the share of `train.max_minutes` spent, so that a run on a time budget still anneals
    to its lowest rate whatever the speed of the machine.
    """
    optim = config.optim
    warmup = max(1, optim.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "noam":
        return math.sqrt(warmup / (step + 1))
    if optim.schedule == "cosine":
        progress = min(1.0, max(0.0, decay_progress))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError(f"optim.schedule: {optim.schedule!r} is not cosine, noam or constant")


# ----------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    def __init__(self, config: ExperimentConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
                 progress: bool = True):
        self.config = config
        self.out = Path(out_dir)
        self.procs = start_processes(device)
        self.progress = progress and self.procs.is_main
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        seed_everything(config.train.seed)
        checkpoint = self._latest_checkpoint() if resume else None
        if resume and checkpoint is None and self.procs.is_main:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out / "checkpoints")
        if self.procs.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._setup_logging()
        if self.procs.is_main:
            for leftover in remove_unfinished_writes(self.out / "checkpoints"):
                log.warning("removed %s: a checkpoint whose writing was interrupted", leftover)
        self.skips = SkipLog()
        payload = load_checkpoint(checkpoint) if checkpoint else None

        # Data and tokenizer. A resumed run takes its tokenizer and CMVN statistics from the checkpoint.
        if not config.data.train:
            raise ConfigError("data.train: no training manifest given")
        train_utts = read_manifest(config.data.train)
        if payload:
            self.tokenizer = tokenizer_from_dict(payload["tokenizer"])
        else:
            self.tokenizer = self._rank0_tokenizer(config, [u.text for u in train_utts])
        self.train_utts = usable_utterances(train_utts, self.tokenizer, config, self.skips)
        if not self.train_utts:
            raise AsrError(f"{config.data.train}: no usable training utterances ({self.skips.summary()})")
        self.dev_utts = read_manifest(config.data.dev) if config.data.dev else []

        # Model.
        config.model.vocab_size = self.tokenizer.vocab_size
        config.model.input_dim = config.features.n_mels
        if self.procs.is_main:  # now that it holds what the data decided: the model's input and output sizes
            save_config(config, self.out / "config.yaml")
        cmvn = None
        if config.features.normalization in ("global", "speaker"):  # under `speaker`, for audio of no known speaker
            cmvn = self._cmvn_stats()  # on resume, the file the first start wrote: the checkpoint holds the same
        self.model = Recognizer(config.model, config.features, self.tokenizer, config.specaugment, cmvn)
        self.speaker_cmvn = self.dev_speaker_cmvn = None  # statistics by speaker, under `normalization: speaker`
        if config.features.normalization == "speaker":
            self.speaker_cmvn = SpeakerCmvn(self._speaker_cmvn_stats("train", self.train_utts), cmvn)
            self.dev_speaker_cmvn = SpeakerCmvn(self._speaker_cmvn_stats("dev", self.dev_utts), cmvn)
        self.model.to(self.procs.device)
        self.ddp_model = self.model
        if self.procs.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.procs.device.index] if self.procs.device.type == "cuda" else None)

        # Batches: every rank sees its own shard of the same bucketed, shuffled epoch.
        self.dataset = SpeechDataset(self.train_utts, self.tokenizer, speed_factors=tuple(config.data.speed_factors),
                                     seed=config.train.seed, sample_rate=config.features.sample_rate,
                                     speaker_cmvn=self.speaker_cmvn)
        self.sampler = DurationBucketSampler([u.duration for u in self.train_utts], config.data.max_seconds,
                                             seed=config.train.seed, shuffle=True, rank=self.procs.rank,
                                             world_size=self.procs.world_size, sortagrad=config.data.sortagrad)
        steps_per_epoch = math.ceil(len(self.sampler) / config.optim.accum_steps)
        self.total_steps = config.train.max_steps or steps_per_epoch * config.train.epochs

        # Progress counters (all restored on resume; the schedule reads elapsed).
        self.step = 0  # optimizer steps taken
        self.epoch = 0
        self.elapsed = 0.0  # seconds spent training, summed over resumed runs
        self.bad_batches = 0
        self.history: list[dict] = []  # validation results
        self.best: list[tuple[float, int]] = []  # (dev WER, step) of the kept best checkpoints

        # Optimization.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config, self._decay_progress(step)))
        self.amp_dtype = autocast_dtype(config.train.precision, self.procs.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=scales_losses(self.amp_dtype))

        if payload is not None:
            self._restore(payload)
            log.info("resumed from %s at step %d (epoch %d)", checkpoint, self.step, self.epoch)
        if self.procs.is_main:
            log.info("model: %s", self.model.describe())
            log.info("training on %d utterances (%.1f h) on %s, %d process(es); skipped: %s",
                     len(self.train_utts), sum(u.duration for u in self.train_utts) / 3600, self.procs.device,
                     self.procs.world_size, self.skips.summary())

    # -- set-up helpers ------------------------------------------------------------------------------------------

    def _decay_progress(self, step: int) -> float:
        """How far the learning-rate decay is: by steps, or by time spent of train.max_minutes (optim.decay_by)."""
        optim, budget = self.config.optim, self.config.train.max_minutes * 60
        if optim.decay_by == "time":
            if not budget:
                raise ConfigError("optim.decay_by: 'time' needs a time budget (train.max_minutes)")
            return self.elapsed / budget
        if optim.decay_by != "steps":
            raise ConfigError(f"optim.decay_by: {optim.decay_by!r} is not 'steps' or 'time'")
        warmup = max(1, optim.warmup_steps)
        return (step - warmup) / max(1, self.total_steps - warmup)

    def _setup_logging(self) -> None:
        self.writer = None
        if not self.procs.is_main:
            return
        for stale in [h for h in log.handlers if getattr(h, "asr_train_log", False)]:  # a crashed trainer's
            log.removeHandler(stale)
            stale.close()
        handler = logging.FileHandler(self.out / "train.log")
        handler.asr_train_log = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:  # tensorboard is optional: the plain log has every figure too
            log.info("tensorboard not installed: scalars go to train.log only")

    def _cmvn_stats(self) -> dict:
        """Global CMVN statistics: data.cmvn's file, or estimated once into exp/NAME/cmvn.json."""
        if self.config.data.cmvn:
            return load_cmvn(self.config.data.cmvn)
        return self._estimated_once(
            self.out / "cmvn.json", load_cmvn,
            lambda: estimate_cmvn(self.train_utts, self.config.features, max_utterances=2000, progress=self.progress))

    def _speaker_cmvn_stats(self, name: str, utterances) -> dict[str, dict]:
        """Each speaker's CMVN statistics over `utterances`, estimated once into exp/NAME/speaker_cmvn_NAME.json
        (again on resume if the manifest has other speakers)."""
        speakers = {utterance.speaker for utterance in utterances} - {None}
        return self._estimated_once(
            self.out / f"speaker_cmvn_{name}.json", lambda path: json.loads(path.read_text()),
            lambda: estimate_speaker_cmvn(utterances, self.config.features, progress=self.progress),
            still_valid=lambda saved: speakers <= saved.keys())

    def _estimated_once(self, path: Path, load, estimate, still_valid=lambda saved: True):
        """Statistics computed by rank 0 with `estimate()` into `path` (unless the file there is `still_valid`), then
        read from it with `load` by every rank, and by a resumed run."""
        if self.procs.is_main and not (path.exists() and still_valid(load(path))):
            save_cmvn(path, estimate())
        if self.procs.world_size > 1:
            dist.barrier()
        return load(path)

    def _latest_checkpoint(self) -> Path | None:
        checkpoints = sorted((self.out / "checkpoints").glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
        return checkpoints[-1] if checkpoints else None

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        return {
            "step": self.step, "epoch": self.epoch, "elapsed": self.elapsed, "bad_batches": self.bad_batches,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng_state(),
            "history": self.history, "best": [list(b) for b in self.best],
            "skipped": [list(s) for s in self.skips.entries.items()],
        }

    def _restore(self, payload: dict) -> None:
        state = payload["trainer"]
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        else:  # saved while losses were not scaled (bf16 before scales_losses): the scaler starts afresh
            log.info("the checkpoint's loss scaler was off; scaling losses from GradScaler's initial scale")
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.step, self.epoch, self.elapsed = state["step"], state["epoch"], state["elapsed"]
        self.bad_batches = state["bad_batches"]
        self.history = state["history"]
        self.best = [tuple(b) for b in state["best"]]
        self.skips.entries = dict(state["skipped"])  # with the unreadable files met before the interruption

    def _metadata(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "train_manifest": self.config.data.train,
                "dev_manifest": self.config.data.dev, "train_hours": self.elapsed / 3600,
                "dev_wer": self.history[-1]["wer"] if self.history else None, "asr_config": self.config.to_dict()}

    def save_checkpoint(self) -> None:
        if not self.procs.is_main:
            return
        folder = self.out / "checkpoints"
        save_checkpoint(folder / f"ckpt-{self.step}.pt", self.model, self._trainer_state(), self._metadata())
        for old in sorted(folder.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[:-self.config.train.keep_checkpoints]:
            old.unlink()

    def _keep_if_best(self, wer: float) -> None:
        folder = self.out / "checkpoints"
        self.best.append((wer, self.step))
        self.best.sort()
        save_model(self.model, folder / f"best-{self.step}.pt", self._metadata())
        for _, step in self.best[self.config.train.keep_best:]:
            (folder / f"best-{step}.pt").unlink(missing_ok=True)
        self.best = self.best[:self.config.train.keep_best]

    # -- one step ------------------------------------------------------------------------------------------------

    def _loss(self, batch) -> torch.Tensor:
        with torch.autocast(self.procs.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            log_probs, out_lengths = self.ddp_model(batch.audio, batch.audio_lengths, batch.speaker_cmvn)
        # CTC in fp32: its log-sum-exp over long lattices loses too much in half precision. "mean" divides each
        # utterance's loss by its target length, then averages over the batch.
        return F.ctc_loss(log_probs.float().transpose(0, 1), batch.tokens, out_lengths, batch.token_lengths,
                          blank=0, reduction="mean", zero_infinity=True)

    def _all_ranks_agree(self, ok: bool) -> bool:
        """True only when every rank's batch was fine: a NaN on one rank skips the step everywhere."""
        if self.procs.world_size == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.procs.device)
        dist.all_reduce(flag)
        return flag.item() == 0

    def _rank0_tokenizer(self, config: ExperimentConfig, train_texts: list[str]):
        """The tokenizer built by rank 0, on every rank. Nothing guarantees that sentencepiece, run once a rank, gives
        every rank the same pieces in the same order; if it did not, the replicas would train one output layer on
        different meanings of each token, silently."""
        if self.procs.world_size == 1:
            return build_tokenizer(config, train_texts)
        built = [build_tokenizer(config, train_texts).to_dict() if self.procs.is_main else None]
        dist.broadcast_object_list(built, src=0)
        return tokenizer_from_dict(built[0])

    def _share_elapsed(self) -> None:
        """Every rank takes rank 0's training time: the time budget must end all ranks at the same step, and the
        learning rate decayed by time (optim.decay_by) must be the same everywhere, or the replicas drift apart."""
        if self.procs.world_size == 1:
            return
        elapsed = torch.tensor([self.elapsed], dtype=torch.float64, device=self.procs.device)
        dist.broadcast(elapsed, src=0)
        self.elapsed = elapsed.item()

    def _skip_bad_batch(self, reason: str, ids: list[str]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_batches += 1
        self.bad_in_row += 1
        log.warning("step %d: skipped a batch (%s): %s", self.step, reason, " ".join(ids[:5]))
        if self.bad_in_row >= self.config.train.max_bad_batches_in_row:
            raise AsrError(f"{self.bad_in_row} bad batches in a row (last: {reason}); stopping. Lower optim.lr, "
                           f"check the data, or raise train.max_bad_batches_in_row")

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self) -> Path | None:
        cfg = self.config
        loader_generator = torch.Generator()  # loaders draw worker seeds from it, not from the global RNG
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
            pin_memory=self.procs.device.type == "cuda", generator=loader_generator,
            persistent_workers=False)
        self.bad_in_row = 0
        budget = cfg.train.max_minutes * 60
        stop = self.step >= self.total_steps or bool(budget and self.elapsed >= budget)  # a finished run, resumed
        while not stop and self.epoch < cfg.train.epochs:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            loader_generator.manual_seed(cfg.train.seed + self.epoch)
            bar = tqdm(total=len(self.sampler), initial=self.sampler.position, desc=f"epoch {self.epoch + 1}",
                       disable=not self.progress, dynamic_ncols=True)
            micro = 0  # micro-batches accumulated into the next optimizer step
            window_audio, window_start = 0.0, time.perf_counter()
            self._tick = time.perf_counter()
            for batch in loader:
                self.sampler.advance(1)
                for utt_id, reason in batch.skipped:
                    self.skips.add(utt_id, f"unreadable audio: {reason}")
                bar.update(1)
                if not self._all_ranks_agree(bool(batch.ids)):  # every utterance of a batch was unreadable
                    continue
                batch = batch.to(self.procs.device, non_blocking=True)
                micro += 1
                last_micro = micro == cfg.optim.accum_steps
                sync = nullcontext() if last_micro or self.procs.world_size == 1 else self.ddp_model.no_sync()
                try:
                    with sync:
                        loss = self._loss(batch)
                        finite = self._all_ranks_agree(bool(torch.isfinite(loss)))
                        if finite:
                            self.scaler.scale(loss / cfg.optim.accum_steps).backward()
                except torch.cuda.OutOfMemoryError as error:
                    if self.procs.world_size > 1:  # the other ranks wait in all-reduce: a skip here would hang them
                        raise AsrError(f"step {self.step}: out of GPU memory on a batch of {len(batch)} utterances "
                                       f"({' '.join(batch.ids[:5])}); lower data.max_seconds") from error
                    torch.cuda.empty_cache()
                    micro = 0
                    self._skip_bad_batch("out of GPU memory; lower data.max_seconds", batch.ids)
                    continue
                if not finite:
                    micro = 0
                    self._skip_bad_batch("loss is NaN or infinite", batch.ids)
                    continue
                if last_micro:
                    micro = 0
                    self.scaler.unscale_(self.optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    self.step += 1
                    self.bad_in_row = 0
                now = time.perf_counter()
                self.elapsed += now - self._tick  # wall time of training, data loading included
                self._tick = now
                self._share_elapsed()  # each micro-batch: the scheduler reads elapsed before the last one's time is in
                window_audio += float(batch.audio_lengths.sum()) / cfg.features.sample_rate * self.procs.world_size
                if last_micro and self.step % cfg.train.log_every == 0:
                    rate = window_audio / (time.perf_counter() - window_start)
                    self._log_step(loss.item(), grad_norm.item(), rate, bar)
                    window_audio, window_start = 0.0, time.perf_counter()
                if last_micro:
                    stop = self._after_step(budget)
                    self._tick = time.perf_counter()  # validation and checkpoints are not training time
                    if stop:
                        break
            bar.close()
            if self.sampler.position >= len(self.sampler):  # the epoch ran to its end
                self.epoch += 1
                self.sampler.set_epoch(self.epoch)  # position back to 0: a checkpoint now resumes at the new epoch
                if not stop and not cfg.train.validate_every:
                    stop = self.validate()
                if not stop and not cfg.train.checkpoint_every:
                    self.save_checkpoint()
        return self.finish()

    def _after_step(self, budget: float) -> bool:
        """Periodic validation and checkpoints, and always both at the last step; True when training should stop."""
        cfg = self.config.train
        stop = bool(self.step >= self.total_steps or (budget and self.elapsed >= budget))
        if stop or (cfg.validate_every and self.step % cfg.validate_every == 0):
            stop = self.validate() or stop
        if stop or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
            self.save_checkpoint()
        return stop

    def _log_step(self, loss: float, grad_norm: float, audio_per_second: float, bar) -> None:
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{audio_per_second:.0f}")
        if not self.procs.is_main:
            return
        log.info("step %d epoch %d loss %.4f lr %.3e grad_norm %.2f audio_s_per_s %.1f", self.step, self.epoch + 1,
                 loss, lr, grad_norm, audio_per_second)
        if self.writer:
            for name, value in (("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm),
                                ("train/audio_seconds_per_second", audio_per_second)):
                self.writer.add_scalar(name, value, self.step)

    @torch.no_grad()
    def validate(self) -> bool:
        """Dev loss and greedy WER (rank 0); keeps the best checkpoints. True when early stopping says stop."""
        if not self.dev_utts:
            return False
        stop = False
        if self.procs.is_main:
            result = evaluate_loss_and_wer(self.model, self.dev_utts, self.config, progress=self.progress,
                                           speaker_cmvn=self.dev_speaker_cmvn)
            result.update(step=self.step, epoch=self.epoch)
            self.history.append(result)
            log.info("validation step %d: dev loss %.4f WER %.2f%% CER %.2f%% (%d utterances)", self.step,
                     result["loss"], 100 * result["wer"], 100 * result["cer"], result["utterances"])
            if self.writer:
                for key in ("loss", "wer", "cer"):
                    self.writer.add_scalar(f"dev/{key}", result[key], self.step)
            self._keep_if_best(result["wer"])
            patience = self.config.train.early_stop_patience
            if patience and len(self.history) > patience:
                best_before = min(h["wer"] for h in self.history[:-patience])
                stop = min(h["wer"] for h in self.history[-patience:]) >= best_before
                if stop:
                    log.info("early stopping: no dev WER improvement in %d validations", patience)
        if self.procs.world_size > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.procs.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def finish(self) -> Path | None:
        """Write the list of skipped utterances, the validation history, then model.pt (the best by dev WER, else
        the last weights): a model.pt means the run finished."""
        model_path = None
        if self.procs.world_size > 1:  # each rank met the unreadable files of its own shard of the batches
            gathered = [None] * self.procs.world_size
            dist.all_gather_object(gathered, self.skips.entries)
            for entries in gathered:
                for utt_id, reason in entries.items():
                    self.skips.add(utt_id, reason)
        if self.procs.is_main:
            with open(self.out / "skipped.tsv", "w", encoding="utf-8") as f:
                f.writelines(f"{utt_id}\t{reason}\n" for utt_id, reason in self.skips.entries.items())
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1))
            model_path = self.out / "model.pt"
            if self.best:  # the best model file by dev WER, copied with the same atomic write as every checkpoint
                write_atomically(read_plain_data(self.out / "checkpoints" / f"best-{self.best[0][1]}.pt"), model_path)
            else:
                save_model(self.model, model_path, self._metadata())
            log.info("done: %d steps, %.1f min of training; %d bad batches skipped; utterances skipped: %s; model: %s",
                     self.step, self.elapsed / 60, self.bad_batches, self.skips.summary(), model_path)
            if self.writer:
                self.writer.close()
            for handler in [h for h in log.handlers if getattr(h, "asr_train_log", False)]:
                log.removeHandler(handler)
                handler.close()
        if self.procs.world_size > 1:
            dist.barrier()
            dist.destroy_process_group()
        return model_path


@torch.no_grad()
def evaluate_loss_and_wer(model: Recognizer, utterances, config: ExperimentConfig, progress: bool = False,
                          speaker_cmvn: SpeakerCmvn | None = None) -> dict:
    """CTC loss and greedy WER/CER of a model on utterances (bucketed batches, no augmentation); `speaker_cmvn`:
    their speakers' statistics, for a model normalized by speaker."""
    was_training = model.training
    model.eval()
    dataset = SpeechDataset(utterances, model.tokenizer, sample_rate=config.features.sample_rate,
                            speaker_cmvn=speaker_cmvn)
    sampler = DurationBucketSampler([u.duration for u in utterances], config.data.max_seconds, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=min(2, config.data.num_workers))
    decoder = GreedyDecoder(model.tokenizer, frame_shift=model.frame_shift)
    refs, hyps, losses, weights = {}, {}, [], []
    for batch in tqdm(loader, desc="validate", disable=not progress, leave=False, dynamic_ncols=True):
        for utt_id, reason in batch.skipped:
            log.warning("dev utterance %s skipped: %s", utt_id, reason)
        if not batch.ids:
            continue
        batch = batch.to(model.device)
        log_probs, out_lengths = model(batch.audio, batch.audio_lengths, batch.speaker_cmvn)
        loss = F.ctc_loss(log_probs.float().transpose(0, 1), batch.tokens, out_lengths, batch.token_lengths,
                          blank=0, reduction="mean", zero_infinity=True)
        losses.append(loss.item() * len(batch.ids))
        weights.append(len(batch.ids))
        for utt_id, text, hyp in zip(batch.ids, batch.texts, decoder.decode(log_probs, out_lengths)):
            refs[utt_id] = normalize_text(text)
            hyps[utt_id] = hyp.text
    model.train(was_training)
    result = score(refs, hyps)
    return {"loss": sum(losses) / max(1, sum(weights)), "wer": result.wer, "cer": result.cer,
            "utterances": result.utterances}


def train(config: ExperimentConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True) -> Path | None:
    """Train a model as configured; returns the path of model.pt (on rank 0; None on the others)."""
    return Trainer(config, out_dir, resume=resume, device=device, progress=progress).run()
