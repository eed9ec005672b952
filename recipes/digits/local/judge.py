"""Judge a digits model as a user meets it: every file transcribed alone, greedy, with no speaker statistics.

    python recipes/digits/local/judge.py --model exp/digits/model.pt [--data data] [--out exp/digits/judge]
                                         [--calibrate | --calibrate-only]

Reports, in one markdown table and judge.json:
- WER of each test set (FSDD's official test split of single digits; connected digits of dev and of theo; the
  held-out espeak-ng voices, Piper settings and Asterisk's Allison; the laptop-style recordings);
- how often a word recognized with confidence ≥ 0.9 is wrong (substituted or inserted), over all those sets;
- the words written for each non-speech file (silence, noise, music, hum), which should be none;
- whether word times lie on the speech: on theo's test utterances, whose sources file says where each FSDD recording
  lies, each word of an utterance recognized without error against its recording's speech found by energy (10 ms
  frames within 30 dB of the recording's loudest). `--calibrate` first chooses the model's edge floor on dev, the
  five training speakers' official takes and held-out espeak-ng voices' lone digits (`calibrate_edge_pad`;
  `SpeechRecognizer.edge_pad_seconds`), then measures the model's latency on dev (the median time from a word's
  firing frames to its speech), and stores both in the model file, where transcription and greedy decoding find
  them (`asr.decoding.GreedyDecoder`'s `word_span`).
"""
import argparse
import json
import sys
from pathlib import Path

import jiwer
import numpy as np
import torch

from asr.audio import SAMPLE_RATE, load_samples
from asr.checkpoint import load_model, save_model
from asr.data.manifest import read_manifest
from asr.decoding import GreedyDecoder
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
    parser.add_argument("--calibrate", action="store_true",
                        help="choose the edge floor and measure the word latency, store both in the model file, then "
                             "judge")
    parser.add_argument("--calibrate-only", action="store_true", help="as --calibrate, and judge nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: files are tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    recognizer = load_model(args.model)
    if args.calibrate or args.calibrate_only:
        # Chosen and measured without theo (dev, the five speakers' official takes, held-out espeak-ng lone digits), so
        # that his voice judges them. The edge floor first: the word latency is measured with it in place.
        recognizer.metadata["edge_pad_seconds"] = calibrate_edge_pad(recognizer, data)
        recognizer.metadata["word_span"] = calibrate_word_span(recognizer, data)
        save_model(recognizer, args.model, recognizer.metadata)
        print(f"{args.model}: edge_pad_seconds {recognizer.metadata['edge_pad_seconds']} (chosen on dev, the five "
              "training speakers' official test takes and held-out espeak-ng lone digits), word_span "
              f"{recognizer.metadata['word_span']} (s from a word's firing frames to its speech, measured on dev) "
              "stored in the model file")
        if args.calibrate_only:
            return 0
    out = Path(args.out) if args.out else Path(args.model).parent / "judge"
    out.mkdir(parents=True, exist_ok=True)

    results, confident, confident_wrong = {}, 0, 0
    transcripts = {}
    for name, what in SETS.items():
        path = data / name
        if not path.is_file():
            print(f"{path}: missing, skipped", file=sys.stderr)
            continue
        errors = words = 0
        by_group = {}  # FSDD's official split holds theo, whom training never heard: counted apart as well
        for utterance in read_manifest(path):
            transcript = transcribe_file(recognizer, utterance.audio)
            transcripts[utterance.id] = transcript
            utterance_errors, utterance_words, wrong = word_errors(utterance.text, transcript.text)
            errors, words = errors + utterance_errors, words + utterance_words
            group = "theo" if utterance.speaker == "theo" else "the five training speakers"
            counts = by_group.setdefault(group, [0, 0])
            counts[0], counts[1] = counts[0] + utterance_errors, counts[1] + utterance_words
            for word, is_wrong in zip(transcript.words, wrong):
                if word.confidence >= CONFIDENT:
                    confident += 1
                    confident_wrong += is_wrong
        results[name] = {"what": what, "wer": 100.0 * errors / max(words, 1), "errors": errors, "words": words}
        if name == "official_test.jsonl":
            for group, (group_errors, group_words) in sorted(by_group.items()):
                results[f"{name} {group}"] = {"what": f"  of which {group}", "errors": group_errors,
                                              "words": group_words, "wer": 100.0 * group_errors / max(group_words, 1)}

    nonspeech = {}
    for path in sorted((data / "judge" / "nonspeech").glob("*.wav")):
        transcript = transcribe_file(recognizer, str(path))
        nonspeech[path.name] = [(word.word, word.start, round(word.confidence, 3)) for word in transcript.words]

    timing = _word_times(data, recognizer)

    report = {"sets": results, "confident": {"threshold": CONFIDENT, "words": confident, "wrong": confident_wrong},
              "nonspeech": nonspeech, "word_times": timing}
    (out / "judge.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = []
    lines.append(f"words at confidence ≥ {CONFIDENT}: {confident}, wrong: {confident_wrong} "
                 f"({100.0 * confident_wrong / max(confident, 1):.2f}%)")
    lines.append("non-speech files and the words written for them: " + "; ".join(
        f"{name}: {' '.join(w for w, _, _ in words) or '(nothing)'}" for name, words in nonspeech.items()))
    if timing:
        lines.append(f"word times on theo's test utterances ({timing['words']} words of those recognized without "
                     f"error; speech by energy; word_span {recognizer.metadata.get('word_span')}): "
                     f"{timing['centre_on_speech']:.2f}% of word centres on the word's speech; |start error| median "
                     f"{timing['start_error_median']:.3f} s (90%: {timing['start_error_p90']:.3f} s), |end error| "
                     f"median {timing['end_error_median']:.3f} s (90%: {timing['end_error_p90']:.3f} s)")
    # The WER table last: `make demo` ends with it.
    lines += ["", "| set | WER (each file alone, greedy) | errors / words |", "|---|---:|---:|"]
    lines += [f"| {r['what']} | {r['wer']:.2f}% | {r['errors']} / {r['words']} |" for r in results.values()]
    (out / "judge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _word_speech(data: Path, split: str, recognizer, decoder=None):
    """For each word of the split's utterances recognized without error: (word, speech start, speech end), the speech
    of its FSDD recording found by energy, in seconds from the start of the utterance."""
    for line in (data / f"{split}_sources.jsonl").open():
        record = json.loads(line)
        path = data / "wav" / split / f"{record['id']}.wav"
        transcript = transcribe_file(recognizer, str(path), decoder=decoder)
        if normalize_text(transcript.text) != normalize_text(record["text"]):
            continue  # only utterances recognized without error: each word is then its reference word
        wave = load_samples(path)
        for word, source in zip(transcript.words, record["sources"]):
            low, high = speech_span(wave[round(source["start"] * SAMPLE_RATE):round(source["end"] * SAMPLE_RATE)])
            yield word, source["start"] + low, source["start"] + high


EDGE_PADS = (0.0, 0.1, 0.2, 0.3)


def calibrate_edge_pad(recognizer, data: Path) -> float:
    """The edge floor (`SpeechRecognizer.edge_pad_seconds`) of EDGE_PADS with the fewest word errors, the shortest on
    a tie, every file transcribed alone, over voices training heard (dev, and the five training speakers' files of
    the official split: FSDD's tightly trimmed single digits) and voices it did not (held-out espeak-ng voices saying
    one digit, trimmed to the waveform: a model may know its training voices well enough to need no floor, and
    still need one for a new voice). Theo is not used."""
    parts = {"dev + the five speakers' official takes":
             read_manifest(data / "dev.jsonl")
             + [u for u in read_manifest(data / "official_test.jsonl") if u.speaker != "theo"],
             "held-out espeak-ng lone digits": read_manifest(data / "synth" / "espeak_heldout_lone.jsonl")}
    waves = {name: [load_samples(u.audio) for u in utterances] for name, utterances in parts.items()}
    errors = {name: {} for name in parts}
    for pad in EDGE_PADS:
        recognizer.metadata["edge_pad_seconds"] = pad
        for name, utterances in parts.items():
            errors[name][pad] = sum(word_errors(u.text, transcribe_file(recognizer, wave).text)[0]
                                    for u, wave in zip(utterances, waves[name]))
    total = {pad: sum(counts[pad] for counts in errors.values()) for pad in EDGE_PADS}
    print("edge floor (s): word errors on " + "; ".join(
        f"{name}: " + ", ".join(f"{pad}: {count}" for pad, count in counts.items()) for name, counts in errors.items()))
    return min(EDGE_PADS, key=lambda pad: (total[pad], pad))


def calibrate_word_span(recognizer, data: Path) -> list[float]:
    """The model's latency on dev: median seconds from a word's first firing frame to the start of its speech, and
    from its last firing frame to the end of it (`asr.decoding.GreedyDecoder`'s `word_span`)."""
    raw = GreedyDecoder(recognizer.tokenizer, frame_shift=recognizer.frame_shift)
    frame = recognizer.frame_shift
    offsets = [(low - word.start, high - (word.end - frame)) for word, low, high in
               _word_speech(data, "dev", recognizer, raw)]
    return [round(float(np.median([o[0] for o in offsets])), 3), round(float(np.median([o[1] for o in offsets])), 3)]


def _word_times(data: Path, recognizer) -> dict:
    """How the word times the model reports (calibrated or not) fall on theo's speech (the held-out test set)."""
    if not (data / "test_sources.jsonl").is_file():
        return {}
    centred, starts, ends = 0, [], []
    for word, low, high in _word_speech(data, "test", recognizer):
        centred += low <= (word.start + word.end) / 2 <= high
        starts.append(word.start - low)
        ends.append(word.end - high)
    if not starts:
        return {}
    return {"words": len(starts), "centre_on_speech": 100.0 * centred / len(starts),
            "start_error_median": float(np.median(np.abs(starts))), "end_error_median": float(np.median(np.abs(ends))),
            "start_error_p90": float(np.percentile(np.abs(starts), 90)),
            "end_error_p90": float(np.percentile(np.abs(ends), 90))}


if __name__ == "__main__":
    sys.exit(main())
