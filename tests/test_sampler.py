"""The duration-bucketing batch sampler: coverage, the seconds budget, seeding, rank sharding, resume, SortaGrad."""
import csv
import itertools

import numpy as np
import pytest
import torch

from asr.data.sampler import DurationBucketSampler
from asr.errors import ConfigError

MAX_SECONDS = 60.0


@pytest.fixture(scope="module")
def durations(data_dir) -> list[float]:
    """The 125 real sentence durations (1 to 27 s), and 875 more drawn from a LibriSpeech-like spread."""
    real = []
    for info in sorted((data_dir / "sentences").glob("*/utt_info.tsv")):
        with open(info, newline="") as tsv:
            real += [float(row["duration_s"]) for row in csv.DictReader(tsv, delimiter="\t")]
    drawn = np.random.default_rng(0).uniform(1.0, 17.0, size=1000 - len(real))
    return real + drawn.round(3).tolist()


def padded_seconds(batch, durations):
    return max(durations[i] for i in batch) * len(batch)


def test_hand_worked_batches_in_ascending_order():
    durations = [4.0, 1.0, 2.5, 1.5, 9.0, 2.0, 3.0]
    # Sorted: 1.0(1) 1.5(3) 2.0(5) 2.5(2) 3.0(6) 4.0(0) 9.0(4). Budget 6 s of padded audio:
    # [1, 3, 5]: 3 × 2.0 = 6 ✓, adding 2.5 → 4 × 2.5 = 10 ✗; [2, 6]: 2 × 3.0 = 6 ✓, adding 4.0 → 12 ✗;
    # [0]: adding 9.0 → 18 ✗; [4]: 9 s alone, over budget, its own batch.
    with pytest.warns(UserWarning, match=r"1 utterances are longer than max_seconds=6.0 \(the longest 9.0 s\)"):
        sampler = DurationBucketSampler(durations, max_seconds=6.0, shuffle=False)
    assert list(sampler) == [[1, 3, 5], [2, 6], [0], [4]]
    assert len(sampler) == 4


def test_every_utterance_once_per_epoch_within_the_budget(durations):
    sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(itertools.chain(*batches)) == list(range(len(durations)))
        assert all(padded_seconds(b, durations) <= MAX_SECONDS for b in batches)


def test_batches_are_as_full_as_the_budget_allows(durations):
    # Unshuffled, each batch is a run of the sorted order that could not take the next utterance.
    sampler = DurationBucketSampler(durations, MAX_SECONDS, shuffle=False)
    batches = list(sampler)
    flat = list(itertools.chain(*batches))
    assert flat == sorted(range(len(durations)), key=lambda i: durations[i])
    for batch, following in zip(batches, batches[1:]):
        assert durations[following[0]] * (len(batch) + 1) > MAX_SECONDS


def test_bucketing_keeps_padding_low_while_shuffling(durations):
    # Shuffling only inside duration buckets keeps similar lengths together: little padding. A sampler that ignored
    # durations (one bucket) pads far more; both fit the budget.
    def padding_fraction(num_buckets):
        sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=0, num_buckets=num_buckets)
        batches = list(sampler)
        return 1 - sum(durations) / sum(padded_seconds(b, durations) for b in batches)

    assert padding_fraction(10) < 0.1
    assert padding_fraction(1) > 2 * padding_fraction(10)


def test_same_seed_same_order_other_epoch_or_seed_other_order(durations):
    def epoch(seed, number):
        sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(0, 1) == epoch(0, 1)
    assert epoch(0, 1) != epoch(0, 2)
    assert epoch(0, 1) != epoch(1, 1)
    # Not only the order of batches changes: their make-up does too (shuffling inside buckets).
    assert {tuple(sorted(b)) for b in epoch(0, 1)} != {tuple(sorted(b)) for b in epoch(0, 2)}


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_equal_counts_of_disjoint_batches(durations, world_size):
    full = DurationBucketSampler(durations, MAX_SECONDS, seed=5)
    full.set_epoch(2)
    all_batches = list(full)
    per_rank = []
    for rank in range(world_size):
        sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=5, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        per_rank.append(list(sampler))
        assert len(per_rank[-1]) == len(sampler)
    assert len({len(batches) for batches in per_rank}) == 1  # same number of steps on every rank
    shared = list(itertools.chain(*per_rank))
    padding = len(shared) - len(all_batches)
    assert padding == -len(all_batches) % world_size
    # Every batch of the epoch is on exactly one rank; the padding repeats the epoch's first batches.
    counted = {tuple(b): shared.count(b) for b in all_batches}
    assert [counted[tuple(b)] for b in all_batches] == [2] * padding + [1] * (len(all_batches) - padding)
    assert sorted(set(itertools.chain(*shared))) == list(range(len(durations)))


def test_drop_last_leaves_the_surplus_batches_out(durations):
    full = DurationBucketSampler(durations, MAX_SECONDS, seed=5)
    all_batches = list(full)
    world_size = 4
    assert len(all_batches) % world_size, "choose a world size that does not divide the batch count"
    shares = [list(DurationBucketSampler(durations, MAX_SECONDS, seed=5, rank=r, world_size=world_size,
                                         drop_last=True)) for r in range(world_size)]
    assert all(len(share) == len(all_batches) // world_size for share in shares)
    shared = list(itertools.chain(*shares))
    assert len(shared) == len({tuple(b) for b in shared})  # no repeats
    assert sorted(shared) == sorted(all_batches[:len(shared)])


def test_resume_skips_exactly_the_consumed_batches(durations):
    sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=1, world_size=2)
    sampler.set_epoch(4)
    epoch = list(sampler)
    for _ in range(7):
        sampler.advance()
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (4, 7)

    resumed = DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the trainer's loop sets the epoch it is in: the position stays
    assert list(resumed) == epoch[7:]
    assert len(resumed) == len(epoch)
    resumed.set_epoch(5)  # a new epoch starts at its first batch
    assert resumed.position == 0 and len(list(resumed)) == len(resumed)


def test_resume_through_a_prefetching_dataloader(durations):
    # With workers, the DataLoader draws batches from the sampler ahead of the training loop; the position counts
    # what the loop consumed, so the resumed run gets exactly the rest.
    def loader_over(sampler):
        return torch.utils.data.DataLoader(list(range(len(durations))), batch_sampler=sampler, num_workers=2,
                                           collate_fn=list, prefetch_factor=4)

    sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=9)
    sampler.set_epoch(1)
    seen = []
    for batch in loader_over(sampler):
        seen.append(batch)
        sampler.advance(1)
        if len(seen) == 5:
            break
    state = sampler.state_dict()
    resumed = DurationBucketSampler(durations, MAX_SECONDS, seed=9)
    resumed.load_state_dict(state)
    rest = list(loader_over(resumed))
    expected = DurationBucketSampler(durations, MAX_SECONDS, seed=9)
    expected.set_epoch(1)
    assert seen + rest == list(expected)


def test_resuming_mid_epoch_with_other_batches_is_refused(durations):
    sampler = DurationBucketSampler(durations, MAX_SECONDS, world_size=2)
    sampler.advance(3)
    with pytest.raises(ConfigError, match=r"world_size 2 → 4"):
        DurationBucketSampler(durations, MAX_SECONDS, world_size=4).load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="cannot advance"):
        sampler.advance(len(sampler))


def test_sortagrad_orders_the_first_epoch_only(durations):
    sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=2, sortagrad=True)
    first = list(sampler)
    longest = [max(durations[i] for i in batch) for batch in first]
    assert longest == sorted(longest)
    assert first == list(DurationBucketSampler(durations, MAX_SECONDS, shuffle=False))
    sampler.set_epoch(1)
    longest = [max(durations[i] for i in batch) for batch in sampler]
    assert longest != sorted(longest)


def test_degenerate_inputs():
    assert list(DurationBucketSampler([], MAX_SECONDS)) == []
    assert list(DurationBucketSampler([], MAX_SECONDS, rank=1, world_size=2)) == []
    assert list(DurationBucketSampler([2.0], MAX_SECONDS, rank=1, world_size=2)) == [[0]]  # the padding repeat
    with pytest.raises(ConfigError, match="max_seconds must be positive"):
        DurationBucketSampler([1.0], 0)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        DurationBucketSampler([1.0], MAX_SECONDS, rank=2, world_size=2)
