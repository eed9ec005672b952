"""The synthesized voices and non-speech of the digits recipe (asr.data.synth): held-out voices are never training
voices, the sets are reproducible and cached, non-speech has empty transcripts that the trainer keeps, and the
judging files come in the formats a user has."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.config import load_config
from asr.data import synth
from asr.data.manifest import SkipLog, read_manifest
from asr.text import CharTokenizer
from asr.train import usable_utterances


def test_held_out_espeak_voices_share_no_accent_and_no_variant_with_training():
    (train_accents, train_variants), (held_accents, held_variants) = synth.ESPEAK_TRAIN, synth.ESPEAK_HELD_OUT
    assert not set(train_accents) & set(held_accents)
    assert not set(train_variants) & set(held_variants)
    low, high = synth.PIPER_TRAIN_LENGTH
    assert all(b <= low or a >= high for a, b in synth.PIPER_HELD_OUT_LENGTH)


@pytest.mark.parametrize("name", ["espeak_train", "espeak_heldout", "espeak_heldout_lone", "nonspeech_train"])
def test_a_set_is_the_same_bytes_from_the_same_seed_and_its_voices_come_from_its_side(tmp_path, name, monkeypatch):
    synth.build_set(tmp_path / "a", name, 4, seed=3, progress=False)  # on every core
    monkeypatch.setattr(synth.os, "sched_getaffinity", lambda pid: {0})
    synth.build_set(tmp_path / "b", name, 4, seed=3, progress=False)  # one utterance after the other
    first, second = read_manifest(tmp_path / "a" / f"{name}.jsonl"), read_manifest(tmp_path / "b" / f"{name}.jsonl")
    for one, other in zip(first, second):
        assert open(one.audio, "rb").read() == open(other.audio, "rb").read()
        wave, rate = sf.read(one.audio)
        assert rate == 16000 and len(wave) / rate == pytest.approx(one.duration)
    if name == "nonspeech_train":
        assert all(u.text == "" and u.speaker.split(":")[1] in synth.NONSPEECH_KINDS for u in first)
        return
    accents, variants = synth.ESPEAK_TRAIN if name == "espeak_train" else synth.ESPEAK_HELD_OUT
    for utterance in first:
        voice = utterance.speaker.removeprefix("espeak:")
        accent, _, variant = voice.partition("+")
        assert accent in accents and variant in variants
        assert 1 <= len(utterance.text.split()) <= (1 if name == "espeak_heldout_lone" else 7)
        assert set(utterance.text.split()) <= set(synth.DIGIT_WORDS)
        wave, _ = sf.read(utterance.audio)
        assert np.abs(wave).max() > 0.02  # speech, not an empty rendering


def test_piper_gives_the_same_bytes_in_another_process(tmp_path):
    """Piper samples noise inside ONNX Runtime, whose generators are seeded anew in every process unless set; two
    builds in one process agree even so, so only separate processes show it."""
    pytest.importorskip("piper")
    program = ("import sys; from asr.data import synth; "
               "synth.build_set(sys.argv[1], 'piper_train', 2, seed=3, progress=False)")
    for folder in ("a", "b"):
        subprocess.run([sys.executable, "-c", program, str(tmp_path / folder)], check=True)
    first, second = (sorted((tmp_path / folder).rglob("*.wav")) for folder in ("a", "b"))
    assert len(first) == 2
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]


def test_a_finished_build_is_not_redone(tmp_path, monkeypatch):
    counts = {"nonspeech_train": 2}
    synth.build_all(tmp_path, counts, progress=False)
    stamp = json.loads((tmp_path / synth.STAMP_NAME).read_text())
    assert stamp == {"seed": 0, "counts": counts, "piper_seeded": True,
                     "nonspeech_kinds": list(synth.NONSPEECH_KINDS)}
    monkeypatch.setattr(synth, "build_set", lambda *args, **kwargs: pytest.fail("rebuilt a finished set"))
    synth.build_all(tmp_path, counts, progress=False)
    # A build of another version (here, without music among its non-speech kinds) is redone.
    monkeypatch.undo()
    (tmp_path / synth.STAMP_NAME).write_text(json.dumps({**stamp, "nonspeech_kinds": ["silence"]}))
    built = []
    monkeypatch.setattr(synth, "build_set", lambda out_dir, name, *args, **kwargs: built.append(name))
    synth.build_all(tmp_path, counts, progress=False)
    assert built == ["nonspeech_train"]


def test_empty_transcripts_are_kept_for_training_and_punctuation_only_ones_are_not(tmp_path):
    synth.build_set(tmp_path, "nonspeech_train", 3, progress=False)
    utterances = read_manifest(tmp_path / "nonspeech_train.jsonl")
    utterances[2].text = "?!"
    skips = SkipLog()
    kept = usable_utterances(utterances, CharTokenizer(), load_config(None), skips)
    assert [u.id for u in kept] == [u.id for u in utterances[:2]]


def test_lone_digits_are_laid_without_edge_silence_as_fsdd_recordings_are_trimmed():
    speech = np.concatenate([np.zeros(800), np.full(4000, 0.5), np.zeros(1600)])  # a word inside its own silence
    lone = synth.place(speech, np.random.default_rng(0), with_edges=False)
    assert len(lone) == 4000 and np.abs(lone).min() > 0.5 * np.abs(lone).max()  # the word alone, edge to edge
    assert len(synth.place(speech, np.random.default_rng(0))) > 4000


@pytest.mark.parametrize("kind", synth.NONSPEECH_KINDS)
def test_non_speech_stays_within_full_scale(kind):
    wave = synth.nonspeech_wave(kind, 1.0, np.random.default_rng(0))
    assert len(wave) == 16000 and np.abs(wave).max() <= 1.0


def test_the_judging_files_come_in_the_formats_users_have(tmp_path):
    paths = {path.name: path for path in synth.write_nonspeech_tests(tmp_path)}
    info = sf.info(str(paths["noise_8ch_96k.wav"]))
    assert (info.channels, info.samplerate) == (8, 96000)
    silence, _ = sf.read(str(paths["silence_3s_16k.wav"]))
    assert len(silence) == 48000 and not silence.any()
    burst, _ = sf.read(str(paths["clipped_burst_44k.wav"]))
    assert np.mean(np.abs(burst) >= 0.999) > 0.05  # clipped
    assert sf.info(str(paths["music_44k_stereo.wav"])).channels == 2
    assert sf.info(str(paths["strummed_chords_48k.wav"])).samplerate == 48000


@pytest.mark.slow
def test_laptop_recordings_are_44k_stereo_reverberant_noisy_and_the_same_bytes_every_build(tmp_path):
    manifest = synth.write_laptop_tests(tmp_path, count=1)
    again = synth.write_laptop_tests(tmp_path / "again", count=1)
    assert Path(read_manifest(again)[0].audio).read_bytes() == Path(read_manifest(manifest)[0].audio).read_bytes()
    (utterance,) = read_manifest(manifest)
    info = sf.info(utterance.audio)
    assert (info.samplerate, info.channels) == (44100, 2)
    wave, _ = sf.read(utterance.audio)
    assert not np.allclose(wave[:, 0], wave[:, 1])  # room noise differs between the microphones
    quietest = np.sort(np.convolve(wave[:, 0] ** 2, np.ones(441) / 441, "valid"))[:4410].mean()
    assert quietest > 1e-7  # never digital silence: the room is always there
