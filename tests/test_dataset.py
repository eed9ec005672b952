"""SpeechDataset items from real recordings, speed perturbation, bad files reported in the batch, collate padding."""
import json
import os
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import torch

from asr.data.dataset import Batch, SpeechDataset, collate
from asr.data.manifest import Utterance
from asr.data.sampler import DurationBucketSampler
from asr.errors import ConfigError
from asr.normalization import SpeakerStats
from asr.text import CharTokenizer, normalize_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def utterances(data_dir) -> list[Utterance]:
    """Five short real recordings from LibriSpeech and LJSpeech, 16 kHz WAV."""
    chosen = {"librispeech_bits": ["1089-134691-0000", "1089-134686-0001", "61-70968-0000"],
              "ljspeech_subset": ["LJ002-0020", "LJ001-0002"]}
    found = []
    for set_name, ids in chosen.items():
        folder = data_dir / "sentences" / set_name
        transcripts = dict(line.split(" ", 1) for line in (folder / "text").read_text().splitlines())
        for utt_id in ids:
            audio = folder / "wav" / f"{utt_id}.wav"
            found.append(Utterance(utt_id, str(audio), soundfile.info(str(audio)).duration, transcripts[utt_id]))
    return found


def test_items_hold_the_file_audio_and_the_encoded_transcript(utterances):
    tokenizer = CharTokenizer()
    dataset = SpeechDataset(utterances, tokenizer)
    assert len(dataset) == len(utterances)
    for index, utterance in enumerate(utterances):
        item = dataset[index]
        assert item["id"] == utterance.id
        reference, rate = soundfile.read(utterance.audio, dtype="float32")
        assert rate == 16000
        np.testing.assert_array_equal(item["audio"].numpy(), reference)
        assert item["audio"].dtype == torch.float32
        assert item["tokens"].dtype == torch.long
        assert tokenizer.decode(item["tokens"].tolist()) == item["text"] == utterance.text


def test_speed_perturbation_is_reproducible_and_changes_with_the_epoch(utterances):
    factors = (0.9, 1.0, 1.1)
    dataset = SpeechDataset(utterances * 40, CharTokenizer(), speed_factors=factors, seed=7)
    draws = {epoch: [] for epoch in range(3)}
    for epoch in draws:
        dataset.set_epoch(epoch)
        draws[epoch] = [dataset.speed_factor(i) for i in range(len(dataset))]
    assert set(draws[0]) == set(factors)
    assert draws[0] != draws[1] != draws[2]
    again = SpeechDataset(utterances * 40, CharTokenizer(), speed_factors=factors, seed=7)
    again.set_epoch(1)
    assert [again.speed_factor(i) for i in range(len(again))] == draws[1]
    other_seed = SpeechDataset(utterances * 40, CharTokenizer(), speed_factors=factors, seed=8)
    other_seed.set_epoch(1)
    assert [other_seed.speed_factor(i) for i in range(len(other_seed))] != draws[1]


@pytest.mark.parametrize("factors", [(), (1.0, 0.0), (-0.9, 1.1)])
def test_speed_factors_must_be_positive(utterances, factors):
    with pytest.raises(ConfigError, match="speed factors must be positive"):
        SpeechDataset(utterances, CharTokenizer(), speed_factors=factors)


def test_perturbed_audio_is_the_file_played_faster_or_slower(utterances):
    dataset = SpeechDataset(utterances, CharTokenizer(), speed_factors=(0.9, 1.1), seed=0)
    for index, utterance in enumerate(utterances):
        factor = dataset.speed_factor(index)
        audio = dataset[index]["audio"].numpy()
        original, rate = soundfile.read(utterance.audio, dtype="float32")
        # Kaldi's speed perturbation: the samples taken as recorded at rate × factor, resampled back to rate.
        reference = librosa.resample(original, orig_sr=rate * factor, target_sr=rate, res_type="soxr_hq")
        assert abs(len(audio) - len(original) / factor) <= 1
        overlap = min(len(audio), len(reference))
        np.testing.assert_allclose(audio[:overlap], reference[:overlap], atol=1e-4)


def test_unreadable_audio_and_unknown_characters_become_error_items(utterances, tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    bad = [
        Utterance("missing", str(tmp_path / "nowhere.wav"), 1.0, "HELLO"),
        Utterance("corrupt", str(tmp_path / "corrupt.wav"), 1.0, "HELLO"),
        Utterance("chinese", utterances[0].audio, 1.0, "你好 😀"),
    ]
    dataset = SpeechDataset([utterances[0], *bad], CharTokenizer())
    items = [dataset[i] for i in range(len(dataset))]
    assert set(items[1]) == {"id", "error"} and items[1]["id"] == "missing"
    assert str(tmp_path / "nowhere.wav") in items[1]["error"] and "not found" in items[1]["error"]
    assert str(tmp_path / "corrupt.wav") in items[2]["error"]
    assert "'你'" in items[3]["error"] and "'😀'" in items[3]["error"]

    batch = collate(items)
    assert batch.ids == [utterances[0].id]
    assert [utt_id for utt_id, _ in batch.skipped] == ["missing", "corrupt", "chinese"]
    assert batch.skipped[0][1] == items[1]["error"]

    nothing = collate(items[1:])
    assert len(nothing) == 0 and nothing.ids == [] and len(nothing.skipped) == 3
    assert nothing.audio.shape == (0, 0) and nothing.tokens.shape == (0, 0)
    assert nothing.audio_lengths.shape == (0,) and nothing.audio_lengths.dtype == torch.long


def test_batches_hold_the_recordings_16_bit_samples_and_the_frontend_hears_them_as_floats(utterances):
    from asr.config import load_config
    from asr.frontend import Frontend

    dataset = SpeechDataset(utterances[:3], CharTokenizer())
    batch = collate([dataset[index] for index in range(3)])
    assert batch.audio.dtype == torch.int16
    for row, (utterance, length) in enumerate(zip(utterances, batch.audio_lengths.tolist())):
        pcm, _ = soundfile.read(utterance.audio, dtype="int16")  # the file's own samples: lossless
        np.testing.assert_array_equal(batch.audio[row, :length].numpy(), pcm)
    config = load_config(None, ["features.normalization=utterance"])
    frontend = Frontend(config.features).eval()
    floats = torch.nn.utils.rnn.pad_sequence([dataset[index]["audio"] for index in range(3)], batch_first=True)
    expected, expected_lengths = frontend(floats, batch.audio_lengths)
    feats, feat_lengths = frontend(batch.audio, batch.audio_lengths)
    torch.testing.assert_close(feats, expected, rtol=0, atol=0)
    assert feat_lengths.tolist() == expected_lengths.tolist()


def test_collate_pads_on_the_right_with_lengths():
    items = [
        {"id": "a", "audio": torch.tensor([0.1, 0.2, 0.3]), "tokens": torch.tensor([5, 6]), "text": "A"},
        {"id": "b", "audio": torch.tensor([-0.5]), "tokens": torch.tensor([7, 8, 9, 10]), "text": "B"},
        {"id": "c", "audio": torch.tensor([0.25, 0.5]), "tokens": torch.tensor([], dtype=torch.long), "text": ""},
    ]
    batch = collate(items)
    assert batch.ids == ["a", "b", "c"] and batch.texts == ["A", "B", ""] and batch.skipped == []
    # int16 PCM: each sample times 32768, rounded (0.1 → 3276.8 → 3277), one clipped at the top of the range.
    assert batch.audio.tolist() == [[3277, 6554, 9830], [-16384, 0, 0], [8192, 16384, 0]]
    assert batch.audio.dtype == torch.int16
    assert collate([{"id": "loud", "audio": torch.tensor([1.0, -1.0, 2.0]), "tokens": torch.tensor([5]),
                     "text": "A"}]).audio.tolist() == [[32767, -32768, 32767]]
    assert batch.audio_lengths.tolist() == [3, 1, 2] and batch.audio_lengths.dtype == torch.long
    assert batch.tokens.tolist() == [[5, 6, 0, 0], [7, 8, 9, 10], [0, 0, 0, 0]]
    assert batch.token_lengths.tolist() == [2, 4, 0] and batch.tokens.dtype == torch.long


def test_batch_to_moves_every_tensor_and_keeps_the_rest():
    batch = collate([{"id": "a", "audio": torch.ones(4), "tokens": torch.tensor([3, 4]), "text": "AB"}])
    moved = batch.to("meta")  # a device every machine has: tensors move, nothing is computed
    assert {t.device.type for t in (moved.audio, moved.audio_lengths, moved.tokens, moved.token_lengths)} == {"meta"}
    assert moved.ids == ["a"] and moved.texts == ["AB"] and moved.skipped == [] and moved.speaker_cmvn is None
    assert batch.audio.device.type == "cpu"  # the original is left as it was


def test_items_carry_their_speakers_cmvn_statistics_and_collate_stacks_them(utterances):
    speakers = ["anna", "bert", None]
    utterances = [Utterance(u.id, u.audio, u.duration, u.text, speaker) for u, speaker in zip(utterances, speakers)]
    stats = SpeakerStats({"anna": {"mean": [0.0] * 3, "std": [1.0] * 3}, "bert": {"mean": [1.0] * 3, "std": [2.0] * 3}},
                         default={"mean": [2.0] * 3, "std": [3.0] * 3})
    dataset = SpeechDataset(utterances, CharTokenizer(), speaker_stats=stats)
    batch = collate([dataset[index] for index in range(3)])
    assert batch.speaker_cmvn.tolist() == [[[0.0] * 3, [1.0] * 3], [[1.0] * 3, [2.0] * 3], [[2.0] * 3, [3.0] * 3]]
    assert batch.to("meta").speaker_cmvn.device.type == "meta"
    assert "speaker_cmvn" not in SpeechDataset(utterances, CharTokenizer())[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_dataloader_pins_batches_and_they_reach_the_gpu(utterances):
    dataset = SpeechDataset(utterances, CharTokenizer())
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate, pin_memory=True, num_workers=1)
    for batch in loader:
        assert isinstance(batch, Batch)
        assert batch.audio.is_pinned() and batch.tokens.is_pinned()
        on_gpu = batch.to("cuda", non_blocking=True)
        assert on_gpu.audio.is_cuda and torch.equal(on_gpu.audio.cpu(), batch.audio)


def test_dataloader_with_workers_and_the_bucket_sampler(utterances, tmp_path):
    everything = [*utterances, Utterance("missing", str(tmp_path / "nowhere.wav"), 2.0, "HELLO")]
    dataset = SpeechDataset(everything, CharTokenizer(), speed_factors=(0.9, 1.0, 1.1), seed=3)
    sampler = DurationBucketSampler([u.duration for u in everything], max_seconds=10.0, seed=3)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    ids, skipped, lengths = [], [], {}
    for batch in loader:
        ids += batch.ids
        skipped += [utt_id for utt_id, _ in batch.skipped]
        lengths.update(zip(batch.ids, batch.audio_lengths.tolist()))
        for row, text in enumerate(batch.texts):
            assert CharTokenizer().decode(batch.tokens[row, :batch.token_lengths[row]].tolist()) == text
    assert sorted(ids) == sorted(u.id for u in utterances) and skipped == ["missing"]
    # The workers drew the same speed factors as the dataset in this process would have.
    for index, utterance in enumerate(utterances):
        frames = soundfile.info(utterance.audio).frames
        assert abs(lengths[utterance.id] - frames / dataset.speed_factor(index)) <= 1


def test_batches_of_speed_perturbed_audio_keep_to_the_budget_in_the_seconds_they_play(fsdd_dir):
    # A 0.9 factor plays a recording 1/0.9 times as long: batches cut by the manifest's durations run past the budget,
    # batches cut by each epoch's played durations do not.
    recordings = sorted(fsdd_dir.glob("*_jackson_*.wav"))[:60]
    utterances = [Utterance(path.stem, str(path), soundfile.info(str(path)).duration, "ONE") for path in recordings]
    dataset = SpeechDataset(utterances, CharTokenizer(), speed_factors=(0.9, 1.0, 1.1), seed=1)

    def padded_seconds(durations, epoch):
        sampler = DurationBucketSampler(durations, max_seconds=3.0, seed=1, num_buckets=4)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        return [max(dataset[index]["audio"].numel() for index in batch) * len(batch) / 16000 for batch in sampler]

    for epoch in range(3):
        played = dataset.played_durations(epoch)
        dataset.set_epoch(epoch)
        assert [round(seconds * 16000) for seconds in played[:10]] == pytest.approx(
            [dataset[index]["audio"].numel() for index in range(10)], abs=2)
        assert max(padded_seconds(dataset.played_durations, epoch)) <= 3.0 + 1e-3
    assert max(padded_seconds([u.duration for u in utterances], 0)) > 3.0


def test_normalized_text_is_what_the_batch_carries(utterances):
    raw = Utterance("raw", utterances[0].audio, utterances[0].duration, "He could wait, no longer!")
    item = SpeechDataset([raw], CharTokenizer())[0]
    assert item["text"] == normalize_text(raw.text) == "HE COULD WAIT NO LONGER"


def test_bench_dataloader_quick_smoke(tmp_path, shared_dir):
    json_out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ASR_SHARED": str(shared_dir)}
    finished = subprocess.run([sys.executable, str(REPO / "tools" / "bench_dataloader.py"), "--quick",
                               "--json-out", str(json_out)], env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(json_out.read_text())
    assert [r["workers"] for r in summary["results"]] == [0, 1, 2]
    for result in summary["results"]:
        assert result["utterances"] == summary["utterances"] > 0 and result["skipped"] == 0
        assert result["utterances_per_second"] > 0 and result["audio_seconds_per_second"] > 0
        assert np.isfinite(result["audio_seconds_per_second"])
    assert "utt/s" in finished.stdout and "audio s/s" in finished.stdout
