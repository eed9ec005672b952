"""asr.features against librosa, numpy transcriptions of the formulas, and real recordings."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import librosa
import numpy as np
import pytest
import torch

from asr.audio import SAMPLE_RATE, load_audio
from asr.errors import AsrError, ConfigError
from asr.features import (
    FeatureConfig,
    Frontend,
    GlobalCMVN,
    LogMel,
    SpeakerCmvn,
    SpecAugment,
    SpecAugmentConfig,
    estimate_cmvn,
    estimate_speaker_cmvn,
    load_cmvn,
    mel_filterbank,
    save_cmvn,
    speed_perturb,
    utterance_cmvn,
    vtlp_warp,
)

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "librispeech_bits/wav/1089-134686-0001.wav",
    "ljspeech_subset/wav/LJ001-0002.wav",
    "harvard_sentences/wav/osr0034-01.wav",
    "mfa_testdata/wav/mfa_whisper.wav",
]


@pytest.fixture(scope="module")
def sentence_paths(data_dir):
    return [data_dir / "sentences" / name for name in SENTENCES]


@pytest.fixture(scope="module")
def sentence_waves(sentence_paths):
    return [load_audio(path) for path in sentence_paths]


def librosa_log_mel(wave: torch.Tensor, cfg: FeatureConfig) -> np.ndarray:
    """(T, n_mels) log-mel features computed by librosa in float64, configured as LogMel documents itself."""
    mel = librosa.feature.melspectrogram(
        y=wave.numpy().astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=False, norm="slaney",
    )
    return np.log(np.maximum(mel, cfg.log_floor)).T


def pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(wave) for wave in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def sine(frequency: float, seconds: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    return 0.5 * torch.sin(2 * torch.pi * frequency * torch.arange(round(seconds * sample_rate)) / sample_rate)


def peak_frequency(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave), periodic=False)).abs()
    return torch.fft.rfftfreq(len(wave), 1 / sample_rate)[spectrum.argmax()].item()


# --- configuration --------------------------------------------------------------------------------------------------


def test_feature_config_round_trips_through_a_dict():
    cfg = FeatureConfig(n_mels=40, hop_ms=20.0, normalization="utterance")
    assert FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.win_length, cfg.hop_length) == (400, 320)
    specaug = SpecAugmentConfig(time_masks=5, enabled=False)
    assert SpecAugmentConfig.from_dict(specaug.to_dict()) == specaug


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"n_mel": 80}, "features: unknown key(s) ['n_mel']"),
        ({"normalization": "cepstral"}, "features.normalization must be one of global, utterance, speaker, none"),
        ({"win_ms": 40.0}, "640 samples, more than features.n_fft=512"),
        ({"f_max": 9000.0}, "sample_rate / 2 = 8000"),
    ],
)
def test_feature_config_rejects_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FeatureConfig.from_dict(settings)


def test_specaug_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"specaugment: unknown key\(s\) \['freq_mask'\]"):
        SpecAugmentConfig.from_dict({"freq_mask": 2})


# --- LogMel ---------------------------------------------------------------------------------------------------------


def test_log_mel_matches_librosa_on_real_speech(sentence_waves):
    cfg = FeatureConfig()
    logmel = LogMel(cfg)
    for wave in sentence_waves:
        feats, feat_lengths = logmel(wave[None], torch.tensor([len(wave)]))
        reference = librosa_log_mel(wave, cfg)
        assert feats.shape == (1, *reference.shape) and feat_lengths.item() == len(reference)
        ours = feats[0].numpy().astype(np.float64)
        # Our float32 STFT against librosa's float64: energies agree to ~1e-6 of the loudest (measured up to 1.2e-6
        # on the sentence sets), so logs agree closely wherever the energy is within 80 dB of the loudest (measured
        # up to 2e-4) and less so far below it, where that error is a larger part of the energy.
        peak = reference.max()
        np.testing.assert_allclose(np.exp(ours), np.exp(reference), rtol=0, atol=1e-5 * np.exp(peak))
        within_80_db = reference > peak + np.log(1e-8)
        np.testing.assert_allclose(ours[within_80_db], reference[within_80_db], rtol=0, atol=1e-3)


@pytest.mark.parametrize("num_samples", [1, 159, 160, 161, 16000, 16001])
def test_frames_are_centered_one_per_hop(num_samples):
    cfg = FeatureConfig()
    feats, feat_lengths = LogMel(cfg)(torch.rand(1, num_samples) - 0.5, torch.tensor([num_samples]))
    assert feats.shape[1] == feat_lengths.item() == 1 + num_samples // 160 == cfg.num_frames(num_samples)


def test_a_padded_batch_gives_each_utterance_its_frames_alone(sentence_waves):
    logmel = LogMel(FeatureConfig())
    audio, lengths = pad(sentence_waves)
    feats, feat_lengths = logmel(audio, lengths)
    for index, wave in enumerate(sentence_waves):
        alone, [frames] = logmel(wave[None], torch.tensor([len(wave)]))
        assert feat_lengths[index] == frames
        torch.testing.assert_close(feats[index, :frames], alone[0], rtol=0, atol=1e-4)
        assert (feats[index, frames:] == 0).all()


def test_log_mel_stays_float32_under_autocast(sentence_waves):
    logmel = LogMel(FeatureConfig())
    wave = sentence_waves[0][None]
    plain, _ = logmel(wave, torch.tensor([wave.shape[1]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = logmel(wave, torch.tensor([wave.shape[1]]))
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain)


def test_digital_silence_sits_at_the_log_floor():
    cfg = FeatureConfig()
    feats, _ = LogMel(cfg)(torch.zeros(1, 1600), torch.tensor([1600]))
    torch.testing.assert_close(feats, torch.full_like(feats, np.log(cfg.log_floor)))


# --- normalization --------------------------------------------------------------------------------------------------


def padded_features(lengths: list[int], n_mels: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features (B, T, n_mels) with zero padding past each length."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), n_mels, generator=generator) * 3 + 5
    for index, length in enumerate(lengths):
        feats[index, length:] = 0
    return feats, torch.tensor(lengths)


def test_global_cmvn_normalizes_valid_frames_and_keeps_padding_zero():
    feats, lengths = padded_features([6, 4])
    mean, std = [1.0, -2.0, 0.5], [2.0, 0.5, 4.0]
    normalized = GlobalCMVN(mean, std)(feats, lengths)
    for index, length in enumerate(lengths):
        expected = (feats[index, :length].numpy() - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(normalized[index, :length].numpy(), expected, rtol=1e-6)
        assert (normalized[index, length:] == 0).all()


def test_global_cmvn_statistics_travel_in_the_state_dict():
    source = GlobalCMVN([1.0, 2.0], [3.0, 4.0])
    target = GlobalCMVN(torch.zeros(2), torch.ones(2))
    target.load_state_dict(source.state_dict())
    assert target.mean.tolist() == [1.0, 2.0] and target.std.tolist() == [3.0, 4.0]


def test_utterance_cmvn_uses_only_each_utterances_valid_frames():
    feats, lengths = padded_features([7, 3, 1])
    normalized = utterance_cmvn(feats, lengths)
    for index, length in enumerate(lengths.tolist()):
        valid = feats[index, :length].numpy().astype(np.float64)
        expected = (valid - valid.mean(axis=0)) / np.sqrt(valid.var(axis=0) + 1e-5)
        np.testing.assert_allclose(normalized[index, :length].numpy(), expected, rtol=1e-4, atol=1e-5)
        assert (normalized[index, length:] == 0).all()


def test_estimate_cmvn_matches_numpy_over_librosa_features(sentence_paths, sentence_waves):
    cfg = FeatureConfig()
    stats = estimate_cmvn([SimpleNamespace(audio=path) for path in sentence_paths], cfg, progress=False)
    frames = np.concatenate([librosa_log_mel(wave, cfg) for wave in sentence_waves])
    assert stats["frames"] == len(frames) and stats["utterances"] == len(sentence_paths)
    np.testing.assert_allclose(stats["mean"], frames.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(stats["std"], frames.std(axis=0), atol=1e-3)


def test_estimate_cmvn_takes_max_utterances_evenly_spaced(sentence_paths):
    utterances = [SimpleNamespace(audio=path) for path in sentence_paths]
    cfg = FeatureConfig()
    subset = estimate_cmvn(utterances, cfg, max_utterances=2, progress=False)
    assert subset == estimate_cmvn([utterances[0], utterances[2]], cfg, progress=False)
    with pytest.raises(AsrError, match="no utterances"):
        estimate_cmvn([], cfg, progress=False)


def test_estimate_speaker_cmvn_matches_numpy_over_each_speakers_librosa_features(sentence_paths, sentence_waves):
    cfg = FeatureConfig(n_mels=40)
    speakers = ["anna", "bert", "anna", None]  # the last names no speaker: it is not read
    utterances = [SimpleNamespace(audio=path, speaker=speaker) for path, speaker in zip(sentence_paths, speakers)]
    stats = estimate_speaker_cmvn(utterances, cfg, progress=False)
    assert stats.keys() == {"anna", "bert"}
    for speaker, indices in {"anna": [0, 2], "bert": [1]}.items():
        frames = np.concatenate([librosa_log_mel(sentence_waves[index], cfg) for index in indices])
        assert stats[speaker]["frames"] == len(frames) and stats[speaker]["utterances"] == len(indices)
        np.testing.assert_allclose(stats[speaker]["mean"], frames.mean(axis=0), atol=1e-3)
        np.testing.assert_allclose(stats[speaker]["std"], frames.std(axis=0), atol=1e-3)


def test_speaker_cmvn_gives_a_speakers_statistics_and_the_default_for_anyone_else():
    table = SpeakerCmvn({"anna": {"mean": [1.0, 2.0], "std": [3.0, 4.0]}}, {"mean": [0.0, 0.5], "std": [1.0, 1.5]})
    assert table.rows("anna").tolist() == [[1.0, 2.0], [3.0, 4.0]] and table.rows("anna").dtype == torch.float32
    assert table.rows("bert").tolist() == table.rows(None).tolist() == [[0.0, 0.5], [1.0, 1.5]]


def test_estimate_speaker_cmvn_leaves_out_unreadable_audio_and_says_so(sentence_paths, tmp_path, caplog):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    utterances = [SimpleNamespace(audio=sentence_paths[0], speaker="anna"),
                  SimpleNamespace(audio=broken, speaker="anna"), SimpleNamespace(audio=broken, speaker="bert")]
    stats = estimate_speaker_cmvn(utterances, FeatureConfig(), progress=False)
    assert stats.keys() == {"anna"} and stats["anna"]["utterances"] == 1  # bert has no readable audio
    assert "left out 2 of 3 utterances" in caplog.text and "broken.wav" in caplog.text


def test_cmvn_statistics_round_trip_through_json(tmp_path):
    stats = {"mean": [-1.5, 2.25], "std": [3.0, 0.125], "frames": 10, "utterances": 2}
    save_cmvn(tmp_path / "cmvn.json", stats)
    assert load_cmvn(tmp_path / "cmvn.json") == stats


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{mean: 1}", "not JSON"),
        ('{"mean": [0.0]}', "need 'mean' and 'std'"),
        ('{"mean": [0.0, 1.0], "std": [1.0]}', "same length"),
        ('{"mean": [0.0], "std": [0.0]}', "positive"),
    ],
)
def test_load_cmvn_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "cmvn.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        load_cmvn(path)
    assert str(raised.value).startswith(str(path))


# --- SpecAugment ----------------------------------------------------------------------------------------------------


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


# --- speed perturbation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_by_one_over_factor_and_pitch_by_factor(factor):
    tone = sine(500.0, 2.0)
    perturbed = speed_perturb(tone, factor)
    assert len(perturbed) == round(len(tone) / factor)
    resolution = SAMPLE_RATE / len(perturbed)  # FFT bin width
    assert abs(peak_frequency(perturbed) - 500.0 * factor) <= resolution


# --- vocal tract length perturbation -------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [FeatureConfig(), FeatureConfig(n_mels=40, f_max=3800.0)])
def test_mel_filterbank_matches_librosa(cfg):
    expected = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min,
                                   fmax=cfg.f_max).T
    np.testing.assert_allclose(mel_filterbank(cfg).numpy(), expected, rtol=0, atol=1e-6 * expected.max())


@pytest.mark.parametrize("factor", [0.85, 0.9, 1.1, 1.15])
def test_vtlp_warp_scales_low_frequencies_and_keeps_the_ends_fixed(factor):
    nyquist = 8000.0
    freqs = torch.linspace(0, nyquist, 1001, dtype=torch.float64)
    warped = vtlp_warp(freqs, factor, nyquist)
    low = freqs <= 0.6 * nyquist * min(factor, 1) / factor
    torch.testing.assert_close(warped[low], freqs[low] * factor)
    assert warped[0] == 0 and warped[-1] == nyquist
    steps = warped.diff()
    assert (steps > 0).all()  # monotone, so no two frequencies land in one place
    assert steps.max() < 2 * (nyquist / 1000)  # continuous: no jump at the boundary, slopes stay near 1


@pytest.mark.parametrize("factor", [0.9, 1.2])
def test_vtlp_moves_a_tone_to_the_band_of_its_scaled_frequency(factor):
    cfg = FeatureConfig(normalization="none")
    logmel = LogMel(cfg)
    tone = sine(1000.0, 1.0)
    lengths = torch.tensor([len(tone)])
    warped, _ = logmel(tone[None], lengths, warp_factors=torch.tensor([factor]))
    scaled_tone, _ = logmel(sine(1000.0 * factor, 1.0)[None], lengths)
    assert warped[0].mean(0).argmax() == scaled_tone[0].mean(0).argmax()
    assert warped[0].mean(0).argmax() != logmel(tone[None], lengths)[0][0].mean(0).argmax()


def test_frontend_draws_vtlp_factors_only_in_training_and_within_bounds(sentence_waves):
    specaug = SpecAugmentConfig(vtlp_max_warp=0.1, freq_masks=0, time_masks=0)
    frontend = Frontend(FeatureConfig(normalization="none"), specaug=specaug)
    audio, lengths = pad(sentence_waves[:3])
    clean, _ = frontend.eval()(audio, lengths)
    assert frontend.specaug.draw_warp_factors(3, "cpu") is None
    torch.manual_seed(0)
    factors = frontend.train().specaug.draw_warp_factors(1000, "cpu")
    assert factors.min() >= 0.9 and factors.max() <= 1.1 and factors.std() > 0.05
    torch.manual_seed(0)
    warped, _ = frontend(audio, lengths)
    torch.manual_seed(0)
    expected, _ = frontend.logmel(audio, lengths, frontend.specaug.draw_warp_factors(3, "cpu"))
    torch.testing.assert_close(warped, expected)
    assert not torch.allclose(warped, clean)
    assert SpecAugment(SpecAugmentConfig(vtlp_max_warp=0.1, enabled=False)).train().draw_warp_factors(3, "cpu") is None


def test_vtlp_warp_outside_zero_to_one_is_a_config_error():
    with pytest.raises(ConfigError, match="vtlp_max_warp"):
        SpecAugmentConfig(vtlp_max_warp=1.5)


# --- Frontend -------------------------------------------------------------------------------------------------------


def test_frontend_with_global_normalization_needs_statistics():
    with pytest.raises(ConfigError, match="asr cmvn --manifest"):
        Frontend(FeatureConfig(normalization="global"))


def test_frontend_refuses_statistics_of_another_size():
    stats = {"mean": [0.0] * 40, "std": [1.0] * 40}
    with pytest.raises(ConfigError, match="40 channels but features.n_mels is 80"):
        Frontend(FeatureConfig(), cmvn_stats=stats)


def test_frontend_state_dict_has_the_same_shape_whatever_the_normalization():
    stats = {"mean": [1.0] * 80, "std": [2.0] * 80}
    shapes = [
        {name: tuple(tensor.shape) for name, tensor in Frontend(cfg, cmvn_stats=cmvn).state_dict().items()}
        for cfg, cmvn in [(FeatureConfig(), stats), (FeatureConfig(normalization="utterance"), None),
                          (FeatureConfig(normalization="none"), None)]
    ]
    assert shapes[0] == shapes[1] == shapes[2] == {"cmvn.mean": (80,), "cmvn.std": (80,)}


@pytest.mark.parametrize("normalization", ["global", "utterance", "none"])
def test_frontend_chains_log_mel_and_the_chosen_normalization(sentence_waves, normalization):
    cfg = FeatureConfig(normalization=normalization)
    stats = {"mean": torch.linspace(-10, 0, 80).tolist(), "std": torch.linspace(1, 4, 80).tolist()}
    frontend = Frontend(cfg, cmvn_stats=stats).eval()
    audio, lengths = pad(sentence_waves[:2])
    feats, feat_lengths = frontend(audio, lengths)
    log_mel, _ = LogMel(cfg)(audio, lengths)
    expected = {
        "global": GlobalCMVN(stats["mean"], stats["std"])(log_mel, feat_lengths),
        "utterance": utterance_cmvn(log_mel, feat_lengths),
        "none": log_mel,
    }[normalization]
    torch.testing.assert_close(feats, expected)


def test_frontend_normalizes_by_the_speaker_statistics_it_is_given_else_by_the_training_sets(sentence_waves):
    cfg = FeatureConfig(normalization="speaker")
    training_set = {"mean": torch.linspace(-10, 0, 80).tolist(), "std": torch.linspace(1, 4, 80).tolist()}
    frontend = Frontend(cfg, cmvn_stats=training_set).eval()
    audio, lengths = pad(sentence_waves[:2])
    log_mel, feat_lengths = LogMel(cfg)(audio, lengths)
    rows = torch.tensor([[[-8.0] * 80, [2.0] * 80], [[-7.0] * 80, [3.0] * 80]])
    feats, _ = frontend(audio, lengths, rows)
    for index, length in enumerate(feat_lengths.tolist()):
        expected = (log_mel[index, :length] - (-8.0 + index)) / (2.0 + index)
        torch.testing.assert_close(feats[index, :length], expected)
        assert (feats[index, length:] == 0).all()
    # Without them: the training set's statistics, their mean moved to the utterance's own level in every band.
    fallback, _ = frontend(audio, lengths)
    mean, std = torch.tensor(training_set["mean"]), torch.tensor(training_set["std"])
    for index, length in enumerate(feat_lengths.tolist()):
        valid = log_mel[index, :length]
        torch.testing.assert_close(fallback[index, :length], (valid - (mean - mean.mean() + valid.mean())) / std)
        assert (fallback[index, length:] == 0).all()
    # ... which makes it deaf to the recording's gain: every log-mel band moves by log(gain²) (noise keeps them all
    # above the log floor, which does not move).
    noisy = audio + 1e-3 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frontend(0.1 * noisy, lengths)[0], frontend(noisy, lengths)[0], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="normalization is 'utterance'"):
        Frontend(FeatureConfig(normalization="utterance"))(audio, lengths, rows)
    with pytest.raises(ConfigError, match="normalization is 'speaker' but no CMVN statistics"):
        Frontend(cfg)


def test_frontend_augments_only_in_training(sentence_waves):
    frontend = Frontend(FeatureConfig(normalization="utterance"), specaug=SpecAugmentConfig())
    audio, lengths = pad(sentence_waves[:2])
    clean, _ = frontend.eval()(audio, lengths)
    torch.manual_seed(0)
    augmented, _ = frontend.train()(audio, lengths)
    masked = (augmented == 0) & (clean != 0)
    assert masked.any()
    assert torch.equal(augmented[~masked], clean[~masked])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frontend_on_cuda_matches_cpu(sentence_waves):
    frontend = Frontend(FeatureConfig(normalization="utterance"), specaug=SpecAugmentConfig())
    audio, lengths = pad(sentence_waves)
    on_cpu, cpu_lengths = frontend.eval()(audio, lengths)
    frontend.cuda()
    on_gpu, gpu_lengths = frontend(audio.cuda(), lengths.cuda())
    assert on_gpu.device.type == "cuda" and torch.equal(gpu_lengths.cpu(), cpu_lengths)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-3)
    augmented, _ = frontend.train()(audio.cuda(), lengths.cuda())
    assert augmented.device.type == "cuda" and (augmented == 0).sum() > (on_gpu == 0).sum()


# --- benchmark tool -------------------------------------------------------------------------------------------------


def test_bench_features_quick_run_reports_sane_numbers(tmp_path, data_dir):
    report_path = tmp_path / "bench.json"
    files = str(data_dir / "sentences" / "librispeech_bits" / "wav" / "*.wav")
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_features.py"), "--quick", "--files", files,
         "--json-out", str(report_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(report_path.read_text())
    assert report["files"] == 3 and report["audio_seconds"] > 1 and report["torch"] == torch.__version__
    assert [result["method"] for result in report["results"]] == ["asr LogMel", "librosa", "kaldi fbank"]
    logmel, librosa_result, kaldi = report["results"]
    assert logmel["frames"] == librosa_result["frames"]  # same framing; Kaldi's uncentered frames are a few fewer
    assert 0 < kaldi["frames"] <= logmel["frames"]
    for result in report["results"]:
        assert result["median_seconds"] > 0 and result["frames_per_second"] > 0
    assert "frames/s" in completed.stdout
