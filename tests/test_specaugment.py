"""asr.specaugment: where its masks fall, counted; how many an utterance gets; that its draws repeat from torch's
seed; that it does nothing outside training; the config section."""
import math

import pytest
import torch

from asr.errors import ConfigError
from asr.specaugment import SpecAugment, SpecAugmentConfig


def runs(mask: torch.Tensor) -> int:
    """Number of contiguous runs of True in a 1-D bool tensor."""
    starts = mask.clone()
    starts[1:] &= ~mask[:-1]
    return int(starts.sum())


def test_spec_augment_masks_stay_within_their_bounds_and_the_valid_frames():
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=3, time_width_ratio=0.1)
    specaug = SpecAugment(cfg).train()
    lengths = torch.tensor([400, 250, 120, 37])
    padding_value = 7.0
    torch.manual_seed(0)
    time_masked_total = freq_masked_total = 0
    for _ in range(20):
        feats = torch.full((4, 400, 80), padding_value)
        for index, length in enumerate(lengths):
            feats[index, :length] = torch.rand(length, 80) + 1  # never 0
        augmented = specaug(feats, lengths)
        for index, length in enumerate(lengths.tolist()):
            assert (augmented[index, length:] == padding_value).all()
            valid = augmented[index, :length] == 0  # (frames, mels): where a mask fell
            time_masked, freq_masked = valid.all(dim=1), valid.all(dim=0)
            # Every zero lies in a masked frame or a masked channel: masks are full bands, nothing else changes.
            assert (valid == (time_masked[:, None] | freq_masked[None, :])).all()
            assert runs(time_masked) <= cfg.time_masks
            assert time_masked.sum() <= cfg.time_masks * int(cfg.time_width_ratio * length)
            if not time_masked.all():
                assert runs(freq_masked) <= cfg.freq_masks and freq_masked.sum() <= cfg.freq_masks * cfg.freq_width
            time_masked_total += int(time_masked.sum())
            freq_masked_total += int(freq_masked.sum())
    assert time_masked_total > 0 and freq_masked_total > 0


def test_adaptive_time_masks_grow_in_number_with_the_utterance():
    # Park et al. 2020's adaptive multiplicity: min(cap, floor(ratio × frames)) masks, each at most 5 % of the frames.
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=6, time_masks_ratio=0.01, time_width_ratio=0.05)
    specaug = SpecAugment(cfg).train()
    lengths = torch.tensor([1000, 420, 250, 99])
    expected = [min(6, math.floor(0.01 * length)) for length in lengths.tolist()]
    assert expected == [6, 4, 2, 0]
    assert specaug.time_mask_counts(lengths).tolist() == expected
    torch.manual_seed(0)
    fractions = {length: [] for length in lengths.tolist()}
    most_runs = {length: 0 for length in lengths.tolist()}
    for _ in range(200):
        augmented = specaug(torch.rand(4, 1000, 20) + 1, lengths)
        for index, length in enumerate(lengths.tolist()):
            time_masked = (augmented[index, :length] == 0).all(dim=1)
            assert runs(time_masked) <= expected[index]
            assert time_masked.sum() <= expected[index] * math.floor(0.05 * length)
            fractions[length].append(float(time_masked.float().mean()))
            most_runs[length] = max(most_runs[length], runs(time_masked))
    assert [most_runs[length] for length in lengths.tolist()] == expected  # every mask is drawn, at times apart
    mean = {length: sum(values) / len(values) for length, values in fractions.items()}
    # About count × (widest / 2) frames masked: a tenth at the cap's utterance length, nothing on the shortest.
    assert mean[99] == 0 and 0.6 * mean[420] < mean[1000] * 4 / 6 < 1.4 * mean[420]
    with pytest.raises(ConfigError, match="time_masks_ratio"):
        SpecAugmentConfig(time_masks_ratio=1.5)


def test_spec_augment_is_repeatable_from_torch_seed():
    specaug = SpecAugment(SpecAugmentConfig()).train()
    feats, lengths = torch.rand(3, 300, 80) + 1, torch.tensor([300, 200, 100])
    torch.manual_seed(7)
    first = specaug(feats, lengths)
    torch.manual_seed(7)
    again = specaug(feats, lengths)
    torch.manual_seed(8)
    other = specaug(feats, lengths)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_spec_augment_does_nothing_in_eval_mode_or_when_disabled():
    feats, lengths = torch.rand(2, 100, 80) + 1, torch.tensor([100, 60])
    assert torch.equal(SpecAugment(SpecAugmentConfig()).eval()(feats, lengths), feats)
    assert torch.equal(SpecAugment(SpecAugmentConfig(enabled=False)).train()(feats, lengths), feats)


def test_vtlp_warp_outside_zero_to_one_is_a_config_error():
    with pytest.raises(ConfigError, match="vtlp_max_warp"):
        SpecAugmentConfig(vtlp_max_warp=1.5)


def test_specaug_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    specaug = SpecAugmentConfig(time_masks=5, enabled=False)
    assert SpecAugmentConfig.from_dict(specaug.to_dict()) == specaug
    with pytest.raises(ConfigError, match=r"specaugment: unknown key\(s\) \['freq_mask'\]"):
        SpecAugmentConfig.from_dict({"freq_mask": 2})
