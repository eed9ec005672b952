"""asr.features against librosa, numpy transcriptions of the formulas, and real recordings."""
import json
import re
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from reference_features import librosa_log_mel, pad, sine

from asr.errors import ConfigError
from asr.features import FeatureConfig, LogMel, mel_filterbank, vtlp_warp

REPO = Path(__file__).resolve().parents[1]


# --- configuration --------------------------------------------------------------------------------------------------


def test_feature_config_round_trips_through_a_dict():
    cfg = FeatureConfig(n_mels=40, hop_ms=20.0, normalization="utterance")
    assert FeatureConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.win_length, cfg.hop_length) == (400, 320)


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


# --- mel filterbank and vocal tract length perturbation ---------------------------------------------------------


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
