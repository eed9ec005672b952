"""asr.normalization against numpy transcriptions of the formulas over librosa's features of real recordings."""
import json

import numpy as np
import pytest
import torch
from reference_features import librosa_log_mel

from asr.data.manifest import Utterance
from asr.errors import AsrError, ConfigError
from asr.features import FeatureConfig
from asr.normalization import (
    GlobalCMVN,
    SpeakerStats,
    estimate_cmvn,
    load_cmvn,
    load_speaker_stats,
    save_cmvn,
    save_speaker_stats,
    utterance_cmvn,
)


def utterances_of(paths, speakers) -> list[Utterance]:
    return [Utterance(id=str(path), audio=str(path), duration=1.0, text="", speaker=speaker)
            for path, speaker in zip(paths, speakers)]


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
    stats = estimate_cmvn(utterances_of(sentence_paths, [None] * 4), cfg, progress=False)
    frames = np.concatenate([librosa_log_mel(wave, cfg) for wave in sentence_waves])
    assert stats["frames"] == len(frames) and stats["utterances"] == len(sentence_paths)
    np.testing.assert_allclose(stats["mean"], frames.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(stats["std"], frames.std(axis=0), atol=1e-3)


def test_estimate_cmvn_takes_max_utterances_evenly_spaced(sentence_paths):
    utterances = utterances_of(sentence_paths, [None] * 4)
    cfg = FeatureConfig()
    subset = estimate_cmvn(utterances, cfg, max_utterances=2, progress=False)
    assert subset == estimate_cmvn([utterances[0], utterances[2]], cfg, progress=False)
    with pytest.raises(AsrError, match="no utterances"):
        estimate_cmvn([], cfg, progress=False)


def test_speaker_stats_match_numpy_over_each_speakers_librosa_features(sentence_paths, sentence_waves):
    cfg = FeatureConfig(n_mels=40)
    default = {"mean": [0.0] * 40, "std": [1.0] * 40}
    speakers = ["anna", "bert", "anna", None]  # the last names no speaker: it is not read
    stats = SpeakerStats.estimate(utterances_of(sentence_paths, speakers), cfg, default, progress=False)
    assert stats.speakers == {"anna", "bert"}
    for speaker, indices in {"anna": [0, 2], "bert": [1]}.items():
        frames = np.concatenate([librosa_log_mel(sentence_waves[index], cfg) for index in indices])
        assert stats.by_speaker[speaker]["frames"] == len(frames)
        assert stats.by_speaker[speaker]["utterances"] == len(indices)
        np.testing.assert_allclose(stats.by_speaker[speaker]["mean"], frames.mean(axis=0), atol=1e-3)
        np.testing.assert_allclose(stats.by_speaker[speaker]["std"], frames.std(axis=0), atol=1e-3)
        np.testing.assert_allclose(stats.rows(speaker).numpy(), [frames.mean(axis=0), frames.std(axis=0)], atol=1e-3)


def test_speaker_stats_give_a_speakers_rows_and_the_default_for_anyone_else():
    stats = SpeakerStats({"anna": {"mean": [1.0, 2.0], "std": [3.0, 4.0]}}, {"mean": [0.0, 0.5], "std": [1.0, 1.5]})
    assert stats.rows("anna").tolist() == [[1.0, 2.0], [3.0, 4.0]] and stats.rows("anna").dtype == torch.float32
    assert stats.rows("bert").tolist() == stats.rows(None).tolist() == [[0.0, 0.5], [1.0, 1.5]]


def test_speaker_stats_leave_out_unreadable_audio_and_say_so(sentence_paths, tmp_path, caplog):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    utterances = utterances_of([sentence_paths[0], broken, broken], ["anna", "anna", "bert"])
    default = {"mean": [0.0] * 80, "std": [1.0] * 80}
    stats = SpeakerStats.estimate(utterances, FeatureConfig(), default, progress=False)
    assert stats.speakers == {"anna"} and stats.by_speaker["anna"]["utterances"] == 1  # bert has no readable audio
    assert stats.rows("bert").tolist() == [default["mean"], default["std"]]
    assert "left out 2 of 3 utterances" in caplog.text and "broken.wav" in caplog.text


def test_speaker_stats_round_trip_through_json_without_their_default(tmp_path):
    default = {"mean": [0.0, 0.5], "std": [1.0, 1.5]}
    by_speaker = {"anna": {"mean": [1.0, 2.0], "std": [3.0, 4.0], "frames": 10, "utterances": 2}}
    save_speaker_stats(tmp_path / "speakers.json", SpeakerStats(by_speaker, default))
    assert json.loads((tmp_path / "speakers.json").read_text()) == by_speaker
    loaded = load_speaker_stats(tmp_path / "speakers.json", default)
    assert loaded.by_speaker == by_speaker and loaded.rows(None).tolist() == [[0.0, 0.5], [1.0, 1.5]]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "speaker CMVN statistics file not found"),
        ("[1, 2]", "map each speaker"),
        ('{"anna": {"mean": [0.0]}}', "speaker 'anna'.s CMVN statistics need 'mean' and 'std'"),
        ('{"anna": {"mean": [0.0], "std": [-1.0]}}', "positive"),
    ],
)
def test_load_speaker_stats_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "speakers.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        load_speaker_stats(path, {"mean": [0.0], "std": [1.0]})
    assert str(raised.value).startswith(str(path))


def test_cmvn_statistics_round_trip_through_json(tmp_path):
    stats = {"mean": [-1.5, 2.25], "std": [3.0, 0.125], "frames": 10, "utterances": 2}
    save_cmvn(tmp_path / "cmvn.json", stats)
    assert load_cmvn(tmp_path / "cmvn.json") == stats


def test_statistics_of_frames_made_otherwise_are_refused(sentence_paths, tmp_path):
    made = FeatureConfig(n_mels=40, f_min=20.0, f_max=3800.0)
    stats = estimate_cmvn(utterances_of(sentence_paths[:1], ["a"]), made, progress=False)
    save_cmvn(tmp_path / "cmvn.json", stats)
    assert load_cmvn(tmp_path / "cmvn.json", FeatureConfig(n_mels=40, f_min=20.0, f_max=3800.0)) == stats
    with pytest.raises(ConfigError, match=r"cmvn.json: CMVN statistics of other log-mel frames: features.f_min 20.0 "
                                          r"\(the model's: 150.0\)"):
        load_cmvn(tmp_path / "cmvn.json", FeatureConfig(n_mels=40, f_min=150.0, f_max=3800.0))
    older = {key: value for key, value in stats.items() if key != "features"}  # written before settings were kept
    save_cmvn(tmp_path / "older.json", older)
    assert load_cmvn(tmp_path / "older.json", FeatureConfig(n_mels=40, f_min=150.0)) == older


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
