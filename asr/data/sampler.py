"""Batches by seconds of audio: utterances of similar duration together, so that little of a batch is padding.

Each epoch the sampler sorts the utterances by duration, cuts the sorted list into `num_buckets` buckets of equal
count, shuffles the order inside every bucket, and cuts the result into batches as long as the padded batch
(longest utterance × count) stays within `max_seconds`; then it shuffles the order of the batches. All of it is
drawn from (seed, epoch), so every rank of a distributed run computes the same list and takes its own share.

Because batches are cut anew each epoch, their number can differ slightly from one epoch to the next; `len()`
gives the current epoch's.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from asr.errors import ConfigError


class DurationBucketSampler(torch.utils.data.Sampler[list[int]]):
    """A DataLoader `batch_sampler` yielding lists of utterance indices whose padded duration fits `max_seconds`.

    - An utterance longer than `max_seconds` makes a batch of its own (with a warning when the sampler is built).
    - `shuffle=False` gives the batches in ascending duration every epoch (validation); `sortagrad=True` does so
      for epoch 0 only (DeepSpeech 2's SortaGrad: short utterances first while the model is fragile).
    - With `world_size` ranks, each rank gets the same number of batches: rank r takes batches r, r + world_size,
      ...; when the count does not divide evenly, the first batches are repeated on the last ranks (as
      DistributedSampler pads), or with `drop_last=True` the surplus batches are left out of the epoch.
    - Resuming: the trainer calls `advance()` after each batch it has consumed (counting in `__iter__` would be
      wrong: the DataLoader prefetches). `state_dict()` holds the epoch and that position; after
      `load_state_dict()` the next iteration starts at the first batch not yet consumed.
    """

    def __init__(self, durations: Sequence[float], max_seconds: float, seed: int = 0, shuffle: bool = True,
                 num_buckets: int = 10, rank: int = 0, world_size: int = 1, sortagrad: bool = False,
                 drop_last: bool = False):
        super().__init__()
        if not max_seconds > 0:
            raise ConfigError(f"max_seconds must be positive, got {max_seconds}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
        self.durations = [float(duration) for duration in durations]
        self.max_seconds = max_seconds
        self.seed = seed
        self.shuffle = shuffle
        self.num_buckets = num_buckets
        self.rank = rank
        self.world_size = world_size
        self.sortagrad = sortagrad
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of this epoch the trainer has consumed
        self._ascending = np.argsort(np.asarray(self.durations), kind="stable")
        self._cached: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)
        too_long = [duration for duration in self.durations if duration > max_seconds]
        if too_long:
            warnings.warn(f"{len(too_long)} utterances are longer than max_seconds={max_seconds} (the longest "
                          f"{max(too_long):.1f} s); each makes a batch of its own", stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        """Move to `epoch`, at its first batch; setting the epoch it is already in keeps the position (resume)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def advance(self, num_batches: int = 1) -> None:
        """Count `num_batches` more batches of the current epoch as consumed."""
        if not 0 <= self.position + num_batches <= len(self):
            raise ValueError(f"cannot advance {num_batches} batches from {self.position} of {len(self)}")
        self.position += num_batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "max_seconds": self.max_seconds,
                "world_size": self.world_size, "num_utterances": len(self.durations)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken: same epoch, its consumed batches skipped.

        Raises ConfigError when the run is in the middle of an epoch whose batches this sampler would cut
        differently (another seed, max_seconds, number of ranks or of utterances).
        """
        if state["position"] > 0:
            mine = self.state_dict()
            changed = [f"{key} {state[key]} → {mine[key]}" for key in ("seed", "max_seconds", "world_size",
                                                                        "num_utterances") if state[key] != mine[key]]
            if changed:
                raise ConfigError(f"cannot resume in the middle of epoch {state['epoch']}: the batches changed "
                                  f"({', '.join(changed)})")
        self.epoch = state["epoch"]
        self.position = state["position"]

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch, those already consumed included."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches of the current epoch, from the first not yet consumed."""
        yield from self._rank_batches()[self.position:]

    def _rank_batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._shard(self._epoch_batches(self.epoch)))
        return self._cached[1]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of the epoch, before sharding across ranks."""
        if not self.shuffle or (self.sortagrad and epoch == 0):
            return self._cut(self._ascending)
        rng = np.random.default_rng((self.seed, epoch))
        buckets = np.array_split(self._ascending, self.num_buckets)
        batches = self._cut(np.concatenate([rng.permutation(bucket) for bucket in buckets]))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Consecutive runs of `order` whose padded duration (longest × count) stays within max_seconds."""
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0.0
        for index in order.tolist():
            duration = self.durations[index]
            if batch and max(longest, duration) * (len(batch) + 1) > self.max_seconds:
                batches.append(batch)
                batch, longest = [], 0.0
            batch.append(index)
            longest = max(longest, duration)
        if batch:
            batches.append(batch)
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's share: every world_size-th batch, after padding (or trimming) to a multiple of world_size."""
        if self.drop_last:
            per_rank = len(batches) // self.world_size
        else:
            per_rank = math.ceil(len(batches) / self.world_size)
        total = per_rank * self.world_size
        padded = [batches[i % len(batches)] for i in range(total)]
        return padded[self.rank::self.world_size]
