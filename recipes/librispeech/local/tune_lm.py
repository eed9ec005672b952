"""Choose the LM weight and word score of beam-search decoding on the dev sets, never on a test set.

    python local/tune_lm.py --model exp/train_100/avg.pt --lm data/lm/4-gram.arpa \
        --dev data/manifests/dev-clean.jsonl data/manifests/dev-other.jsonl \
        --lm-weights 0.5 1 1.5 2 --word-scores -1 0 1 --max-utterances 400 --out exp/train_100/decode_lm_4-gram

Every (LM weight, word score) pair of the grid decodes the dev sets, and the pair with the fewest word errors over
all of them together wins. With `--max-utterances N` each dev set is tuned on N of its utterances, spread evenly over
it (the beam search with a large LM takes a good fraction of a second an utterance). Writes `OUT/tuning.json`, every
point of the grid with its WER, and `OUT/decoding.json`, the chosen pair, which the decode stage reads to decode the
dev and test sets with, and `asr report` to say how that decoding was made. Prints the chosen pair.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

from asr.checkpoint import load_model
from asr.data.manifest import read_manifest, write_manifest
from asr.decoding import BeamSearchDecoder
from asr.errors import AsrError
from asr.evaluate import evaluate


def evenly_spread(items: list, count: int) -> list:
    """`count` items spread evenly over the list (all of them when count is 0 or not smaller)."""
    if count == 0 or count >= len(items):
        return items
    return [items[index * len(items) // count] for index in range(count)]


def tune(model_path: str, lm: str, dev_manifests: list[str], lm_weights: list[float], word_scores: list[float],
         max_utterances: int, beam_size: int, device: str) -> list[dict]:
    """WER over all dev sets together at every point of the grid: [{"lm_weight", "word_score", "wer", "errors",
    "words"}, …] in grid order."""
    recognizer = load_model(model_path, device)
    points = []
    with tempfile.TemporaryDirectory() as folder:
        tuning_manifests = []
        for manifest in dev_manifests:
            subset = Path(folder) / Path(manifest).name
            write_manifest(subset, evenly_spread(read_manifest(manifest), max_utterances))
            tuning_manifests.append(subset)
        for lm_weight, word_score in itertools.product(lm_weights, word_scores):
            decoder = BeamSearchDecoder(recognizer.tokenizer, beam_size=beam_size, lm=lm, lm_weight=lm_weight,
                                        word_score=word_score, frame_shift=recognizer.frame_shift)
            scores = evaluate(recognizer, tuning_manifests, decoder)
            errors, words = sum(s.errors for s in scores), sum(s.words for s in scores)
            points.append({"lm_weight": lm_weight, "word_score": word_score, "wer": errors / max(words, 1),
                           "errors": errors, "words": words})
            print(f"LM weight {lm_weight:g}, word score {word_score:g}: dev WER {100 * errors / max(words, 1):.2f}%",
                  file=sys.stderr, flush=True)
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file")
    parser.add_argument("--lm", required=True, help="ARPA language model")
    parser.add_argument("--dev", nargs="+", required=True, metavar="JSONL", help="dev manifests (never test sets)")
    parser.add_argument("--lm-weights", type=float, nargs="+", required=True)
    parser.add_argument("--word-scores", type=float, nargs="+", required=True)
    parser.add_argument("--max-utterances", type=int, default=0,
                        help="tune on at most this many utterances of each dev set (0: all)")
    parser.add_argument("--beam-size", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True, help="folder for tuning.json and decoding.json")
    args = parser.parse_args(argv)
    try:
        points = tune(args.model, args.lm, args.dev, args.lm_weights, args.word_scores, args.max_utterances,
                      args.beam_size, args.device)
    except AsrError as error:
        print(f"tune_lm: error: {error}", file=sys.stderr)
        return 1
    best = min(points, key=lambda point: point["errors"])  # the first of equals: the grid's order breaks ties
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps({"dev": args.dev, "max_utterances": args.max_utterances,
                                                 "beam_size": args.beam_size, "points": points}, indent=1) + "\n")
    chosen = {"lm": args.lm, "lm_weight": best["lm_weight"], "word_score": best["word_score"],
              "beam_size": args.beam_size, "tuned_on": [Path(manifest).stem for manifest in args.dev],
              "dev_wer": best["wer"]}
    (out / "decoding.json").write_text(json.dumps(chosen, indent=1) + "\n")
    print(f"{best['lm_weight']:g} {best['word_score']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
