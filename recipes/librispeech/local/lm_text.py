"""The text of an n-gram LM, with every sentence that is a dev or test transcript taken out.

    python local/lm_text.py --text sentences.txt --exclude data/manifests/dev-clean.jsonl ... --out data/lm/text.txt

Lines are normalized as transcripts are (asr.text.normalize_text). A line is dropped when its letters are those of
the transcript of an utterance of an excluded manifest, spaces and punctuation aside ("A.D." in the text and "A D" in
a transcript are one sentence), so that the LM has never seen a sentence it is evaluated on.
"""
from __future__ import annotations

import argparse
import sys

from asr.data.manifest import read_manifest
from asr.errors import AsrError, ManifestError
from asr.text import normalize_text


def letters(text: str) -> str:
    """The letters of a text alone: what two spellings of one sentence have in common."""
    return "".join(character for character in text if character.isalpha())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True, help="LM text, one sentence a line")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="JSONL", help="manifests whose transcripts to drop")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        excluded = {letters(normalize_text(u.text)) for path in args.exclude for u in read_manifest(path)}
        try:
            with open(args.text, encoding="utf-8") as text:
                lines = [normalize_text(line) for line in text]
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(args.text, None, f"cannot read the text: {error}") from error
    except AsrError as error:
        print(f"lm_text: error: {error}", file=sys.stderr)
        return 1
    kept = [line for line in lines if line and letters(line) not in excluded]
    with open(args.out, "w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in kept)
    print(f"{args.out}: {len(kept)} sentences of {args.text}; {len(lines) - len(kept)} dropped (empty, or a dev or "
          f"test transcript)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
