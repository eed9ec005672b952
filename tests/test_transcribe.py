import json
import math
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import audio_info, load_audio
from asr.checkpoint import save_model
from asr.cli import main
from asr.decoding import Word
from asr.errors import AudioError
from asr.features import FeatureConfig, LogMel
from asr.model import ModelConfig
from asr.recognizer import Recognizer
from asr.text import CharTokenizer
from asr.transcribe import (
    Transcript,
    expand_inputs,
    format_json,
    format_srt,
    format_vtt,
    stitch_windows,
    subtitle_cues,
    transcribe_file,
    transcribe_files,
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # the fake recognizers' output frame: 40 ms, like the real model's 10 ms hop × 4
TOKENIZER = CharTokenizer()
LETTERS = TOKENIZER.tokens[3:]  # A..Z
DELIMITER_ID = TOKENIZER.tokens.index("|")


def tiny_recognizer(seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, num_layers=1, hidden_size=32, subsampling_channels=8)
    return Recognizer(config, FeatureConfig(normalization="utterance"), CharTokenizer()).eval()


class FrameRecognizer:
    """A recognizer (asr.backend.SpeechRecognizer) whose output at each 40 ms frame is a known function of that
    frame's own samples: what it hears somewhere does not depend on where a window starts or ends, so windowed and
    whole transcripts must agree. It records the shape of every batch it is given, and keeps the last one."""

    normalization = "utterance"
    exposes_features = False
    word_span = None
    source_path = None

    def __init__(self, token_of_frames, edge_pad_seconds=0.0):
        self.tokenizer = TOKENIZER
        self.frame_shift = SAMPLES_PER_FRAME / SAMPLE_RATE
        self.edge_pad_seconds = edge_pad_seconds
        self.token_of_frames = token_of_frames  # (B, T, 640) samples → (B, T) token ids
        self.batch_shapes = []
        self.heard = None

    def log_probs(self, audio, audio_lengths, speaker_cmvn=None):
        self.batch_shapes.append(tuple(audio.shape))
        self.heard = audio.copy()
        frames = math.ceil(audio.shape[1] / SAMPLES_PER_FRAME)
        padded = np.pad(audio, ((0, 0), (0, frames * SAMPLES_PER_FRAME - audio.shape[1])))
        ids = self.token_of_frames(padded.reshape(audio.shape[0], frames, SAMPLES_PER_FRAME))
        return certain(ids, TOKENIZER.vocab_size), (audio_lengths + SAMPLES_PER_FRAME - 1) // SAMPLES_PER_FRAME


def certain(ids, vocab_size):
    """(B, T) token ids → (B, T, V) float32 log-probabilities that make each frame's token near certain."""
    logits = 10.0 * np.eye(vocab_size, dtype=np.float32)[ids]
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def spelled_token(frames):
    """The token whose id is 100 × the frame's middle sample (0, silence, is the blank)."""
    return np.clip(np.round(frames[..., SAMPLES_PER_FRAME // 2] * 100), 0, TOKENIZER.vocab_size - 1).astype(np.int64)


def spoken_words(count, seed=0):
    """A waveform that spells `count` different two-letter words for `spelled_token`, with random pauses, and the
    words. Each letter lasts 3 frames, a blank frame separates the two letters (so "AA" stays two letters), and `|`
    (2 frames) ends each word."""
    rng = random.Random(seed)
    pieces, words = [], []
    for index in range(count):
        first, second = LETTERS[index // 26 % 26], LETTERS[index % 26]
        words.append(first + second)
        for token, frames in ((0, rng.randint(0, 5)), (TOKENIZER.tokens.index(first), 3), (0, 1),
                              (TOKENIZER.tokens.index(second), 3), (DELIMITER_ID, 2)):
            pieces.append(torch.full((frames * SAMPLES_PER_FRAME,), token / 100))
    return torch.cat(pieces), words


def energy_token(frames):
    """"A" for a frame louder than -30 dBFS RMS, `|` otherwise: one word a burst of speech."""
    loud = np.sqrt(np.mean(np.square(frames), axis=-1)) > 10 ** (-30 / 20)
    return np.where(loud, TOKENIZER.tokens.index("A"), DELIMITER_ID)


def word(text, start, end):
    return Word(text, start, end, 0.9)


# ----------------------------------------------------------------------------------------------------------------
# Stitching overlapping windows


def test_stitching_keeps_each_word_from_the_window_where_it_is_farthest_from_an_edge():
    # Windows [0, 10) and [8, 18): the handover is at 9 s.
    first = [word("ONE", 1.0, 1.5), word("TWO", 8.2, 8.6), word("THR", 9.6, 9.99)]  # "THR": cut by the edge
    second = [word("WO", 8.0, 8.6), word("THREE", 9.6, 10.2), word("FOUR", 12.0, 12.4)]  # "WO": cut by the edge
    assert [w.word for w in stitch_windows([(0.0, 10.0, first), (8.0, 18.0, second)])] == \
        ["ONE", "TWO", "THREE", "FOUR"]


def test_stitching_takes_a_word_once_when_its_centre_jitters_across_the_handover():
    # "TWO" is centred before the handover (9 s) in the first window and after it in the second: not doubled.
    doubled = stitch_windows([(0.0, 10.0, [word("TWO", 8.7, 9.28)]), (8.0, 18.0, [word("TWO", 8.76, 9.28)])])
    assert [(w.word, w.start) for w in doubled] == [("TWO", 8.7)]
    # The other way round: after the handover in the first window and before it in the second: not lost.
    lost = stitch_windows([(0.0, 10.0, [word("TWO", 8.76, 9.28)]), (8.0, 18.0, [word("TWO", 8.7, 9.28)])])
    assert [(w.word, w.start) for w in lost] == [("TWO", 8.7)]
    # A different word at the same place is not a duplicate: the later window's word wins past the handover.
    replaced = stitch_windows([(0.0, 10.0, [word("TO", 8.76, 9.28)]), (8.0, 18.0, [word("TWO", 8.76, 9.28)])])
    assert [w.word for w in replaced] == ["TWO"]


def test_stitching_three_windows_and_no_words():
    windows = [(0.0, 10.0, [word("A", 0.5, 0.9)]), (8.0, 18.0, []), (16.0, 20.0, [word("B", 19.0, 19.5)])]
    assert [w.word for w in stitch_windows(windows)] == ["A", "B"]
    assert stitch_windows([]) == []


# Windows that step on the 40 ms frame grid (6 s, 2 s, 5 s) and off it (3.5 s, 3.43 s).
@pytest.mark.parametrize("chunk_seconds, overlap_seconds",
                         [(8.0, 2.0), (3.0, 1.0), (7.3, 2.3), (5.0, 1.5), (4.63, 1.2)])
def test_windowed_transcription_loses_and_doubles_no_word(chunk_seconds, overlap_seconds):
    wave, words = spoken_words(150)  # about 75 s, a word every half second
    recognizer = FrameRecognizer(spelled_token)
    windowed = transcribe_file(recognizer, wave, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
    assert windowed.text == " ".join(words)
    assert windowed.duration == pytest.approx(wave.numel() / SAMPLE_RATE)
    # The windows were decoded one at a time, none longer than chunk_seconds, and they covered the whole wave.
    assert len(recognizer.batch_shapes) == math.ceil((wave.numel() / SAMPLE_RATE - overlap_seconds)
                                                     / (chunk_seconds - overlap_seconds))
    assert max(length for _, length in recognizer.batch_shapes) == round(chunk_seconds * SAMPLE_RATE)
    whole = transcribe_file(recognizer, wave, chunk_seconds=1000.0)
    assert whole.text == windowed.text
    if (chunk_seconds - overlap_seconds) * SAMPLE_RATE % SAMPLES_PER_FRAME == 0:
        # Windows start on the frame grid of the whole wave: the same frames, hence exactly the same word times.
        assert windowed.words == whole.words
    else:
        # Off the grid a window's frames sample the wave half a frame later, shifting times by up to one frame.
        for a, b in zip(windowed.words, whole.words):
            assert abs(a.start - b.start) <= 0.04 + 1e-9 and abs(a.end - b.end) <= 0.04 + 1e-9


def test_a_long_real_recording_read_in_small_windows_is_covered_to_its_end(original_formats):
    path = original_formats / "OSR_us_000_0034_8k.wav"  # ten Harvard sentences, 8 kHz, about 35 s
    duration = audio_info(path).duration
    assert duration > 30
    recognizer = FrameRecognizer(energy_token)
    windowed = transcribe_file(recognizer, path, chunk_seconds=8.0, overlap_seconds=2.0)
    assert windowed.duration == pytest.approx(duration)
    assert len(recognizer.batch_shapes) == 6  # windows start every 6 s; the sixth, at 30 s, reaches the end
    whole = transcribe_file(recognizer, load_audio(path), chunk_seconds=1000.0)
    assert len(whole.words) > 40  # bursts of speech in all ten sentences ...
    assert whole.words[-1].end > duration - 5  # ... the last one near the end
    assert windowed.words == whole.words

    # The real (untrained) model runs through the same windows and gives words inside the recording, in order.
    transcript = tiny_recognizer().transcribe(path, chunk_seconds=8.0, overlap_seconds=2.0)
    assert transcript.duration == pytest.approx(duration)
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start < w.end <= duration + 0.04 for w in transcript.words)


@pytest.mark.slow
def test_an_hour_of_audio_is_transcribed_in_bounded_memory(tmp_path):
    # Quiet noise as a 16-bit wav (about 115 MB), written a minute at a time.
    path = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(path, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as out:
        for _ in range(60):
            out.write((rng.standard_normal(60 * SAMPLE_RATE) * 0.003).astype(np.float32))
    # A fresh process, so that its peak memory says what transcribing took and nothing else. The whole hour as
    # float32 samples would be 230 MB and its log-mel features 115 MB.
    script = textwrap.dedent(f"""
        import json, resource, torch
        from asr.features import FeatureConfig
        from asr.model import ModelConfig
        from asr.recognizer import Recognizer
        from asr.text import CharTokenizer
        from asr.transcribe import transcribe_file
        torch.set_num_threads(2)
        torch.manual_seed(0)
        tokenizer = CharTokenizer()
        config = ModelConfig(vocab_size=tokenizer.vocab_size, num_layers=1, hidden_size=16, subsampling_channels=4)
        recognizer = Recognizer(config, FeatureConfig(normalization="utterance"), tokenizer).eval()
        lengths = []
        forward = recognizer.forward
        def recording_forward(audio, audio_lengths, speaker_cmvn=None):
            lengths.append(audio.shape[1])
            return forward(audio, audio_lengths, speaker_cmvn)
        recognizer.forward = recording_forward
        transcribe_file(recognizer, torch.zeros(30 * 16000), chunk_seconds=30.0)  # warm up allocators
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        transcript = transcribe_file(recognizer, {str(path)!r}, chunk_seconds=30.0, overlap_seconds=5.0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth_kb": after - before, "duration": transcript.duration,
                          "windows": len(lengths) - 1, "longest": max(lengths)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    measured = json.loads(result.stdout.splitlines()[-1])
    assert measured["duration"] == pytest.approx(3600.0)
    assert measured["windows"] == math.ceil((3600 - 5) / 25)
    assert measured["longest"] == 30 * SAMPLE_RATE
    assert measured["growth_kb"] < 60_000, measured


# ----------------------------------------------------------------------------------------------------------------
# Many files


def sentence_files(data_dir, count=6):
    return sorted((data_dir / "sentences" / "harvard_sentences" / "wav").glob("*.wav"))[:count]


def test_files_are_batched_by_duration_and_returned_in_the_order_given(data_dir):
    paths = sentence_files(data_dir) + sorted((data_dir / "fsdd" / "recordings").glob("0_george_*.wav"))[:4]
    recognizer = tiny_recognizer()
    results = list(transcribe_files(recognizer, paths, batch_size=4, max_batch_seconds=60.0))
    assert [path for path, _ in results] == paths
    for path, transcript in results:
        alone = transcribe_file(recognizer, path)
        # Padding in a batch changes nothing: the model masks it (up to float rounding in the confidences).
        assert transcript.text == alone.text
        assert [(w.word, w.start, w.end) for w in transcript.words] == [(w.word, w.start, w.end) for w in alone.words]
        assert transcript.duration == pytest.approx(audio_info(path).duration, abs=1e-3)

    spy = FrameRecognizer(spelled_token)
    list(transcribe_files(spy, paths, batch_size=4, max_batch_seconds=60.0))
    # Four short digits first, then the sentences by length, at most 4 a batch and 60 s of padded audio.
    durations = sorted(audio_info(p).duration for p in paths)
    assert [shape[0] for shape in spy.batch_shapes] == [4, 4, 2]
    assert all(rows * length <= 60 * SAMPLE_RATE for rows, length in spy.batch_shapes)
    assert spy.batch_shapes[0][1] == pytest.approx(durations[3] * SAMPLE_RATE, abs=1)


def test_an_unreadable_file_is_an_error_for_it_alone(data_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    good = sentence_files(data_dir, 2)
    results = dict(transcribe_files(tiny_recognizer(), [good[0], bad, tmp_path / "missing.wav", good[1]]))
    assert isinstance(results[bad], AudioError) and str(bad) in str(results[bad])
    assert "not found" in str(results[tmp_path / "missing.wav"])
    assert isinstance(results[good[0]], Transcript) and isinstance(results[good[1]], Transcript)


def test_inputs_expand_folders_and_globs(tmp_path):
    for name in ("a/one.wav", "a/b/two.FLAC", "a/notes.txt", "c/three.mp3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = expand_inputs([tmp_path / "a", str(tmp_path / "c" / "*.mp3"), tmp_path / "a" / "one.wav",
                           str(tmp_path / "nothing*.wav"), tmp_path / "missing.wav", tmp_path / "empty"])
    assert found == [tmp_path / "a" / "b" / "two.FLAC", tmp_path / "a" / "one.wav", tmp_path / "c" / "three.mp3",
                     tmp_path / "nothing*.wav", tmp_path / "missing.wav", tmp_path / "empty"]
    assert [str(p) for p in expand_inputs([str(tmp_path / "**" / "t*.*")])] == \
        [str(tmp_path / "a" / "b" / "two.FLAC"), str(tmp_path / "c" / "three.mp3")]
    results = dict(transcribe_files(FrameRecognizer(spelled_token), [tmp_path / "empty"]))
    assert "folder without audio" in str(results[tmp_path / "empty"])


# ----------------------------------------------------------------------------------------------------------------
# Output formats


def sample_transcript():
    words = [word("THE", 0.5, 0.7), word("BIRCH", 0.72, 1.1), word("CANOE", 1.12, 1.6),  # one cue ...
             word("SLID", 3.0, 3.3),  # ... a pause of 1.4 s before this one
             *[word(f"W{i:02d}", 3.4 + 0.5 * i, 3.8 + 0.5 * i) for i in range(20)]]
    return Transcript("clip.wav", " ".join(w.word for w in words), 15.0, words)


def test_subtitle_cues_respect_length_and_pauses():
    cues = subtitle_cues(sample_transcript().words)
    assert cues[0].text == "THE BIRCH CANOE" and (cues[0].start, cues[0].end) == (0.5, 1.6)
    assert cues[1].text.startswith("SLID")
    assert " ".join(cue.text for cue in cues) == sample_transcript().text  # every word, once, in order
    assert all(len(cue.text) <= 42 and cue.end - cue.start <= 7.0 for cue in cues)
    # A cue could not have taken the next word: it stops at a limit, not earlier.
    for cue, following in zip(cues[1:], cues[2:]):
        assert len(cue.text + " " + following.text.split()[0]) > 42


def test_srt_and_vtt_syntax():
    srt = format_srt(sample_transcript())
    blocks = srt.strip("\n").split("\n\n")
    for number, block in enumerate(blocks, start=1):
        index, timing, text = block.split("\n")
        assert index == str(number)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", timing)
        assert text
    assert blocks[0].split("\n")[1] == "00:00:00,500 --> 00:00:01,600"
    vtt = format_vtt(sample_transcript())
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.split("\n\n")[1:]
    assert len(cues) == len(blocks)
    assert cues[0] == "00:00:00.500 --> 00:00:01.600\nTHE BIRCH CANOE"
    assert format_srt(Transcript("x", "", 1.0, [])) == ""
    hour = Transcript("x", "LATE", 4000.0, [word("LATE", 3723.4567, 3724.0)])
    assert "01:02:03,457 --> 01:02:04,000" in format_srt(hour)


def test_json_has_exactly_the_documented_shape():
    record = json.loads(format_json(sample_transcript()))
    assert set(record) == {"audio", "text", "duration", "words"}
    assert record["words"][0] == {"word": "THE", "start": 0.5, "end": 0.7, "confidence": 0.9}


# ----------------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(tiny_recognizer(), path)
    return path


def test_cli_prints_one_json_object_a_line_and_reports_a_bad_file(model_file, data_dir, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    good = sentence_files(data_dir, 2)
    status = main(["transcribe", "--model", str(model_file), str(good[0]), str(bad), str(good[1]),
                   "--output-format", "json", "--threads", "1"])
    captured = capsys.readouterr()
    assert status == 1
    assert str(bad) in captured.err and "broken.wav" in captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [r["audio"] for r in records] == [str(good[0]), str(good[1])]
    for record in records:
        assert set(record) == {"audio", "text", "duration", "words"}
        assert all(set(w) == {"word", "start", "end", "confidence"} for w in record["words"])
        assert record["text"] == " ".join(w["word"] for w in record["words"])


def test_cli_text_output_names_the_files_when_several(model_file, data_dir, capsys):
    one = sentence_files(data_dir, 2)
    assert main(["transcribe", "--model", str(model_file), str(one[0])]) == 0
    single = capsys.readouterr().out
    assert main(["transcribe", "--model", str(model_file), str(one[0]), str(one[1]), "--timings"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == f"{one[0]}: {single.rstrip(chr(10))}"
    assert lines[1].startswith(f"{one[1]}: ")
    assert "real-time factor" in captured.err and one[1].name in captured.err


def test_cli_writes_every_format_to_an_output_folder_and_plots(model_file, data_dir, tmp_path, capsys):
    folder = data_dir / "sentences" / "harvard_sentences" / "wav"
    status = main(["transcribe", "--model", str(model_file), str(folder / "osr0034-0[12].wav"),
                   "--output-format", "all", "--out-dir", str(tmp_path / "out"), "--plot-dir", str(tmp_path / "png")])
    assert status == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"osr0034-0{i}.{ext}" for i in (1, 2) for ext in ("json", "srt", "txt", "vtt")]
    record = json.loads((tmp_path / "out" / "osr0034-01.json").read_text())
    assert (tmp_path / "out" / "osr0034-01.txt").read_text() == record["text"] + "\n"
    pngs = sorted((tmp_path / "png").iterdir())
    assert [p.name for p in pngs] == ["osr0034-01.png", "osr0034-02.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_cli_refuses_outputs_that_would_overwrite_each_other(model_file, data_dir, tmp_path, capsys):
    first, second = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(sentence_files(data_dir, 1)[0].read_bytes())
    status = main(["transcribe", "--model", str(model_file), str(first), str(second), "--out-dir", str(tmp_path)])
    assert status == 1
    error = capsys.readouterr().err
    assert str(first) in error and str(second) in error and "both be written" in error
    assert list(tmp_path.glob("x.*")) == []


def test_cli_one_speaker_normalizes_every_file_by_the_statistics_of_all(data_dir, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, num_layers=1, hidden_size=16, subsampling_channels=4)
    features = FeatureConfig(normalization="speaker")
    training_set = {"mean": [-9.0] * 80, "std": [3.0] * 80}
    save_model(Recognizer(config, features, CharTokenizer(), cmvn_stats=training_set), tmp_path / "speaker.pt")
    files = sentence_files(data_dir, 2)
    given = {}

    def recording_transcribe_files(recognizer, paths, decoder, **options):
        given[tuple(paths)] = options["speaker_cmvn"]
        return iter([])

    monkeypatch.setattr("asr.transcribe.transcribe_files", recording_transcribe_files)
    assert main(["transcribe", "--model", str(tmp_path / "speaker.pt"), *map(str, files), "--one-speaker"]) == 0
    frames = torch.cat([LogMel(features)(audio[None], torch.tensor([len(audio)]))[0][0]
                        for audio in map(load_audio, files)]).double()
    rows = given[tuple(files)]
    assert len(rows) == 2 and np.array_equal(rows[0], rows[1])
    np.testing.assert_allclose(rows[0][0], frames.mean(dim=0).numpy(), atol=1e-4)
    np.testing.assert_allclose(rows[0][1], frames.std(dim=0, unbiased=False).numpy(), atol=1e-4)

    given.clear()  # without the option, every file is normalized by the training set's statistics, in the frontend
    assert main(["transcribe", "--model", str(tmp_path / "speaker.pt"), *map(str, files)]) == 0
    assert given == {tuple(files): None}


def test_cli_one_speaker_needs_a_model_normalized_by_speaker(model_file, data_dir, capsys):
    assert main(["transcribe", "--model", str(model_file), str(sentence_files(data_dir, 1)[0]), "--one-speaker"]) == 1
    assert "--one-speaker is for models trained with features.normalization: speaker" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The edge floor a model file asks for


@pytest.mark.parametrize("name", ["0_george_0.wav", "7_theo_3.wav"])
def test_an_edge_floor_continues_a_real_recordings_own_floor(fsdd_dir, name):
    """FSDD's takes are trimmed to the word. A model file asking for 0.2 s of edge floor hears the recording between
    white noise at the RMS of its own quietest 10 ms (within -90..-55 dBFS, the floors of training), not digital
    zero and not a louder step; the recording itself unchanged."""
    wave = load_audio(fsdd_dir / name).numpy()
    frames = wave[:wave.size // 160 * 160].reshape(-1, 160).astype(np.float64)
    expected_db = np.clip(10 * np.log10((frames ** 2).mean(axis=1).min()), -90, -55)
    spy = FrameRecognizer(energy_token, edge_pad_seconds=0.2)
    transcribe_file(spy, fsdd_dir / name)
    heard, pad = spy.heard[0], round(0.2 * SAMPLE_RATE)
    assert heard.size == wave.size + 2 * pad
    np.testing.assert_array_equal(heard[pad:-pad], wave)
    for edge in (heard[:pad], heard[-pad:]):
        assert 20 * np.log10(np.sqrt(np.mean(edge.astype(np.float64) ** 2))) == pytest.approx(expected_db, abs=0.5)
        assert np.count_nonzero(edge == 0) < pad // 100


def test_an_edge_floor_leaves_word_times_in_the_recordings_own_time(data_dir):
    """A recognizer that writes a word for each burst louder than -30 dBFS: with 0.2 s of floor at each edge it
    hears a longer recording, quiet at its edges, and reports the same words at the same times, within the recording,
    a word at its very start included."""
    wave = np.full(16 * SAMPLES_PER_FRAME, 1e-4, dtype=np.float32)
    wave[:3 * SAMPLES_PER_FRAME] = 0.5  # speech from the first sample, as in a tightly trimmed file
    wave[8 * SAMPLES_PER_FRAME:11 * SAMPLES_PER_FRAME] = 0.5
    bare = transcribe_file(FrameRecognizer(energy_token), wave)
    spy = FrameRecognizer(energy_token, edge_pad_seconds=0.2)
    padded = transcribe_file(spy, wave)
    assert spy.batch_shapes == [(1, wave.size + 2 * round(0.2 * SAMPLE_RATE))]
    assert [w.word for w in bare.words] == ["A", "A"]
    assert [w.word for w in padded.words] == ["A", "A"]
    assert [t for w in padded.words for t in (w.start, w.end)] == pytest.approx([0.0, 0.12, 0.32, 0.44])
    assert padded.duration == bare.duration
