"""The duration-bucketing batch sampler: coverage, the seconds budget, seeding, global batches shared out to ranks and
micro-batches, resume, SortaGrad."""
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
    with pytest.warns(UserWarning, match=r"1 utterances are longer than max_seconds=6 \(the longest 9.0 s\); each "
                                         r"makes a global batch of its own"):
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


def shares_of_every_rank(durations, world_size, epoch=2, device_max_seconds=0.0):
    """steps[k][r]: rank r's micro-batches of step k."""
    samplers = [DurationBucketSampler(durations, MAX_SECONDS, seed=5, rank=rank, world_size=world_size,
                                      device_max_seconds=device_max_seconds) for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return list(zip(*(sampler.rank_steps() for sampler in samplers)))


def best_contiguous_split(durations: list[float], parts: int) -> float:
    """The least possible largest padded seconds (first × count) of `parts` consecutive runs of `durations`
    (longest first), by exhaustive dynamic programming: the reference for the sampler's bisection."""
    n = len(durations)
    best = [[float("inf")] * (n + 1) for _ in range(parts + 1)]  # best[p][i]: the first i items in p runs
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        best[p][0] = 0.0
        for i in range(1, n + 1):
            best[p][i] = min(max(best[p - 1][j], durations[j] * (i - j)) for j in range(i))
    return min(best[p][n] for p in range(1, parts + 1))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_same_global_batches_whatever_the_world_size(durations, world_size):
    alone = DurationBucketSampler(durations, MAX_SECONDS, seed=5)
    alone.set_epoch(2)
    steps = shares_of_every_rank(durations, world_size)
    assert len(steps) == alone.num_steps == len(alone.global_batches())
    for global_batch, shares in zip(alone.global_batches(), steps):
        # Every utterance of the global batch on exactly one rank, in one micro-batch.
        taken = [index for share in shares for micro_batch in share for index in micro_batch]
        assert sorted(taken) == sorted(global_batch)
        assert padded_seconds(global_batch, durations) <= MAX_SECONDS


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_shares_are_balanced_by_padded_seconds(durations, world_size):
    for shares in shares_of_every_rank(durations, world_size)[:40]:
        longest_first = sorted((durations[i] for share in shares for batch in share for i in batch), reverse=True)
        largest = max(sum(padded_seconds(batch, durations) for batch in share) for share in shares)
        assert largest == pytest.approx(best_contiguous_split(longest_first, world_size))
        if len(longest_first) >= world_size:  # no rank idles while another has two utterances
            assert all(shares)


def test_micro_batches_fit_the_device_and_are_as_few_as_that_allows(durations):
    device_max = 28.0  # 60 s global batches on 2 ranks: about 30 s a rank, often in 2 micro-batches
    counts = []
    for shares in shares_of_every_rank(durations, 2, device_max_seconds=device_max):
        for share in shares:
            assert all(padded_seconds(batch, durations) <= device_max or len(batch) == 1 for batch in share)
            counts.append(len(share))
            merged = [i for batch in share for i in batch]
            if merged and padded_seconds(merged, durations) <= device_max:
                assert len(share) == 1  # no accumulation where the device holds the whole share
    assert 1 < sum(counts) / len(counts) <= 3


def test_a_rank_may_get_nothing_of_a_small_global_batch():
    # Three ranks, two utterances: one rank's share is empty (the trainer makes it forward silence, weighted 0).
    shares = [DurationBucketSampler([1.0, 1.2], MAX_SECONDS, rank=rank, world_size=3).rank_steps() for rank in range(3)]
    assert sorted(len(steps[0]) for steps in shares) == [0, 1, 1]
    assert list(DurationBucketSampler([1.0, 1.2], MAX_SECONDS, rank=2, world_size=3)) == []


def test_resume_skips_exactly_the_steps_taken(durations):
    sampler = DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=1, world_size=2, device_max_seconds=28.0)
    sampler.set_epoch(4)
    steps = sampler.rank_steps()
    for _ in range(7):
        sampler.advance()
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (4, 7)

    resumed = DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=1, world_size=2, device_max_seconds=28.0)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the trainer's loop sets the epoch it is in: the position stays
    assert resumed.rank_steps() == steps[7:]
    assert list(resumed) == [batch for share in steps[7:] for batch in share]
    resumed.set_epoch(5)  # a new epoch starts at its first step
    assert resumed.position == 0 and len(list(resumed)) == len(resumed)


def test_a_run_resumes_mid_epoch_on_another_number_of_processes(durations):
    # The position counts global batches, which do not depend on the processes: 2 ranks stop, 3 take over.
    two = DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=0, world_size=2)
    two.set_epoch(3)
    two.advance(5)
    three = [DurationBucketSampler(durations, MAX_SECONDS, seed=1, rank=rank, world_size=3) for rank in range(3)]
    for sampler in three:
        sampler.load_state_dict(two.state_dict())
        sampler.set_epoch(3)
    rest = [sorted(i for share in shares for batch in share for i in batch)
            for shares in zip(*(sampler.rank_steps() for sampler in three))]
    assert rest == [sorted(batch) for batch in two.global_batches()[5:]]


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
    with pytest.raises(ConfigError, match=r"max_seconds 60.0 → 30.0"):
        DurationBucketSampler(durations, 30.0).load_state_dict(sampler.state_dict())
    with pytest.raises(ConfigError, match=r"num_buckets 10 → 40"):
        DurationBucketSampler(durations, MAX_SECONDS, num_buckets=40).load_state_dict(sampler.state_dict())
    # A checkpoint of the sampler that counted each rank's batches: its position means another thing.
    older = {key: value for key, value in sampler.state_dict().items() if key != "version"}
    with pytest.raises(ConfigError, match="counts batches of each rank"):
        DurationBucketSampler(durations, MAX_SECONDS).load_state_dict(older)
    with pytest.raises(ValueError, match="cannot advance"):
        sampler.advance(sampler.num_steps)


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
    assert list(DurationBucketSampler([2.0], MAX_SECONDS, rank=0, world_size=2)) == [[0]]
    assert list(DurationBucketSampler([2.0], MAX_SECONDS, rank=1, world_size=2)) == []  # nothing left for rank 1
    with pytest.raises(ConfigError, match="max_seconds must be positive"):
        DurationBucketSampler([1.0], 0)
    with pytest.raises(ConfigError, match="device_max_seconds must be positive"):
        DurationBucketSampler([1.0], MAX_SECONDS, device_max_seconds=-1)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        DurationBucketSampler([1.0], MAX_SECONDS, rank=2, world_size=2)
