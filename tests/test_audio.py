"""asr.audio against real files in their original formats, independent resamplers, and broken files made here."""
import tracemalloc

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
import torch

from asr.audio import (
    SAMPLE_RATE,
    AudioInfo,
    audio_info,
    load_audio,
    load_samples,
    resample,
    stream_audio,
    stream_samples,
)
from asr.errors import AudioError

LIBRISPEECH_FLAC = "LibriSpeech/test-clean/1089/134686/1089-134686-0001.flac"
ORIGINALS = [LIBRISPEECH_FLAC, "LJ001-0002.wav", "OSR_us_000_0034_8k.wav", "common_voice_en_22058266.mp3"]


def sine(frequency, seconds, sample_rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * sample_rate)) / sample_rate)).astype(
        np.float32
    )


def peak_frequency(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / sample_rate)[spectrum.argmax()]


# --- real files -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORIGINALS)
def test_real_files_load_as_16k_mono_float32_of_the_header_duration(original_formats, name):
    path = original_formats / name
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert 0.01 < wave.abs().max() <= 1.0
    header_duration = librosa.get_duration(path=path)
    # Resampling rounds to the nearest output sample. MP3 headers only estimate the length (encoder delay and padding):
    # 270 samples at 48 kHz, 5.6 ms, for this file.
    tolerance = 0.01 if name.endswith(".mp3") else 1 / SAMPLE_RATE
    assert abs(len(wave) / SAMPLE_RATE - header_duration) <= tolerance


@pytest.mark.parametrize("name", ORIGINALS)
def test_audio_info_reads_the_header(original_formats, name):
    path = original_formats / name
    header = soundfile.info(str(path))
    info = audio_info(path)
    assert info == AudioInfo(
        duration=pytest.approx(header.duration), sample_rate=header.samplerate, channels=1, frames=header.frames
    )
    assert info.duration == pytest.approx(librosa.get_duration(path=path))


@pytest.mark.parametrize(
    "original, resampled_copy",
    [
        ("LJ001-0002.wav", "ljspeech_subset/wav/LJ001-0002.wav"),
        ("common_voice_en_22058266.mp3", "mfa_testdata/wav/common_voice_en_22058266.wav"),
    ],
)
def test_matches_the_16k_copies_made_by_the_data_curator(original_formats, original, resampled_copy):
    ours = load_audio(original_formats / original).numpy()
    theirs, rate = soundfile.read(str(original_formats.parent / resampled_copy), dtype="float32")
    assert rate == SAMPLE_RATE and len(ours) == len(theirs)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.9995


# --- resampling -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_rate", [8000, 22050, 44100, 48000])
def test_a_resampled_sine_keeps_its_frequency(tmp_path, file_rate):
    path = tmp_path / "sine.wav"
    soundfile.write(path, sine(1234.0, 2.0, file_rate), file_rate, subtype="FLOAT")
    wave = load_audio(path).numpy()
    assert len(wave) == 2 * SAMPLE_RATE
    assert peak_frequency(wave, SAMPLE_RATE) == pytest.approx(1234.0, abs=0.5)  # FFT bins are 0.5 Hz apart


def test_resampling_agrees_with_scipy_polyphase_resampler():
    # 22050 -> 16000 is 320/441. The two filters differ only near the band edge, far above this 440 Hz tone.
    wave = sine(440.0, 1.0, 22050)
    ours = resample(torch.from_numpy(wave), 22050, 16000).numpy()
    reference = scipy.signal.resample_poly(wave, 320, 441)
    assert len(ours) == len(reference) == 16000
    middle = slice(1000, -1000)  # the two filters treat the signal's abrupt start and end differently
    np.testing.assert_allclose(ours[middle], reference[middle], atol=1e-3)


def test_downsampling_removes_frequencies_above_the_new_nyquist_instead_of_aliasing_them():
    # A 10 kHz tone at 44.1 kHz would alias to 6 kHz if decimated naively; at 16 kHz it must vanish.
    tone = torch.from_numpy(sine(10000.0, 1.0, 44100))
    assert resample(tone, 44100, 16000)[1000:-1000].abs().max() < 1e-3


def test_resample_gives_back_the_kind_it_is_given():
    wave = sine(440, 0.5, 8000)
    resampled = resample(wave, 8000, 16000)
    assert isinstance(resampled, np.ndarray) and resampled.dtype == np.float32
    np.testing.assert_array_equal(resampled, resample(torch.from_numpy(wave), 8000, 16000).numpy())
    assert resample(wave.astype(np.float64), 16000, 16000).dtype == np.float32
    with pytest.raises(ValueError, match="1-D"):
        resample(np.zeros((2, 800), np.float32), 8000, 16000)


def test_resample_returns_float32_and_rejects_batches():
    wave = torch.zeros(800, dtype=torch.float64)
    assert resample(wave, 8000, 16000).dtype == torch.float32
    with pytest.raises(ValueError, match="1-D"):
        resample(torch.zeros(2, 800), 8000, 16000)


# --- channels and sample formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 6])
def test_channels_are_averaged(tmp_path, channels):
    tones = np.stack([sine(200.0 * (c + 1), 0.5, SAMPLE_RATE, amplitude=0.1 * (c + 1)) for c in range(channels)], 1)
    path = tmp_path / "multichannel.wav"
    soundfile.write(path, tones, SAMPLE_RATE, subtype="FLOAT")
    assert audio_info(path).channels == channels
    np.testing.assert_allclose(load_audio(path).numpy(), tones.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("subtype, bits", [("PCM_U8", 8), ("PCM_16", 16), ("PCM_24", 24), ("PCM_32", 32)])
def test_bit_depths_give_the_float_waveform_within_one_quantization_step(tmp_path, subtype, bits):
    wave = sine(300.0, 0.5, SAMPLE_RATE, amplitude=0.8) + sine(2100.0, 0.5, SAMPLE_RATE, amplitude=0.1)
    float_path, int_path = tmp_path / "float.wav", tmp_path / f"{subtype}.wav"
    soundfile.write(float_path, wave, SAMPLE_RATE, subtype="FLOAT")
    soundfile.write(int_path, wave, SAMPLE_RATE, subtype=subtype)
    reference = load_audio(float_path).numpy()
    np.testing.assert_array_equal(reference, wave)
    step = 2.0 ** -(bits - 1)
    np.testing.assert_allclose(load_audio(int_path).numpy(), reference, atol=max(step, 1e-7))


# --- errors ---------------------------------------------------------------------------------------------------------


def write_good_wav(path):
    soundfile.write(path, sine(440.0, 0.5, SAMPLE_RATE), SAMPLE_RATE)
    return path


def make_text_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my notes, not a recording\n" * 20)
    return path


def make_corrupt_header(tmp_path):
    data = write_good_wav(tmp_path / "good.wav").read_bytes()
    path = tmp_path / "corrupt.wav"
    path.write_bytes(data[:12] + b"\xff" * 24 + data[36:])  # the "fmt " chunk overwritten
    return path


def make_truncated_flac(tmp_path):
    flac = tmp_path / "whole.flac"
    soundfile.write(flac, np.random.default_rng(0).uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32), SAMPLE_RATE)
    path = tmp_path / "truncated.flac"
    path.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    return path


def make_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    return path


def make_wav_without_samples(tmp_path):
    path = tmp_path / "no_samples.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    return path


def make_wav_with_nan(tmp_path):
    wave = sine(440.0, 0.5, SAMPLE_RATE)
    wave[100] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
    return path


def make_wav_with_inf(tmp_path):
    wave = sine(440.0, 0.5, SAMPLE_RATE)
    wave[7000] = -np.inf
    path = tmp_path / "inf.wav"
    soundfile.write(path, np.stack([wave, wave], 1), SAMPLE_RATE, subtype="FLOAT")
    return path


LOAD_ERRORS = [
    (lambda tmp_path: tmp_path / "missing.wav", "file not found"),
    (lambda tmp_path: tmp_path, "is a directory"),
    (make_text_named_wav, "not an audio file (libsndfile: Format not recognised"),
    (make_empty_file, "empty file (0 bytes)"),
    (make_corrupt_header, "truncated or corrupt (libsndfile: "),
    (make_truncated_flac, "truncated or corrupt (libsndfile: "),
    (make_wav_without_samples, "no audio samples"),
    (make_wav_with_nan, "contains NaN or infinite samples"),
    (make_wav_with_inf, "contains NaN or infinite samples"),
]


@pytest.mark.parametrize("make_file, problem", LOAD_ERRORS)
def test_load_audio_names_the_file_and_the_problem(tmp_path, make_file, problem):
    path = make_file(tmp_path)
    with pytest.raises(AudioError) as raised:
        load_audio(path)
    assert raised.value.problem.startswith(problem)
    assert str(raised.value).startswith(f"{path}: ")


@pytest.mark.parametrize("make_file, problem", LOAD_ERRORS)
def test_stream_audio_raises_the_same_errors(tmp_path, make_file, problem):
    with pytest.raises(AudioError) as raised:
        list(stream_audio(make_file(tmp_path), chunk_seconds=0.1))
    assert raised.value.problem.startswith(problem)


@pytest.mark.parametrize("make_file, problem", LOAD_ERRORS[:5])
def test_audio_info_raises_the_errors_a_header_shows(tmp_path, make_file, problem):
    with pytest.raises(AudioError) as raised:
        audio_info(make_file(tmp_path))
    assert raised.value.problem.startswith(problem)


def test_library_errors_are_chained_not_swallowed(tmp_path):
    with pytest.raises(AudioError) as raised:
        load_audio(make_corrupt_header(tmp_path))
    assert isinstance(raised.value.__cause__, soundfile.LibsndfileError)


def test_fallback_to_librosa_stays_silent(tmp_path, recwarn):
    with pytest.raises(AudioError):
        load_audio(make_text_named_wav(tmp_path))
    with pytest.raises(AudioError):
        audio_info(make_text_named_wav(tmp_path))
    assert len(recwarn) == 0


# --- streaming ------------------------------------------------------------------------------------------------------


def test_stream_audio_chunks_put_together_equal_load_audio(original_formats):
    path = original_formats / "OSR_us_000_0034_8k.wav"  # 35.5 s at 8 kHz: resampled block by block
    chunks = list(stream_audio(path, chunk_seconds=4.0))
    starts = [start for start, _ in chunks]
    assert starts == [4.0 * i for i in range(len(chunks))]
    assert all(len(chunk) == 4 * SAMPLE_RATE for _, chunk in chunks[:-1])
    assert 0 < len(chunks[-1][1]) <= 4 * SAMPLE_RATE
    np.testing.assert_allclose(torch.cat([chunk for _, chunk in chunks]), load_audio(path), atol=1e-6)


def test_stream_audio_overlapping_chunks(original_formats):
    path = original_formats / "LJ001-0002.wav"  # 1.9 s at 22.05 kHz
    whole = load_audio(path)
    chunks = list(stream_audio(path, chunk_seconds=0.5, overlap_seconds=0.125))
    assert [start for start, _ in chunks] == [0.0, 0.375, 0.75, 1.125, 1.5]
    for start, chunk in chunks:
        first = round(start * SAMPLE_RATE)
        np.testing.assert_allclose(chunk, whole[first : first + len(chunk)], atol=1e-6)
    assert [len(chunk) for _, chunk in chunks[:-1]] == [8000] * 4
    last_start, last_chunk = chunks[-1]
    assert round(last_start * SAMPLE_RATE) + len(last_chunk) == len(whole)


def test_stream_audio_of_a_file_shorter_than_a_chunk(original_formats):
    path = original_formats / "LJ001-0002.wav"
    [(start, chunk)] = stream_audio(path, chunk_seconds=60.0, overlap_seconds=5.0)
    assert start == 0.0
    np.testing.assert_allclose(chunk, load_audio(path), atol=1e-6)


def test_stream_audio_memory_stays_bounded_by_the_chunk_size(tmp_path):
    path = tmp_path / "long.wav"
    seconds, file_rate = 120, 44100
    rng = np.random.default_rng(0)
    soundfile.write(path, rng.uniform(-0.5, 0.5, (seconds * file_rate, 2)).astype(np.float32), file_rate)
    one_second_of_file = file_rate * 2 * 4  # bytes of one second of this file as float32, what one block holds
    tracemalloc.start()
    chunks = sum(1 for _ in stream_audio(path, chunk_seconds=1.0))
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert chunks == seconds
    # About 2.7 blocks measured (block, its mono mix, resampled output, pending chunk); the whole file is 120.
    assert peak_bytes < 5 * one_second_of_file


def test_stream_audio_rejects_an_overlap_as_long_as_the_chunk(original_formats):
    with pytest.raises(ValueError, match="overlap_seconds"):
        next(stream_audio(original_formats / "LJ001-0002.wav", chunk_seconds=1.0, overlap_seconds=1.0))


def test_numpy_samples_are_the_tensors_samples(original_formats):
    """load_samples and stream_samples (numpy, no torch needed) hold exactly what load_audio and stream_audio do."""
    path = original_formats / "LJ001-0002.wav"  # 22.05 kHz: resampled
    samples = load_samples(path)
    assert isinstance(samples, np.ndarray) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, load_audio(path).numpy())
    streamed = list(stream_samples(path, chunk_seconds=0.5, overlap_seconds=0.125))
    as_tensors = list(stream_audio(path, chunk_seconds=0.5, overlap_seconds=0.125))
    assert [start for start, _ in streamed] == [start for start, _ in as_tensors]
    for (_, chunk), (_, tensor) in zip(streamed, as_tensors):
        assert isinstance(chunk, np.ndarray)
        np.testing.assert_array_equal(chunk, tensor.numpy())
