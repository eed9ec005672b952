"""Three checks, with no training, of where a digits model's errors on theo (FSDD's held-out speaker) come from.

    python recipes/digits/local/theo_checks.py --model exp/digits/model.pt [--data data]

Each file is transcribed alone, greedy, as `local/judge.py` does; printed: word errors on theo's 50 single digits
(FSDD's official test takes), on the five training speakers' 250, and on theo's 300 connected utterances.
- channel: the model's CMVN mean moved by theo's own offset per mel band from the training set's (his mean log-mel
  energy over his test files against that of 600 training utterances spaced evenly through train.jsonl, as
  `asr.normalization.estimate_cmvn` samples them; a cheat no user could make). If his errors came from his
  microphone's response, this would remove them.
- floor: the edge floor (`asr.transcribe`) as white noise (the toolkit's), as noise shaped like the recording's own
  quietest frames, and none.
- warps: the log-probabilities of VTLP warps 0.9-1.1 at test time, averaged, or the most confident warp's.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from judge import word_errors  # local/judge.py, beside this script

from asr.audio import SAMPLE_RATE, load_samples
from asr.checkpoint import load_model
from asr.data.manifest import read_manifest
from asr.normalization import estimate_cmvn
from asr.transcribe import _quietest_dbfs, transcribe_file

WARPS = (0.9, 0.95, 1.0, 1.05, 1.1)
TRAINING_SAMPLE = 600  # training utterances whose mean log-mel energy stands for the training set's


def band_mean(recognizer, utterances) -> torch.Tensor:
    stats = estimate_cmvn(utterances, recognizer.feature_config, max_utterances=TRAINING_SAMPLE, progress=False)
    return torch.tensor(stats["mean"])


def shaped_floor(wave: np.ndarray, samples: int, rng) -> np.ndarray:
    """Noise with the average spectrum of the wave's quietest fifth of 32 ms frames, at the RMS of its quietest 10 ms
    (the level of the toolkit's floor)."""
    frame = 512
    frames = np.pad(wave, (0, -wave.size % frame)).astype(np.float64).reshape(-1, frame)
    energy = (frames ** 2).mean(axis=1)
    quiet = frames[energy <= np.quantile(energy, 0.2)]
    spectrum = (np.abs(np.fft.rfft(quiet * np.hanning(frame), axis=1)) ** 2).mean(axis=0)
    shape = np.sqrt(np.interp(np.fft.rfftfreq(samples), np.fft.rfftfreq(frame), spectrum))
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(samples)) * shape, samples)
    return (noise / (noise.std() + 1e-12) * 10 ** (_quietest_dbfs(wave) / 20)).astype(np.float32)


class Warped:
    """A recognizer whose log-probabilities are those of each of WARPS, averaged or the most confident warp's; the
    toolkit's transcription (its edge floor, its decoder) runs on it unchanged."""

    def __init__(self, recognizer, combine: str):
        self.recognizer, self.combine = recognizer, combine

    def __getattr__(self, name):
        return getattr(self.recognizer, name)

    def log_probs(self, audio: np.ndarray, audio_lengths: np.ndarray, speaker_cmvn=None):
        frontend, audio, lengths = self.recognizer.frontend, torch.from_numpy(audio), torch.from_numpy(audio_lengths)
        outputs = []
        with torch.inference_mode():
            for warp in WARPS:
                factors = None if warp == 1.0 else torch.full((audio.shape[0],), warp)
                feats, feat_lengths = frontend.logmel(audio, lengths, factors)
                log_probs, out_lengths = self.recognizer.acoustic(frontend.cmvn(feats, feat_lengths), feat_lengths)
                outputs.append(log_probs)
        stack = torch.stack(outputs)  # (warps, B, T, V)
        if self.combine == "mean":
            return torch.log_softmax(stack.mean(dim=0), dim=-1), out_lengths
        # For each utterance, the warp whose frames (up to its length) are the most confident on average.
        valid = (torch.arange(stack.shape[2])[None, :] < out_lengths[:, None]).float()  # (B, T)
        confidence = (stack.max(dim=-1).values * valid).sum(dim=-1) / out_lengths  # (warps, B)
        return stack[confidence.argmax(dim=0), torch.arange(stack.shape[1])], out_lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data")
    args = parser.parse_args()
    data = Path(args.data)
    official = read_manifest(data / "official_test.jsonl")
    sets = {"theo's single digits": [u for u in official if u.speaker == "theo"],
            "the five's single digits": [u for u in official if u.speaker != "theo"],
            "theo's connected digits": read_manifest(data / "test.jsonl")}
    recognizer = load_model(args.model)

    def report(name, transcribe):
        counts = [sum(word_errors(u.text, transcribe(u))[0] for u in utterances) for utterances in sets.values()]
        print(f"{name:<42}" + "  ".join(f"{set_name} {count:>3}" for set_name, count in zip(sets, counts)), flush=True)

    report("as the model is", lambda u: transcribe_file(recognizer, u.audio).text)
    offset = band_mean(recognizer, sets["theo's connected digits"]) - band_mean(
        recognizer, read_manifest(data / "train.jsonl"))
    print("theo's offset per mel band from the training set:", " ".join(f"{x:.2f}" for x in offset.tolist()))
    mean = recognizer.frontend.cmvn.mean.clone()
    recognizer.frontend.cmvn.mean += offset
    report("channel: CMVN mean moved by theo's offset", lambda u: transcribe_file(recognizer, u.audio).text)
    recognizer.frontend.cmvn.mean.copy_(mean)

    pad_seconds = recognizer.edge_pad_seconds
    pad = round(pad_seconds * SAMPLE_RATE)
    recognizer.metadata["edge_pad_seconds"] = 0.0  # the floors are laid here instead

    def with_shaped_floor(u):
        wave = load_samples(u.audio)
        if not pad:
            return transcribe_file(recognizer, wave).text
        floor = shaped_floor(wave, 2 * pad, np.random.default_rng(0))
        return transcribe_file(recognizer, np.concatenate([floor[:pad], wave, floor[pad:]])).text

    report(f"floor: {pad_seconds} s shaped like the recording's", with_shaped_floor)
    report("floor: none", lambda u: transcribe_file(recognizer, u.audio).text)
    recognizer.metadata["edge_pad_seconds"] = pad_seconds
    for combine, name in (("mean", "warps: log-probabilities averaged"), ("select", "warps: the most confident")):
        warped = Warped(recognizer, combine)
        report(name, lambda u: transcribe_file(warped, u.audio).text)


if __name__ == "__main__":
    main()
