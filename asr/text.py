"""Transcripts to token ids and back: LibriSpeech-style normalization, a character and a sentencepiece tokenizer.

Every tokenizer reserves id 0 for the CTC blank, so `tokens[i]` is the string of output `i` of the model and
`vocab_size` is the model's output size. A tokenizer turns into plain data (`to_dict`) that the model file carries,
and `tokenizer_from_dict` rebuilds it.

Both tokenizers normalize the text they encode, and both refuse characters outside their alphabet rather than drop
them silently: an unknown character means the transcript and the model disagree, which data preparation should
count and skip (`unknown_characters`) before training ever sees it.
"""
from __future__ import annotations

import base64
import io
import json
import string
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece

from asr.errors import AsrError, ConfigError, ModelFileError

BLANK = "<blank>"
WORD_DELIMITER = "|"  # the character tokenizer's space, as flashlight's lexicon decoder expects
WORD_START = "\u2581"  # "▁", with which sentencepiece begins the first piece of every word
DEFAULT_CHAR_TOKENS = (BLANK, WORD_DELIMITER, "'", *string.ascii_uppercase)

_APOSTROPHE_VARIANTS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def normalize_text(text: str) -> str:
    """Normalize a transcript the way LibriSpeech's are written: "Café—it’s 'OK'!" → "CAFE IT'S OK".

    Unicode NFKC; accents on Latin letters folded to ASCII (é → E; letters of other scripts keep theirs); upper
    case; apostrophes kept inside words (curly ones made straight), dropped elsewhere (quotes); hyphens and dashes
    become spaces; all other punctuation and invisible control characters are dropped; whitespace is folded to
    single spaces. Digits, symbols, emoji and letters of any script are kept: whether a tokenizer can spell them is
    the tokenizer's business. The result is stable: normalizing it again changes nothing.
    """
    text = _fold_accents(unicodedata.normalize("NFKC", text)).translate(_APOSTROPHE_VARIANTS).upper()
    kept = []
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if char == "'":
            inside_word = 0 < position < len(text) - 1 and text[position - 1].isalnum() and text[position + 1].isalnum()
            kept.append(char if inside_word else "")
        elif char.isspace() or category == "Pd":
            kept.append(" ")
        elif category.startswith("P") or category in ("Cc", "Cf"):
            kept.append("")
        else:
            kept.append(char)
    return " ".join("".join(kept).split())


def _fold_accents(text: str) -> str:
    """Drop the combining marks that sit on ASCII letters (é = e + ◌́ → e); marks on other scripts' letters stay."""
    folded = []
    base_is_ascii = False
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.category(char).startswith("M"):
            if base_is_ascii:
                continue
        else:
            base_is_ascii = char.isascii()
        folded.append(char)
    # Recompose what was decomposed but kept (Hangul syllables, Greek accents, ...).
    return unicodedata.normalize("NFC", "".join(folded))


class Tokenizer(ABC):
    """What both tokenizers share: normalization, the alphabet check and the blank at id 0."""

    kind: str
    blank_id = 0
    tokens: list[str]
    alphabet: frozenset[str]  # the characters it can spell, besides the space between words

    @property
    def vocab_size(self) -> int:
        """Number of tokens, the blank included: the acoustic model's output size."""
        return len(self.tokens)

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of the normalized text that this tokenizer cannot spell, sorted."""
        return self._unknown_in(normalize_text(text))

    def _unknown_in(self, normalized: str) -> list[str]:
        return sorted(set(normalized) - self.alphabet - {" "})

    def encode(self, text: str) -> list[int]:
        """Normalize `text` and map it to token ids (never 0, the blank).

        Raises AsrError naming the characters when the text holds any outside the alphabet; an empty list when
        nothing is left after normalization (a transcript of punctuation only).
        """
        normalized = normalize_text(text)
        unknown = self._unknown_in(normalized)
        if unknown:
            raise AsrError(f"characters {', '.join(map(repr, unknown))} are not in the {self.kind} tokenizer's "
                           f"alphabet: {text!r}")
        return self._encode_normalized(normalized)

    @abstractmethod
    def _encode_normalized(self, normalized: str) -> list[int]:
        """Token ids of text that is already normalized and spelled in the alphabet."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (a label sequence, not CTC frames: repeats are not merged) → words separated by single spaces.

        Blanks are skipped.
        """

    @abstractmethod
    def to_dict(self) -> dict:
        """Plain data (str, list, bytes) that `tokenizer_from_dict` turns back into an identical tokenizer."""


class CharTokenizer(Tokenizer):
    """One token a character, `|` between words: `["<blank>", "|", "'", "A", ..., "Z"]` unless told otherwise."""

    kind = "char"

    def __init__(self, tokens: Sequence[str] = DEFAULT_CHAR_TOKENS):
        tokens = list(tokens)
        if tokens[:2] != [BLANK, WORD_DELIMITER]:
            raise ValueError(f"character tokens must start with {BLANK!r}, {WORD_DELIMITER!r}; got {tokens[:2]}")
        characters = tokens[2:]
        if any(len(char) != 1 or char.isspace() or char == WORD_DELIMITER for char in characters):
            raise ValueError(f"character tokens must be single non-space characters other than "
                             f"{WORD_DELIMITER!r}; got {characters}")
        if len(set(characters)) != len(characters):
            raise ValueError(f"character tokens repeat: {characters}")
        self.tokens = tokens
        self.alphabet = frozenset(characters)
        self._id_of = {token: token_id for token_id, token in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose alphabet is every character of the normalized `texts`, in code point order."""
        characters = set()
        for text in texts:
            characters.update(normalize_text(text))
        characters.discard(" ")
        return cls([BLANK, WORD_DELIMITER, *sorted(characters)])

    def _encode_normalized(self, normalized: str) -> list[int]:
        return [self._id_of[WORD_DELIMITER if char == " " else char] for char in normalized]

    def decode(self, ids: Iterable[int]) -> str:
        spelled = "".join(self.tokens[token_id] for token_id in map(int, ids) if token_id != self.blank_id)
        return " ".join(spelled.replace(WORD_DELIMITER, " ").split())

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokens": list(self.tokens)}


class BpeTokenizer(Tokenizer):
    """Sentencepiece word pieces (`▁` marks the start of a word), trained in memory with `BpeTokenizer.train`.

    The sentencepiece model itself reserves id 0 for `<blank>` (as its padding piece, which sentencepiece never
    emits) and id 1 for `<unk>`, so its ids are the model's ids with no shifting.
    """

    kind = "bpe"

    def __init__(self, model_bytes: bytes):
        self.model_bytes = bytes(model_bytes)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_bytes)
        self.tokens = [self._processor.id_to_piece(token_id) for token_id in range(self._processor.get_piece_size())]
        if self.tokens[0] != BLANK:
            raise ValueError(f"sentencepiece model has {self.tokens[0]!r} at id 0, not {BLANK!r}: "
                             f"train it with BpeTokenizer.train")
        # Training with full character coverage gives every character of the training text its own piece.
        self.alphabet = frozenset(piece for piece in self.tokens
                                  if len(piece) == 1 and piece != WORD_START)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> BpeTokenizer:
        """Train a sentencepiece model of `vocab_size` tokens (`<blank>` and `<unk>` included) on normalized `texts`.

        `model_type` is sentencepiece's: "unigram" or "bpe". Raises ConfigError when sentencepiece cannot build that
        many pieces from the texts (its message says the most it can).
        """
        sentences = [normalized for normalized in map(normalize_text, texts) if normalized]
        if not sentences:
            raise ConfigError("cannot train a BPE tokenizer: no text left after normalization")
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=model,
                vocab_size=vocab_size, model_type=model_type,
                pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
                character_coverage=1.0,  # every character gets a piece, so none becomes <unk>
                normalization_rule_name="identity",  # normalize_text already did it; decode must give it back
                max_sentence_length=1 << 16,  # sentencepiece skips longer sentences silently (default 4192 bytes)
                minloglevel=2)
        except RuntimeError as error:
            raise ConfigError(f"cannot train a {vocab_size}-token {model_type} tokenizer: {error}") from error
        return cls(model.getvalue())

    def _encode_normalized(self, normalized: str) -> list[int]:
        return self._processor.encode(normalized, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([token_id for token_id in map(int, ids) if token_id != self.blank_id])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model_bytes}

    def __reduce__(self):
        # DataLoader workers may pickle the dataset; the sentencepiece processor is rebuilt from its bytes.
        return (BpeTokenizer, (self.model_bytes,))


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild a tokenizer from its `to_dict()`; raises ModelFileError when the data is not one."""
    try:
        if data["kind"] == CharTokenizer.kind:
            return CharTokenizer(data["tokens"])
        if data["kind"] == BpeTokenizer.kind:
            return BpeTokenizer(data["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"tokenizer data is not usable: {error}") from error
    raise ModelFileError(f"unknown tokenizer kind {data['kind']!r} (expected 'char' or 'bpe')")


def tokenizer_to_json(tokenizer: Tokenizer) -> str:
    """The tokenizer as one JSON string (sentencepiece's model bytes as base64): what a tokenizer file holds, and
    what an exported ONNX model carries in its metadata."""
    data = dict(tokenizer.to_dict())
    if isinstance(data.get("model"), bytes):
        data["model"] = base64.b64encode(data["model"]).decode("ascii")
    return json.dumps(data)


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer from `tokenizer_to_json`'s string; raises ModelFileError when the text is not one."""
    try:
        data = json.loads(text)
        if data.get("kind") == BpeTokenizer.kind:
            data["model"] = base64.b64decode(data["model"])
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise ModelFileError(f"not a tokenizer's JSON ({error})") from error
    return tokenizer_from_dict(data)


def save_tokenizer(tokenizer: Tokenizer, path) -> None:
    """Write a tokenizer file (JSON; sentencepiece's model bytes as base64) for `tokenizer.path` in a config."""
    Path(path).write_text(tokenizer_to_json(tokenizer))


def load_tokenizer(path) -> Tokenizer:
    """Read a file written by `save_tokenizer`; errors name the file."""
    try:
        text = Path(path).read_text()
    except (OSError, ValueError) as error:  # ValueError: not UTF-8
        raise ModelFileError(f"{path}: not a tokenizer file ({error})") from error
    try:
        return tokenizer_from_json(text)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
