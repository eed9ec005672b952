"""asr.augment against independent measurements: the SNR measured after mixing, the RT60 of the simulated room by
Schroeder's backward integration, the telephone band and noise colours by Welch spectra, μ-law's level-independent
SNR, a tone's duration and pitch after speed perturbation; and the dataset applying it from the config,
deterministically."""
import numpy as np
import pytest
import soundfile as sf
from reference_features import peak_frequency, sine
from scipy import signal

from asr.audio import SAMPLE_RATE
from asr.augment import (
    AugmentConfig,
    Augmenter,
    add_noise,
    apply_gain,
    biquad,
    coloured_noise,
    microphone_response,
    mu_law,
    music,
    reverberate,
    speed_perturb,
    synthetic_rir,
    telephone,
)
from asr.config import load_config
from asr.data.dataset import SpeechDataset
from asr.data.manifest import Utterance
from asr.errors import ConfigError
from asr.text import CharTokenizer

SR = 16000


@pytest.fixture
def speech(fsdd_dir):
    wave, rate = sf.read(str(fsdd_dir / "3_jackson_7.wav"))
    return signal.resample_poly(wave, SR, rate)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum", "music"])
@pytest.mark.parametrize("snr_db", [0.0, 12.5, 30.0])
def test_the_snr_measured_after_mixing_is_the_one_asked_for(speech, kind, snr_db):
    rng = np.random.default_rng(0)
    noise = Augmenter(AugmentConfig(), SR).noise(kind, len(speech), rng)
    noisy = add_noise(speech, noise, snr_db)
    measured = 10 * np.log10(np.sum(speech ** 2) / np.sum((noisy - speech) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.01)


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum", "music"])
@pytest.mark.parametrize("seconds", [0.0001, 0.05, 0.18])
def test_every_effect_takes_recordings_shorter_than_a_drum_hit(speech, kind, seconds):
    # A lone digit played 1.1 times faster can last under 0.2 s, the length of one beat of the music noise.
    config = AugmentConfig(reverb_prob=1.0, noise_prob=1.0, equalizer_prob=1.0, gain_prob=1.0, telephone_prob=1.0,
                           noise_kinds=[kind])
    clip = speech[:max(1, round(seconds * SR))]
    for seed in range(8):
        out = Augmenter(config, SR)(clip, np.random.default_rng(seed))
        assert out.shape == clip.shape and np.all(np.isfinite(out))


def _rt60_schroeder(rir: np.ndarray, sample_rate: int) -> float:
    """RT60 from the energy decay curve (Schroeder 1965), extrapolated from its -5 to -25 dB part (T20 × 3)."""
    edc = np.cumsum(rir[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    part = np.flatnonzero((edc_db <= -5) & (edc_db >= -25))
    slope, _ = np.polyfit(part / sample_rate, edc_db[part], 1)  # dB a second
    return -60 / slope


@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.9])
def test_the_simulated_room_decays_in_the_rt60_asked_for(rt60):
    measured = [_rt60_schroeder(synthetic_rir(rt60, SR, np.random.default_rng(seed), direct_to_reverberant_db=0.0),
                                SR) for seed in range(5)]
    assert np.mean(measured) == pytest.approx(rt60, rel=0.1)


def test_the_direct_to_reverberant_ratio_is_the_one_asked_for():
    rir = synthetic_rir(0.4, SR, np.random.default_rng(1), direct_to_reverberant_db=6.0)
    assert 10 * np.log10(rir[0] ** 2 / np.sum(rir[1:] ** 2)) == pytest.approx(6.0, abs=1e-6)


def test_reverberation_keeps_the_speech_where_it_was_and_at_its_level(speech):
    wet = reverberate(speech, synthetic_rir(0.6, SR, np.random.default_rng(2), direct_to_reverberant_db=0.0))
    assert len(wet) == len(speech)
    assert np.sqrt(np.mean(wet ** 2)) == pytest.approx(np.sqrt(np.mean(speech ** 2)), rel=1e-6)
    lags = signal.correlation_lags(len(wet), len(speech))
    assert abs(lags[np.argmax(signal.correlate(wet, speech))]) <= SR // 1000  # within 1 ms: no delay added
    assert not np.allclose(wet, speech)


def _welch_db(x, rate):
    frequencies, power = signal.welch(x, rate, nperseg=2048)
    return frequencies, 10 * np.log10(power + 1e-30)


@pytest.mark.parametrize("kind, slope_db_per_decade", [("white", 0.0), ("pink", -10.0), ("brown", -20.0)])
def test_noise_colours_have_their_spectral_slopes(kind, slope_db_per_decade):
    noise = coloured_noise(kind, 20 * SR, np.random.default_rng(3))
    assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(1.0)
    frequencies, power_db = _welch_db(noise, SR)
    band = (frequencies >= 50) & (frequencies <= 5000)
    slope, _ = np.polyfit(np.log10(frequencies[band]), power_db[band], 1)
    assert slope == pytest.approx(slope_db_per_decade, abs=1.5)


def test_the_telephone_channel_passes_300_to_3400_hz_only():
    noise = coloured_noise("white", 10 * SR, np.random.default_rng(4)) * 0.1
    frequencies, power_db = _welch_db(telephone(noise, SR), SR)
    passband = power_db[(frequencies >= 500) & (frequencies <= 3000)].mean()
    assert power_db[(frequencies >= 4200) & (frequencies <= 7500)].max() < passband - 40  # beyond 8 kHz's Nyquist
    assert power_db[(frequencies >= 20) & (frequencies <= 120)].max() < passband - 25
    assert abs(power_db[(frequencies >= 500) & (frequencies <= 3000)] - passband).max() < 3


@pytest.mark.parametrize("level_dbfs", [-6.0, -36.0])
def test_mu_law_keeps_about_38_db_snr_whatever_the_level(level_dbfs):
    # 8-bit linear PCM would lose 30 dB of SNR between these two levels; μ-law's point is that it does not.
    tone = 10 ** (level_dbfs / 20) * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    error = mu_law(tone) - tone
    snr = 10 * np.log10(np.sum(tone ** 2) / np.sum(error ** 2))
    assert 30 < snr < 42


def test_gain_changes_the_level_but_never_takes_the_peak_past_full_scale(speech):
    quiet = speech / np.abs(speech).max() * 0.1
    assert np.abs(apply_gain(quiet, 6.0)).max() == pytest.approx(0.1 * 10 ** (6 / 20))
    assert np.abs(apply_gain(quiet, 40.0)).max() == pytest.approx(0.99)


def _level_db(wave: np.ndarray) -> float:
    steady = wave[len(wave) // 2:]  # past the filter's transient
    return 10 * np.log10(np.mean(steady ** 2))


@pytest.mark.parametrize("kind, frequency, probe, expected_db", [
    ("peak", 1000.0, 1000.0, 8.0),     # the full gain at the centre
    ("peak", 1000.0, 6000.0, 0.0),     # none far from it
    ("low", 200.0, 40.0, 8.0),         # a low shelf lifts what lies below it
    ("low", 200.0, 3000.0, 0.0),
    ("high", 2000.0, 7000.0, 8.0),     # a high shelf what lies above
    ("high", 2000.0, 100.0, 0.0),
])
def test_each_equalizer_filter_changes_a_sine_by_its_gain_where_it_should(kind, frequency, probe, expected_db):
    tone = sine(probe, 1.0).numpy().astype(float)
    filtered = signal.sosfilt(biquad(frequency, 8.0, 0.707, SR, kind)[None], tone)
    assert _level_db(filtered) - _level_db(tone) == pytest.approx(expected_db, abs=0.3)


def test_the_microphone_response_colours_the_spectrum_and_keeps_the_level(speech):
    coloured = microphone_response(speech, SR, np.random.default_rng(3), gain_db=(10.0, 10.0))
    assert np.mean(coloured ** 2) == pytest.approx(np.mean(speech ** 2), rel=1e-6)
    _, before = signal.welch(speech, SR, nperseg=512)
    _, after = signal.welch(coloured, SR, nperseg=512)
    change_db = 10 * np.log10(after[1:] / before[1:])
    assert change_db.max() - change_db.min() > 6  # every filter lifts its band by 10 dB: the shape changes


@pytest.mark.parametrize("seed", range(4))
def test_music_is_a_tune_of_pitched_notes_at_unit_rms(seed):
    wave = music(4 * SR, SR, np.random.default_rng(seed))
    assert np.sqrt(np.mean(wave ** 2)) == pytest.approx(1.0)
    _, power = signal.welch(wave, SR, nperseg=4096)
    assert power.max() > 30 * np.median(power)  # partials stand out of the spectrum, as noise's do not
    strongest = {np.argmax(np.abs(np.fft.rfft(part))) for part in wave.reshape(16, -1)}  # quarter seconds
    assert len(strongest) > 1  # the notes change
    np.testing.assert_array_equal(wave, music(4 * SR, SR, np.random.default_rng(seed)))


def test_the_augmenter_is_a_function_of_its_generator(speech):
    augmenter = Augmenter(AugmentConfig(reverb_prob=1, noise_prob=1, equalizer_prob=1, gain_prob=1,
                                        telephone_prob=1), SR)
    first = augmenter(speech, np.random.default_rng(5))
    assert first.dtype == np.float32 and len(first) == len(speech)
    np.testing.assert_array_equal(first, augmenter(speech, np.random.default_rng(5)))
    assert not np.allclose(first, augmenter(speech, np.random.default_rng(6)))
    silence = np.zeros(SR)
    np.testing.assert_array_equal(augmenter(silence, np.random.default_rng(5)) == 0, True)  # no noise made up


def test_the_config_section_reaches_the_dataset_and_is_drawn_anew_each_epoch(fsdd_dir, tmp_path):
    config = load_config(None, ["augment.noise_prob=1", "augment.snr_db=[10,10]", "augment.noise_kinds=[white]"])
    assert config.augment.enabled and config.to_dict()["augment"]["snr_db"] == [10.0, 10.0]
    utterances = [Utterance("u", str(fsdd_dir / "3_jackson_7.wav"), 0.5, "THREE")]
    clean = SpeechDataset(utterances, CharTokenizer())[0]["audio"].numpy()
    dataset = SpeechDataset(utterances, CharTokenizer(), seed=0, augment=config.augment)
    noisy = dataset[0]["audio"].numpy()
    measured = 10 * np.log10(np.sum(clean.astype(float) ** 2) / np.sum((noisy - clean).astype(float) ** 2))
    assert measured == pytest.approx(10.0, abs=0.05)
    np.testing.assert_array_equal(noisy, dataset[0]["audio"].numpy())
    dataset.set_epoch(1)
    assert not np.array_equal(noisy, dataset[0]["audio"].numpy())


@pytest.mark.parametrize("override, problem", [
    ("augment.snr_db=[30,5]", "snr_db"),
    ("augment.reverb_prob=1.5", "reverb_prob"),
    ("augment.noise_kinds=[traffic]", "noise_kinds"),
    ("augment.rt60=[0,1]", "rt60"),
    ("augment.equalizer_db=[10,-10]", "equalizer_db"),
])
def test_impossible_settings_are_refused(override, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(None, [override])


# --- speed perturbation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_by_one_over_factor_and_pitch_by_factor(factor):
    tone = sine(500.0, 2.0)
    perturbed = speed_perturb(tone, factor)
    assert len(perturbed) == round(len(tone) / factor)
    resolution = SAMPLE_RATE / len(perturbed)  # FFT bin width
    assert abs(peak_frequency(perturbed) - 500.0 * factor) <= resolution
