"""Judge a digits model as a user meets it: every file transcribed alone, greedy, with no speaker statistics.

    python recipes/digits/local/judge.py --model exp/digits/model.pt [--data data] [--out exp/digits/judge]

Reports, in one markdown table and judge.json:
- WER of each test set (FSDD's official test split of single digits; connected digits of dev and of theo; the
  held-out espeak-ng voices, Piper settings and Asterisk's Allison; the laptop-style recordings);
- how often a word recognized with confidence ≥ 0.9 is wrong (substituted or inserted), over all those sets;
- the words written for each non-speech file (silence, noise, music, hum), which should be none;
- whether word times lie on the speech: on dev, whose sources file says where each FSDD recording lies in the
  utterance, each correctly recognized word's time span is checked against the speech of its recording found by
  energy (10 ms frames within 30 dB of the recording's loudest), with a tolerance of one output frame.
"""
import argparse
import json
import sys
from pathlib import Path

import jiwer
import numpy as np

from asr.audio import SAMPLE_RATE, load_samples
from asr.checkpoint import load_model
from asr.data.manifest import read_manifest
from asr.text import normalize_text
from asr.transcribe import transcribe_file

SETS = {  # manifest (under --data): what it is
    "official_test.jsonl": "FSDD official test split, single digits (6 speakers, theo among them)",
    "dev.jsonl": "dev: connected FSDD digits, the 5 training speakers' test takes",
    "test.jsonl": "test: connected digits of theo (held-out speaker)",
    "synth/espeak_heldout.jsonl": "held-out espeak-ng voices (accents and variants never trained on)",
    "synth/piper_heldout.jsonl": "Piper joe at speaking rates never trained on",
    "synth/asterisk.jsonl": "Asterisk's Allison (real female speaker, never trained on)",
    "judge/laptop.jsonl": "laptop-style: 44.1 kHz stereo, sox reverb, room noise 10-20 dB SNR",
}
CONFIDENT = 0.9
ENERGY_RANGE_DB = 30.0


def word_errors(reference: str, hypothesis: str) -> tuple[int, int, list[bool]]:
    """(errors, reference words, for each hypothesis word whether it is wrong: substituted or inserted)."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref.split():
        return len(hyp.split()), 0, [True] * len(hyp.split())
    if not hyp.split():
        return len(ref.split()), len(ref.split()), []
    output = jiwer.process_words(ref, hyp)
    wrong = [True] * len(hyp.split())
    for chunk in output.alignments[0]:
        if chunk.type == "equal":
            for index in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                wrong[index] = False
    errors = output.substitutions + output.deletions + output.insertions
    return errors, len(ref.split()), wrong


def speech_span(wave: np.ndarray) -> tuple[float, float]:
    """First and last 10 ms frame within ENERGY_RANGE_DB of the loudest, in seconds."""
    hop = SAMPLE_RATE // 100
    frames = wave[:len(wave) // hop * hop].reshape(-1, hop)
    energy_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy_db >= energy_db.max() - ENERGY_RANGE_DB)
    return loud[0] * hop / SAMPLE_RATE, (loud[-1] + 1) * hop / SAMPLE_RATE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data")
    parser.add_argument("--out", default=None, help="folder for judge.json and judge.md (default: beside the model)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    out = Path(args.out) if args.out else Path(args.model).parent / "judge"
    out.mkdir(parents=True, exist_ok=True)
    recognizer = load_model(args.model)
    frame = recognizer.frame_shift

    results, confident, confident_wrong = {}, 0, 0
    transcripts = {}
    for name, what in SETS.items():
        path = data / name
        if not path.is_file():
            print(f"{path}: missing, skipped", file=sys.stderr)
            continue
        errors = words = 0
        for utterance in read_manifest(path):
            transcript = transcribe_file(recognizer, utterance.audio)
            transcripts[utterance.id] = transcript
            utterance_errors, utterance_words, wrong = word_errors(utterance.text, transcript.text)
            errors, words = errors + utterance_errors, words + utterance_words
            for word, is_wrong in zip(transcript.words, wrong):
                if word.confidence >= CONFIDENT:
                    confident += 1
                    confident_wrong += is_wrong
        results[name] = {"what": what, "wer": 100.0 * errors / max(words, 1), "errors": errors, "words": words}

    nonspeech = {}
    for path in sorted((data / "judge" / "nonspeech").glob("*.wav")):
        transcript = transcribe_file(recognizer, str(path))
        nonspeech[path.name] = [(word.word, word.start, round(word.confidence, 3)) for word in transcript.words]

    timing = _word_times(data, transcripts, frame)

    report = {"sets": results, "confident": {"threshold": CONFIDENT, "words": confident, "wrong": confident_wrong},
              "nonspeech": nonspeech, "word_times": timing}
    (out / "judge.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| set | WER (each file alone, greedy) | errors / words |", "|---|---:|---:|"]
    lines += [f"| {r['what']} | {r['wer']:.2f}% | {r['errors']} / {r['words']} |" for r in results.values()]
    lines.append("")
    lines.append(f"words at confidence ≥ {CONFIDENT}: {confident}, wrong: {confident_wrong} "
                 f"({100.0 * confident_wrong / max(confident, 1):.2f}%)")
    lines.append("non-speech files and the words written for them: " + "; ".join(
        f"{name}: {' '.join(w for w, _, _ in words) or '(nothing)'}" for name, words in nonspeech.items()))
    if timing:
        lines.append(f"word times on dev ({timing['words']} correct words; speech by energy, tolerance "
                     f"{timing['tolerance']:.2f} s): {timing['on_speech']:.2f}% lie on their recording's speech; "
                     f"word centre minus speech centre: median {timing['centre_offset_median']:+.3f} s, "
                     f"5-95% {timing['centre_offset_p5']:+.3f} to {timing['centre_offset_p95']:+.3f} s")
    (out / "judge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _word_times(data: Path, transcripts: dict, frame: float) -> dict:
    """Each correctly recognized dev word's span against its FSDD recording's speech (found by energy)."""
    sources_path = data / "dev_sources.jsonl"
    if not sources_path.is_file():
        return {}
    on_speech, offsets = 0, []
    for line in sources_path.open():
        record = json.loads(line)
        transcript = transcripts.get(record["id"])
        if transcript is None:
            continue
        ref_words = record["text"].split()
        _, _, wrong = word_errors(record["text"], transcript.text)
        if len(transcript.words) != len(ref_words) or any(wrong):
            continue  # only utterances recognized without error: each word is then its reference word
        wave = load_samples(data / "wav" / "dev" / f"{record['id']}.wav")
        for word, source in zip(transcript.words, record["sources"]):
            start = round(source["start"] * SAMPLE_RATE)
            lo, hi = speech_span(wave[start:round(source["end"] * SAMPLE_RATE)])
            lo, hi = source["start"] + lo, source["start"] + hi
            on_speech += word.start >= lo - frame and word.end <= hi + frame
            offsets.append((word.start + word.end) / 2 - (lo + hi) / 2)
    if not offsets:
        return {}
    return {"words": len(offsets), "tolerance": frame, "on_speech": 100.0 * on_speech / len(offsets),
            "centre_offset_median": float(np.median(offsets)), "centre_offset_p5": float(np.percentile(offsets, 5)),
            "centre_offset_p95": float(np.percentile(offsets, 95))}


if __name__ == "__main__":
    sys.exit(main())
