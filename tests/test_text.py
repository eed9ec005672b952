"""Transcript normalization and the two tokenizers, on hand-worked cases and real LJSpeech sentences."""
import io
import pickle
import string

import pytest
import sentencepiece
import torch

from asr.errors import AsrError, ConfigError, ModelFileError
from asr.text import BpeTokenizer, CharTokenizer, normalize_text, tokenizer_from_dict


@pytest.fixture(scope="module")
def val_sentences(data_dir) -> list[str]:
    return (data_dir / "text" / "ljspeech-val-sentences.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def train_sentences(data_dir) -> list[str]:
    return (data_dir / "text" / "ljspeech-train-sentences.txt").read_text(encoding="utf-8").splitlines()[:3000]


@pytest.fixture(scope="module")
def bpe(train_sentences) -> BpeTokenizer:
    return BpeTokenizer.train(train_sentences, vocab_size=200)


# -- normalize_text ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("Hello, world!", "HELLO WORLD"),
    ("  many   spaces\tand\ttabs\n", "MANY SPACES AND TABS"),
    ("It’s John's dog.", "IT'S JOHN'S DOG"),                      # curly apostrophe made straight, kept in words
    ("'Quoted,' she said; 'rock 'n' roll'", "QUOTED SHE SAID ROCK N ROLL"),  # quote marks are not apostrophes
    ("the dogs' bones", "THE DOGS BONES"),
    ("a carving-knife, upstairs—quickly", "A CARVING KNIFE UPSTAIRS QUICKLY"),  # hyphen and em dash split words
    ("Café naïve Müller", "CAFE NAIVE MULLER"),                    # accents folded to ASCII
    ("İstanbul Straße", "ISTANBUL STRASSE"),
    ("(see [1], p. 2)", "SEE 1 P 2"),                              # digits are the tokenizer's business
    ("ﬁne", "FINE"),                                               # NFKC splits the ligature
    ("?!...—", ""),
    ("zero\u200bwidth", "ZEROWIDTH"),                              # invisible format characters dropped
    ("漢字 と かな", "漢字 と かな"),                                  # other scripts pass through
    ("Ελληνικά", "ΕΛΛΗΝΙΚΆ"),                                      # ... upper-cased, their accents kept
    ("smile 😀!", "SMILE 😀"),
])
def test_normalize_text_hand_worked_cases(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_text_gives_librispeech_characters_on_real_sentences(val_sentences, train_sentences):
    # LJSpeech holds commas, quotes, brackets, hyphens and a few accented names (Müller, café): after normalization
    # only LibriSpeech's characters remain, and normalizing again changes nothing.
    allowed = set(string.ascii_uppercase + "' ")
    for sentence in val_sentences + train_sentences:
        normalized = normalize_text(sentence)
        assert set(normalized) <= allowed, sentence
        assert normalize_text(normalized) == normalized
        assert normalized.split() == normalized.split(" ")  # single spaces, none at the ends


def test_normalize_text_keeps_the_words(val_sentences):
    # An independent reference for plain ASCII sentences: split on spaces and hyphens, strip the rest by hand.
    for sentence in val_sentences:
        if not sentence.isascii() or "'" in sentence:
            continue
        words = sentence.replace("-", " ").split()
        reference = " ".join(w for w in ("".join(c for c in word if c.isalnum()).upper() for word in words) if w)
        assert normalize_text(sentence) == reference


# -- CharTokenizer -----------------------------------------------------------------------------------------------

def test_char_tokenizer_default_alphabet_and_hand_encoded_ids():
    tokenizer = CharTokenizer()
    assert tokenizer.tokens == ["<blank>", "|", "'"] + list(string.ascii_uppercase)
    assert tokenizer.vocab_size == 29 and tokenizer.blank_id == 0 and tokenizer.kind == "char"
    # A=3 ... Z=28; "|"=1 between words; "'"=2.
    h, e, l, o, w, r, d, t, s = (3 + string.ascii_uppercase.index(c) for c in "HELOWRDTS")  # noqa: E741 (letter L)
    assert tokenizer.encode("Hello, world!") == [h, e, l, l, o, 1, w, o, r, l, d]
    assert tokenizer.encode("it's") == [3 + 8, t, 2, s]
    assert tokenizer.decode([h, e, 0, l, l, o, 1, 1, w, o, r, l, d, 1]) == "HELLO WORLD"


def test_char_tokenizer_round_trips_real_sentences(val_sentences):
    tokenizer = CharTokenizer()
    for sentence in val_sentences:
        ids = tokenizer.encode(sentence)
        assert 0 not in ids
        assert tokenizer.decode(ids) == normalize_text(sentence)


def test_unknown_characters_are_reported_and_refused():
    tokenizer = CharTokenizer()
    text = "Café 漢字, 2 smiles 😀"
    assert tokenizer.unknown_characters(text) == sorted({"漢", "字", "2", "😀"})
    with pytest.raises(AsrError, match="not in the char tokenizer's alphabet") as raised:
        tokenizer.encode(text)
    assert "'漢'" in str(raised.value) and "'😀'" in str(raised.value)
    assert tokenizer.unknown_characters("Café") == []  # é folds to E, which the alphabet has


def test_punctuation_only_transcript_encodes_to_nothing():
    tokenizer = CharTokenizer()
    assert tokenizer.encode(" ... ?! — ") == []
    assert tokenizer.decode([]) == ""


def test_char_tokenizer_from_texts_spells_other_alphabets():
    texts = ["漢字 と かな", "smile 😀", "Grüße aus Köln"]
    tokenizer = CharTokenizer.from_texts(texts)
    assert tokenizer.tokens[:2] == ["<blank>", "|"]
    assert set(tokenizer.tokens[2:]) == set("".join(normalize_text(t) for t in texts).replace(" ", ""))
    assert tokenizer.tokens[2:] == sorted(tokenizer.tokens[2:])
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == normalize_text(text)
    assert tokenizer.unknown_characters("QUIZ") == ["Q", "Z"]


@pytest.mark.parametrize("tokens", [["|", "<blank>", "A"], ["<blank>", "|", "A", "A"], ["<blank>", "|", "AB"]])
def test_char_tokenizer_refuses_bad_token_lists(tokens):
    with pytest.raises(ValueError):
        CharTokenizer(tokens)


# -- BpeTokenizer ------------------------------------------------------------------------------------------------

def test_bpe_reserves_id_0_for_the_blank(bpe):
    assert bpe.tokens[0] == "<blank>" and bpe.blank_id == 0 and bpe.kind == "bpe"
    assert bpe.vocab_size == 200 == len(bpe.tokens)
    assert len(set(bpe.tokens)) == len(bpe.tokens)
    # The tokens are sentencepiece's own pieces at the same ids: no shifting to get wrong.
    processor = sentencepiece.SentencePieceProcessor(model_proto=bpe.to_dict()["model"])
    assert bpe.tokens == [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    sentence = normalize_text("The overwhelming majority of people in this country know how to sift the wheat")
    assert bpe.encode(sentence) == processor.encode(sentence)


def test_bpe_round_trips_real_sentences(bpe, val_sentences):
    for sentence in val_sentences:
        ids = bpe.encode(sentence)
        assert ids and 0 not in ids
        assert bpe.decode(ids) == normalize_text(sentence)
        assert bpe.decode([0, *ids, 0]) == normalize_text(sentence)  # blanks are skipped


def test_bpe_pieces_mark_word_starts(bpe):
    pieces = [bpe.tokens[i] for i in bpe.encode("the president")]
    assert "".join(pieces) == "\u2581THE\u2581PRESIDENT"


def test_bpe_refuses_characters_it_never_saw(bpe):
    assert bpe.unknown_characters("naïve 漢") == ["漢"]
    with pytest.raises(AsrError, match="'漢'"):
        bpe.encode("naïve 漢")


def test_bpe_training_explains_a_vocabulary_too_large():
    with pytest.raises(ConfigError, match="Vocabulary size too high"):
        BpeTokenizer.train(["a few words", "and a few more"], vocab_size=500)
    with pytest.raises(ConfigError, match="no text"):
        BpeTokenizer.train(["...", "?!"], vocab_size=10)


def test_bpe_tokenizer_pickles_for_dataloader_workers(bpe, val_sentences):
    copy = pickle.loads(pickle.dumps(bpe))
    assert [copy.encode(s) for s in val_sentences[:20]] == [bpe.encode(s) for s in val_sentences[:20]]


# -- serialization -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [CharTokenizer, lambda: CharTokenizer.from_texts(["über 漢字"]), "bpe"])
def test_to_dict_survives_a_weights_only_torch_load(make, bpe, val_sentences):
    tokenizer = bpe if make == "bpe" else make()
    buffer = io.BytesIO()
    torch.save({"tokenizer": tokenizer.to_dict()}, buffer)
    buffer.seek(0)
    restored = tokenizer_from_dict(torch.load(buffer, weights_only=True)["tokenizer"])
    assert type(restored) is type(tokenizer)
    assert restored.tokens == tokenizer.tokens
    texts = [text for text in [*val_sentences, "über 漢字"] if not tokenizer.unknown_characters(text)]
    assert texts
    assert [restored.encode(text) for text in texts] == [tokenizer.encode(text) for text in texts]


@pytest.mark.parametrize("data", [{"kind": "word"}, {"kind": "char"}, {"tokens": []}, {"kind": "bpe", "model": b"junk"},
                                  {"kind": "char", "tokens": ["A", "B"]}])
def test_tokenizer_from_dict_refuses_what_is_not_a_tokenizer(data):
    with pytest.raises(ModelFileError):
        tokenizer_from_dict(data)


def test_tokenizer_files_round_trip(tmp_path, data_dir):
    from asr.text import load_tokenizer, save_tokenizer

    lines = (data_dir / "text" / "ljspeech-val-sentences.txt").read_text(encoding="utf-8").splitlines()[:400]
    bpe = BpeTokenizer.train(lines, vocab_size=80)
    save_tokenizer(bpe, tmp_path / "bpe.json")
    save_tokenizer(CharTokenizer(), tmp_path / "char.json")
    assert load_tokenizer(tmp_path / "bpe.json").encode(lines[3]) == bpe.encode(lines[3])
    assert load_tokenizer(tmp_path / "char.json").tokens == CharTokenizer().tokens
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")
