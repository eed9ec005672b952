"""Three checks, with no training, of where a digits model's errors on theo (FSDD's held-out speaker) come from.

    python recipes/digits/local/theo_checks.py --model exp/digits/model.pt [--data data]

Each file is transcribed alone, greedy, as `local/judge.py` does; printed: word errors on theo's 50 single digits
(FSDD's official test takes), on the five training speakers' 250, and on theo's 300 connected utterances.
- channel: the model's CMVN mean moved by theo's own offset per mel band from the training set's (his mean log-mel
  energy over his test files against that of the first 600 training utterances; a cheat no user could make). If
  his errors came from his microphone's response, this would remove them.
- floor: the edge floor (`asr.transcribe`) as white noise (the toolkit's), as noise shaped like the recording's own
  quietest frames, and none.
- warps: the log-probabilities of VTLP warps 0.9-1.1 at test time, averaged, or the most confident warp's.
"""
import argparse
from pathlib import Path

import jiwer
import numpy as np
import torch

from asr.audio import SAMPLE_RATE, load_samples
from asr.checkpoint import load_model
from asr.data.manifest import read_manifest
from asr.decoding import GreedyDecoder
from asr.text import normalize_text
from asr.transcribe import _quietest_dbfs, transcribe_file

WARPS = (0.9, 0.95, 1.0, 1.05, 1.1)
TRAINING_SAMPLE = 600  # training utterances whose mean log-mel energy stands for the training set's


def errors(reference: str, hypothesis: str) -> int:
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not hyp:
        return len(ref.split())
    output = jiwer.process_words(ref, hyp)
    return output.substitutions + output.deletions + output.insertions


def band_mean(recognizer, utterances) -> torch.Tensor:
    logmel, total, frames = recognizer.frontend.logmel, 0.0, 0
    for utterance in utterances:
        audio = torch.from_numpy(load_samples(utterance.audio))[None]
        feats, _ = logmel(audio, torch.tensor([audio.shape[1]]))
        total, frames = total + feats[0].sum(0), frames + feats.shape[1]
    return total / frames


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


def warped_text(recognizer, wave: np.ndarray, combine: str) -> str:
    """Greedy transcript of the wave between white edge floors, from the log-probabilities of each of WARPS."""
    pad = round(recognizer.edge_pad_seconds * SAMPLE_RATE)
    noise = np.random.default_rng(0).standard_normal(2 * pad).astype(np.float32) * 10 ** (_quietest_dbfs(wave) / 20)
    audio = torch.from_numpy(np.concatenate([noise[:pad], wave, noise[pad:]]))[None]
    lengths = torch.tensor([audio.shape[1]])
    frontend = recognizer.frontend
    outputs = []
    with torch.inference_mode():
        for warp in WARPS:
            feats, feat_lengths = frontend.logmel(audio, lengths, None if warp == 1.0 else torch.tensor([warp]))
            log_probs, out_lengths = recognizer.acoustic(frontend.cmvn(feats, feat_lengths), feat_lengths)
            outputs.append(log_probs[0])
    stack = torch.stack(outputs)  # (warps, T, V)
    if combine == "mean":
        chosen = torch.log_softmax(stack.mean(dim=0), dim=-1)
    else:  # the warp whose frames are the most confident on average
        chosen = stack[stack.max(dim=-1).values.mean(dim=-1).argmax()]
    return GreedyDecoder(recognizer.tokenizer).decode(chosen[None], out_lengths)[0].text


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
        counts = [sum(errors(u.text, transcribe(u)) for u in utterances) for utterances in sets.values()]
        print(f"{name:<42}" + "  ".join(f"{set_name} {count:>3}" for set_name, count in zip(sets, counts)), flush=True)

    report("as the model is", lambda u: transcribe_file(recognizer, u.audio).text)
    offset = band_mean(recognizer, sets["theo's connected digits"]) - band_mean(
        recognizer, read_manifest(data / "train.jsonl")[:TRAINING_SAMPLE])
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
    report("warps: log-probabilities averaged", lambda u: warped_text(recognizer, load_samples(u.audio), "mean"))
    report("warps: the most confident", lambda u: warped_text(recognizer, load_samples(u.audio), "select"))


if __name__ == "__main__":
    main()
