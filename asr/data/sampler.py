"""Batches by seconds of audio: utterances of similar duration together, so that little of a batch is padding.

One optimizer step takes one *global batch*: at most `max_seconds` of padded audio (longest utterance × count), the
same whatever the number of processes. Each epoch the sampler sorts the utterances by duration, cuts the sorted list
into `num_buckets` buckets of equal count, shuffles the order inside every bucket, cuts the result into global
batches, then shuffles the order of the batches. All of it is drawn from (seed, epoch), so every rank computes the
same global batches, with 1 process or 64.

Each global batch is then shared out: its utterances, longest first, are cut into one run a rank so that the largest
share of padded seconds is as small as it can be (the slowest rank sets the pace of a step), and each rank's share is
cut the same way into as few micro-batches as keep each within `device_max_seconds` (what one device forwards at
once; gradients accumulate over them). A rank may get no utterance of a small global batch: its share is empty.

The durations may change from epoch to epoch: with speed perturbation an utterance plays 1/factor times its
manifest duration, drawn anew each epoch (`SpeechDataset.played_durations`). Batched by the manifest's durations, a
batch would run to its slowest-played utterance, a tenth past the others with factors 0.9-1.1, and hold more padded
seconds than `max_seconds`.

Because batches are cut anew each epoch, their number can differ slightly from one epoch to the next.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from asr.errors import ConfigError

SAMPLER_STATE_VERSION = 2  # 2: the position counts global batches (optimizer steps), whatever the world size


class DurationBucketSampler(torch.utils.data.Sampler[list[int]]):
    """A DataLoader `batch_sampler` yielding this rank's micro-batches (lists of utterance indices), step after step.

    - `num_steps` is the number of global batches (optimizer steps) of the current epoch; `rank_steps()` gives this
      rank's micro-batches of each step not yet consumed, in the order `__iter__` yields them (an empty share yields
      nothing). With one process and no `device_max_seconds`, each step is one micro-batch: the global batch.
    - An utterance longer than `max_seconds` makes a global batch of its own; one longer than `device_max_seconds`
      a micro-batch of its own (with a warning when the sampler is built).
    - `shuffle=False` gives the batches in ascending duration every epoch (validation); `sortagrad=True` does so
      for epoch 0 only (DeepSpeech 2's SortaGrad: short utterances first while the model is fragile).
    - Resuming: the trainer calls `advance()` after each step it has taken (counting in `__iter__` would be wrong:
      the DataLoader prefetches). `state_dict()` holds the epoch and that position; after `load_state_dict()` the
      next iteration starts at the first step not yet taken, with any number of ranks.
    """

    def __init__(self, durations: Sequence[float] | Callable[[int], Sequence[float]], max_seconds: float,
                 seed: int = 0, shuffle: bool = True, num_buckets: int = 10, rank: int = 0, world_size: int = 1,
                 sortagrad: bool = False, device_max_seconds: float = 0.0):
        """`durations`: each utterance's seconds, or a function giving them for an epoch (the same list for the same
        epoch, in every process)."""
        super().__init__()
        if not max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
        if device_max_seconds < 0:
            raise ConfigError(f"device_max_seconds must be positive, or 0 for no limit; got {device_max_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
        if callable(durations):
            self._durations_of = durations
        else:
            fixed = [float(duration) for duration in durations]
            self._durations_of = lambda epoch: fixed
        self.max_seconds = max_seconds
        self.device_max_seconds = device_max_seconds or float("inf")
        self.seed = seed
        self.shuffle = shuffle
        self.num_buckets = num_buckets
        self.rank = rank
        self.world_size = world_size
        self.sortagrad = sortagrad
        self.epoch = 0
        self.position = 0  # steps (global batches) of this epoch the trainer has taken
        self._cached: tuple[int, list[float], list[list[int]]] | None = None  # (epoch, its durations, its batches)
        for limit, name, what in ((max_seconds, "max_seconds", "a global batch"),
                                  (self.device_max_seconds, "device_max_seconds", "a micro-batch")):
            too_long = [duration for duration in self.durations if duration > limit]
            if too_long:
                warnings.warn(f"{len(too_long)} utterances are longer than {name}={limit:g} (the longest "
                              f"{max(too_long):.1f} s); each makes {what} of its own", stacklevel=2)

    @property
    def durations(self) -> list[float]:
        """Each utterance's seconds in the current epoch."""
        return self._epoch(self.epoch)[0]

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`, at its first step; setting the epoch it is already in keeps the position (resume)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def advance(self, num_steps: int = 1) -> None:
        """Count `num_steps` more steps of the current epoch as taken."""
        if not 0 <= self.position + num_steps <= self.num_steps:
            raise ValueError(f"cannot advance {num_steps} steps from {self.position} of {self.num_steps}")
        self.position += num_steps

    def state_dict(self) -> dict:
        return {"version": SAMPLER_STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "max_seconds": self.max_seconds, "num_buckets": self.num_buckets, "num_utterances": len(self.durations)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken: same epoch, its steps taken skipped.

        Raises ConfigError when the run is in the middle of an epoch whose global batches this sampler would cut
        differently (another seed, max_seconds, number of buckets or of utterances). The number of ranks may change.
        """
        if state["position"] > 0:
            if state.get("version", 1) != SAMPLER_STATE_VERSION:
                raise ConfigError(f"cannot resume in the middle of epoch {state['epoch']}: the checkpoint counts "
                                  f"batches of each rank, as asr did before global batches; resume it with that "
                                  f"version, or from a checkpoint at the end of an epoch")
            mine = self.state_dict()
            state = {"num_buckets": 10, **state}  # what checkpoints from before data.num_buckets cut with
            changed = [f"{key} {state[key]} → {mine[key]}"
                       for key in ("seed", "max_seconds", "num_buckets", "num_utterances") if state[key] != mine[key]]
            if changed:
                raise ConfigError(f"cannot resume in the middle of epoch {state['epoch']}: the batches changed "
                                  f"({', '.join(changed)})")
        self.epoch = state["epoch"]
        self.position = state["position"]

    @property
    def num_steps(self) -> int:
        """Global batches (optimizer steps) of the current epoch, those already taken included."""
        return len(self.global_batches())

    def steps_in_shuffled_epoch(self) -> int:
        """Global batches of an epoch in shuffled order: every epoch but SortaGrad's first, which packs tighter."""
        return len(self.global_batches(1 if self.sortagrad else 0))

    def __len__(self) -> int:
        """Micro-batches this rank loads in the current epoch, those of steps already taken included."""
        return sum(len(self.share(batch)) for batch in self.global_batches())

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's micro-batches of the current epoch, from the first step not yet taken."""
        for micro_batches in self.rank_steps():
            yield from micro_batches

    def rank_steps(self) -> list[list[list[int]]]:
        """For each step not yet taken, this rank's micro-batches (none when its share is empty)."""
        return [self.share(batch) for batch in self.global_batches()[self.position:]]

    def share(self, global_batch: list[int], rank: int | None = None) -> list[list[int]]:
        """A rank's micro-batches of a global batch (this rank's by default)."""
        longest_first = sorted(global_batch, key=lambda index: -self.durations[index])
        durations = [self.durations[index] for index in longest_first]
        shares = _balanced_runs(durations, self.world_size)
        start, stop = shares[self.rank if rank is None else rank]
        durations = durations[start:stop]
        if not durations:
            return []
        parts = _fewest_runs(durations, self.device_max_seconds)
        order = {index: k for k, index in enumerate(global_batch)}  # inside a micro-batch, the global batch's order
        return [sorted(longest_first[start + a:start + b], key=order.get) for a, b in _balanced_runs(durations, parts)]

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every global batch of an epoch (the current one by default), in the order they are taken."""
        return self._epoch(self.epoch if epoch is None else epoch)[1]

    def _epoch(self, epoch: int) -> tuple[list[float], list[list[int]]]:
        """An epoch's durations and global batches."""
        if self._cached is None or self._cached[0] != epoch:
            durations = [float(duration) for duration in self._durations_of(epoch)]
            self._cached = (epoch, durations, self._epoch_batches(epoch, durations))
        return self._cached[1:]

    def _epoch_batches(self, epoch: int, durations: list[float]) -> list[list[int]]:
        ascending = np.argsort(np.asarray(durations), kind="stable")
        if not self.shuffle or (self.sortagrad and epoch == 0):
            return self._cut(ascending, durations)
        rng = np.random.default_rng((self.seed, epoch))
        buckets = np.array_split(ascending, self.num_buckets)
        batches = self._cut(np.concatenate([rng.permutation(bucket) for bucket in buckets]), durations)
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, order: np.ndarray, durations: list[float]) -> list[list[int]]:
        """Consecutive runs of `order` whose padded duration (longest × count) stays within max_seconds."""
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for index in order.tolist():
            duration = durations[index]
            if batch and max(longest, duration) * (len(batch) + 1) > self.max_seconds:
                batches.append(batch)
                batch, longest = [], 0.0
            batch.append(index)
            longest = max(longest, duration)
        if batch:
            batches.append(batch)
        return batches


def _greedy_runs(durations: list[float], cap: float, parts: int) -> list[tuple[int, int]]:
    """Cut `durations` (longest first) into runs of padded seconds (first × count) within `cap`, each as long as the
    cap allows but leaving one item for each of the `parts` runs still to come; the last run takes what is left
    over. A run is (start, stop)."""
    runs, start, n = [], 0, len(durations)
    while start < n:
        left = parts - len(runs) - 1  # runs still to come after this one
        count = max(1, int(cap // durations[start])) if left > 0 else n - start
        count = min(count, max(1, n - start - left))
        runs.append((start, start + count))
        start += count
    return runs


def _fewest_runs(durations: list[float], cap: float) -> int:
    """The fewest runs of `durations` (longest first) each within `cap` padded seconds (one item may exceed it)."""
    count, start = 0, 0
    while start < len(durations):
        start += max(1, int(cap // durations[start])) if cap != float("inf") else len(durations)
        count += 1
    return max(1, count)


def _balanced_runs(durations: list[float], parts: int) -> list[tuple[int, int]]:
    """`parts` consecutive runs of `durations` (longest first) whose largest padded seconds (first × count) is as
    small as it can be; every run holds an item while there are items enough, the others are empty (start == stop).

    The smallest feasible cap is one of the values durations[i] × k; bisection on the padded seconds finds it
    (greedy packing under a cap needs the fewest runs, and more runs only lower it)."""
    n = len(durations)
    if n == 0:
        return [(0, 0)] * parts
    low, high = durations[0], durations[0] * n  # the longest alone; everything in one run
    for _ in range(60):
        middle = (low + high) / 2
        if _fewest_runs(durations, middle) <= parts:
            high = middle
        else:
            low = middle
    runs = _greedy_runs(durations, high, parts)
    return runs + [(n, n)] * (parts - len(runs))
