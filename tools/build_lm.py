"""Build a word n-gram language model (ARPA, interpolated modified Kneser-Ney) for beam search, and its lexicon.

    python tools/build_lm.py --text corpus.txt --order 3 --out lm.arpa
    python tools/build_lm.py --text corpus.txt --order 3 --out lm.arpa --lexicon-out lexicon.txt --tokens char
    python tools/build_lm.py --text corpus.txt --order 4 --prune 0 0 1 1 --vocab-limit 200000 --out lm.arpa

Each line of the text is normalized as transcripts are (asr.text.normalize_text), so the model's words are spelled
as the tokenizers spell them. The lexicon lists every word of the model with its spelling: `--tokens char` spells
with the default character tokenizer, `--tokens MODEL.pt` with the tokenizer of a model file (a BPE one, say).
The beam-search decoder builds that lexicon itself when given only the ARPA file; writing it is for inspection and
for decoders that load a KenLM binary.
"""
from __future__ import annotations

import argparse
import sys
import time

from asr.decoding import write_lexicon
from asr.errors import AsrError, ManifestError
from asr.lm import build_arpa
from asr.text import CharTokenizer, normalize_text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="training text, one sentence a line")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--out", required=True, help="the ARPA file to write")
    parser.add_argument("--vocab-limit", type=int, help="keep only this many of the most frequent words")
    parser.add_argument("--prune", type=int, nargs="+", metavar="COUNT",
                        help="one adjusted-count threshold an order, unigrams first (0): n-grams at or below it are "
                             "dropped, as lmplz --prune")
    parser.add_argument("--lexicon-out", help="also write a flashlight lexicon of the model's words")
    parser.add_argument("--tokens", default="char",
                        help="how the lexicon spells words: 'char' or a model file whose tokenizer to use")
    return parser.parse_args(argv)


def lexicon_tokenizer(tokens: str):
    """The default character tokenizer for 'char', else the tokenizer inside a model file."""
    if tokens == "char":
        return CharTokenizer()
    from asr.checkpoint import load_model  # only this case needs torch models loaded

    return load_model(tokens).tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        started = time.perf_counter()
        try:
            with open(args.text, encoding="utf-8") as text:
                lines = text.readlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(args.text, None, f"cannot read the text: {error}") from error
        if not any(line.strip() for line in lines):
            raise ManifestError(args.text, None, "the file holds no text")
        model = build_arpa(lines, args.out, order=args.order, normalize=normalize_text,
                           vocab_limit=args.vocab_limit, prune=args.prune)
        sizes = ", ".join(f"{len(table)} {n}-grams" for n, table in enumerate(model.probabilities, start=1))
        print(f"{args.out}: {sizes} from {len(lines)} lines in {time.perf_counter() - started:.1f} s")
        for n, discounts in enumerate(model.discounts, start=1):
            print(f"  order {n} discounts: D1 {discounts.one:.3f}, D2 {discounts.two:.3f}, "
                  f"D3+ {discounts.three_plus:.3f}")
        if args.lexicon_out:
            written = write_lexicon(model.vocabulary, lexicon_tokenizer(args.tokens), args.lexicon_out)
            print(f"{args.lexicon_out}: {written} words")
    except AsrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
