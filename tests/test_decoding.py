"""Decoding: hand-built log-prob matrices whose best paths are known, brute-force CTC sums, and an LM that must
change a decision."""
import itertools
import math
import string

import pytest
import torch

from asr import decoding
from asr.decoding import (
    BeamSearchDecoder,
    GreedyDecoder,
    WordLM,
    align_words,
    prefix_beam_search,
    spell_word,
    write_lexicon,
)
from asr.errors import AsrError, ConfigError, ManifestError

SHIFT = 0.04


class FakeCharTokenizer:
    """The character tokenizer's contract: `|` between words, blank at 0."""

    kind = "char"
    blank_id = 0
    tokens = ["<blank>", "|", "'", *string.ascii_uppercase]

    def encode(self, text):
        text = text.upper()  # as the real one normalizes
        if any(char not in self.tokens and char != " " for char in text):
            raise AsrError(f"cannot spell {text!r}")
        return [self.tokens.index("|" if char == " " else char) for char in text]

    def decode(self, ids):
        spelled = "".join(self.tokens[i] for i in ids if i != 0)
        return " ".join(spelled.replace("|", " ").split())


class FakeBpeTokenizer:
    """Word pieces, `▁` starting each word; encodes by longest match."""

    kind = "bpe"
    blank_id = 0
    tokens = ["<blank>", "<unk>", "▁THE", "▁CAT", "▁S", "AT", "AD", "▁C", "A", "T", "D", "H", "E"]

    def encode(self, text):
        ids = []
        for word in text.split():
            rest = "▁" + word
            while rest:
                piece = max((p for p in self.tokens[2:] if rest.startswith(p)), key=len, default=None)
                if piece is None:
                    raise AsrError(f"cannot spell {text!r}")
                ids.append(self.tokens.index(piece))
                rest = rest[len(piece):]
        return ids

    def decode(self, ids):
        return "".join(self.tokens[i] for i in ids if i != 0).replace("▁", " ").strip()


CHAR = FakeCharTokenizer()
BPE = FakeBpeTokenizer()


def path_log_probs(tokenizer, path, peak=0.9, peaks=None):
    """(T, V) log-probs whose frame t gives `peak` (or peaks[t]) to path[t] ("_" is the blank; a pair (token, p)
    overrides the peak) and shares the rest equally among the other tokens."""
    vocab = len(tokenizer.tokens)
    rows = []
    for t, item in enumerate(path):
        token, p = item if isinstance(item, tuple) else (item, peaks[t] if peaks else peak)
        row = torch.full((vocab,), (1 - p) / (vocab - 1))
        row[tokenizer.tokens.index("<blank>" if token == "_" else token)] = p
        rows.append(row)
    return torch.stack(rows).log()


def two_way_frame(tokenizer, first, p_first, second, p_second):
    """One frame of log-probs split between two tokens, the rest shared equally."""
    vocab = len(tokenizer.tokens)
    row = torch.full((vocab,), (1 - p_first - p_second) / (vocab - 2))
    row[tokenizer.tokens.index(first)] = p_first
    row[tokenizer.tokens.index(second)] = p_second
    return row.log()


def greedy(tokenizer, log_probs):
    return GreedyDecoder(tokenizer, SHIFT).decode(log_probs[None], torch.tensor([log_probs.shape[0]]))[0]


def brute_force_best_labeling(log_probs):
    """The label sequence with the largest CTC probability, summing every path of the matrix (tiny T and V only)."""
    frames, vocab = log_probs.shape
    totals = {}
    for path in itertools.product(range(vocab), repeat=frames):
        labels = tuple(label for label, _ in itertools.groupby(path) if label != 0)
        probability = math.exp(sum(log_probs[t, label].item() for t, label in enumerate(path)))
        totals[labels] = totals.get(labels, 0.0) + probability
    return list(max(totals, key=totals.get))


# ---------------------------------------------------------------------------------------------------------------
# Greedy decoding


def test_greedy_merges_repeats_and_needs_a_blank_between_letters_that_repeat():
    assert greedy(CHAR, path_log_probs(CHAR, ["A", "A", "A"])).text == "A"
    hypothesis = greedy(CHAR, path_log_probs(CHAR, ["A", "A", "_", "A"]))
    assert hypothesis.text == "AA"
    assert hypothesis.tokens == [CHAR.tokens.index("A")] * 2


def test_greedy_blank_only_gives_empty_text():
    hypothesis = greedy(CHAR, path_log_probs(CHAR, ["_"] * 5))
    assert (hypothesis.text, hypothesis.tokens, hypothesis.words) == ("", [], [])


def test_greedy_batch_respects_each_length():
    first = path_log_probs(CHAR, ["C", "A", "T"])
    second = path_log_probs(CHAR, ["_", "S", "_", "|", "A", "_"])
    padding = path_log_probs(CHAR, ["Z", "Z", "Z"])  # what lies beyond a length must be ignored
    batch = torch.stack([torch.cat([first, padding]), second])
    hypotheses = GreedyDecoder(CHAR, SHIFT).decode(batch, torch.tensor([3, 6]))
    assert [h.text for h in hypotheses] == ["CAT", "S A"]


def test_greedy_score_is_the_best_path_log_probability():
    log_probs = torch.randn(7, len(CHAR.tokens), generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    hypothesis = greedy(CHAR, log_probs)
    assert hypothesis.score == pytest.approx(log_probs.max(dim=-1).values.sum().item(), abs=1e-5)


def test_greedy_word_times_and_confidences_come_from_the_path():
    path = ["_", "T", "H", "H", "E", "|", "|", "C", "A", "T", "_", "_"]
    peaks = [0.9, 0.9, 0.6, 0.8, 0.9, 0.9, 0.9, 0.7, 0.9, 0.95, 0.9, 0.9]
    hypothesis = greedy(CHAR, path_log_probs(CHAR, path, peaks=peaks))
    assert hypothesis.text == "THE CAT"
    the, cat = hypothesis.words
    assert (the.word, the.start, the.end) == ("THE", pytest.approx(1 * SHIFT), pytest.approx(5 * SHIFT))
    assert (cat.word, cat.start, cat.end) == ("CAT", pytest.approx(7 * SHIFT), pytest.approx(10 * SHIFT))
    # A token's confidence is its peak over its frames (H: max(0.6, 0.8)); a word's, its least sure token's.
    assert the.confidence == pytest.approx(0.8)
    assert cat.confidence == pytest.approx(0.7)


def test_greedy_word_pieces_start_words_at_the_word_start_mark():
    hypothesis = greedy(BPE, path_log_probs(BPE, ["▁C", "AT", "_", "▁S", "AD", "AD"]))
    assert hypothesis.text == "CAT SAD"
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [
        ("CAT", 0.0, pytest.approx(2 * SHIFT)), ("SAD", pytest.approx(3 * SHIFT), pytest.approx(6 * SHIFT))]


def test_greedy_decodes_numpy_arrays_as_it_does_tensors():
    """An ONNX Runtime model's output is numpy: the same hypotheses, scores, times and confidences."""
    log_probs = (3 * torch.randn(2, 9, len(CHAR.tokens), generator=torch.Generator().manual_seed(0))).log_softmax(-1)
    lengths = torch.tensor([9, 6])
    from_tensors = GreedyDecoder(CHAR, SHIFT).decode(log_probs, lengths)
    from_arrays = GreedyDecoder(CHAR, SHIFT).decode(log_probs.numpy(), lengths.numpy())
    assert [h.text for h in from_arrays] == [h.text for h in from_tensors] and from_tensors[0].text
    assert [h.tokens for h in from_arrays] == [h.tokens for h in from_tensors]
    assert [h.words for h in from_arrays] == [h.words for h in from_tensors]
    assert [h.score for h in from_arrays] == pytest.approx([h.score for h in from_tensors], abs=1e-5)


def test_unknown_tokenizer_kind_is_refused():
    class Phones(FakeCharTokenizer):
        kind = "phone"

    with pytest.raises(ConfigError, match="phone"):
        GreedyDecoder(Phones())


# ---------------------------------------------------------------------------------------------------------------
# Forced alignment


def test_align_words_finds_the_frames_of_each_word():
    path = ["_", "T", "H", "E", "_", "|", "C", "A", "A", "T", "_"]
    log_probs = path_log_probs(CHAR, path, peaks=[0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.9, 0.9])
    words = align_words(log_probs, CHAR.encode("THE CAT"), CHAR, SHIFT)
    assert [(w.word, w.start, w.end) for w in words] == [
        ("THE", pytest.approx(1 * SHIFT), pytest.approx(4 * SHIFT)),
        ("CAT", pytest.approx(6 * SHIFT), pytest.approx(10 * SHIFT))]
    assert words[1].confidence == pytest.approx(0.6)


def test_align_words_refuses_tokens_that_cannot_fit():
    with pytest.raises(ValueError, match="cannot be aligned"):
        align_words(path_log_probs(CHAR, ["A", "A"]), CHAR.encode("AA"), CHAR, SHIFT)  # needs a blank between


# ---------------------------------------------------------------------------------------------------------------
# Beam search without a language model


def test_beam_search_sums_paths_where_greedy_takes_one():
    # Each frame: blank 0.6, A 0.4. Best path "__" (0.36) is empty, but "A" collects 0.4·0.6·2 + 0.4² = 0.64.
    log_probs = torch.stack([two_way_frame(CHAR, "<blank>", 0.6, "A", 0.4 - 1e-6)] * 2)
    assert greedy(CHAR, log_probs).text == ""
    assert BeamSearchDecoder(CHAR, frame_shift=SHIFT).decode(log_probs[None], torch.tensor([2]))[0].text == "A"
    assert prefix_beam_search(log_probs, beam_size=10) == [CHAR.tokens.index("A")]


@pytest.mark.parametrize("seed", range(12))
def test_prefix_beam_search_agrees_with_flashlight_and_brute_force(seed):
    tokenizer = FakeCharTokenizer()
    tokenizer.tokens = ["<blank>", "|", "A", "B"]
    log_probs = (1.5 * torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))).log_softmax(-1)
    flashlight = BeamSearchDecoder(tokenizer, beam_size=500, beam_threshold=1000)
    expected = brute_force_best_labeling(log_probs)
    assert prefix_beam_search(log_probs, beam_size=500) == expected
    assert flashlight.decode(log_probs[None], torch.tensor([6]))[0].tokens == expected


def test_beam_search_takes_numpy_arrays():
    first = path_log_probs(CHAR, ["_", "C", "A", "A", "_", "T", "_"])
    batch = torch.stack([first, first])
    decoder = BeamSearchDecoder(CHAR, frame_shift=SHIFT)
    expected = decoder.decode(batch, torch.tensor([7, 5]))
    got = decoder.decode(batch.numpy(), torch.tensor([7, 5]).numpy())
    assert [(h.text, h.tokens, h.words) for h in got] == [(h.text, h.tokens, h.words) for h in expected]
    # Flashlight's scores of one input vary by about 1% from call to call (seen with tensors alone too).
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=0.05)


def test_beam_search_batch_with_lengths_and_word_times():
    first = path_log_probs(CHAR, ["T", "H", "E", "|", "C", "A", "T"])
    second = path_log_probs(CHAR, ["_", "A", "_", "A", "_"])
    batch = torch.stack([first, torch.cat([second, path_log_probs(CHAR, ["Z", "Z"])])])
    hypotheses = BeamSearchDecoder(CHAR, frame_shift=SHIFT).decode(batch, torch.tensor([7, 5]))
    assert [h.text for h in hypotheses] == ["THE CAT", "AA"]
    assert [(w.word, w.start, w.end) for w in hypotheses[0].words] == [
        ("THE", 0.0, pytest.approx(3 * SHIFT)), ("CAT", pytest.approx(4 * SHIFT), pytest.approx(7 * SHIFT))]
    assert hypotheses[0].score == pytest.approx(first.max(dim=-1).values.sum().item(), abs=0.01)


def test_nbest_hypotheses_are_distinct_and_best_first():
    # p(A) = 0.5·0.5 + 0.5·p(A at frame 2) ≈ 0.25, p(B) ≈ 0.4·0.5 = 0.2, p(AC) = 0.5·0.3 = 0.15
    log_probs = torch.stack([two_way_frame(CHAR, "A", 0.5, "B", 0.4), two_way_frame(CHAR, "<blank>", 0.5, "C", 0.3)])
    nbest = BeamSearchDecoder(CHAR, nbest=3).decode_nbest(log_probs[None], torch.tensor([2]))[0]
    assert [h.text for h in nbest] == ["A", "B", "AC"]
    assert nbest[0].score > nbest[1].score > nbest[2].score


def test_without_flashlight_the_python_search_stands_in(monkeypatch):
    # p("A") = 0.45·0.6 + 0.55·0.4 + 0.45·0.4 = 0.67 against 0.33 for nothing; its best path puts A first.
    log_probs = torch.stack([two_way_frame(CHAR, "<blank>", 0.55, "A", 0.45 - 1e-6),
                             two_way_frame(CHAR, "<blank>", 0.6, "A", 0.4 - 1e-6)])
    monkeypatch.setattr(decoding, "_flashlight_ctc_decoder", lambda: None)
    hypothesis = BeamSearchDecoder(CHAR, frame_shift=SHIFT).decode(log_probs[None], torch.tensor([2]))[0]
    assert (hypothesis.text, hypothesis.score) == ("A", None)
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [("A", 0.0, pytest.approx(SHIFT))]
    with pytest.raises(ConfigError, match="flashlight-text"):
        BeamSearchDecoder(CHAR, lexicon="lexicon.txt")


# ---------------------------------------------------------------------------------------------------------------
# Beam search with a language model

# Backoff bigram LM: after CAT, SAT is likely (log10 -0.1) and SAD only reached by backing off (-0.3 - 1.5).
TINY_ARPA = """\\data\\
ngram 1=7
ngram 2=5

\\1-grams:
-1.0\t</s>
-99\t<s>\t-0.3
-2.0\t<unk>
-1.0\tTHE\t-0.3
-1.0\tCAT\t-0.3
-1.5\tSAT\t-0.3
-1.5\tSAD\t-0.3

\\2-grams:
-0.2\t<s> THE
-0.2\tTHE CAT
-0.1\tCAT SAT
-0.1\tSAT </s>
-0.1\tSAD </s>

\\end\\
"""


@pytest.fixture
def tiny_lm(tmp_path):
    path = tmp_path / "tiny.arpa"
    path.write_text(TINY_ARPA)
    return path


def the_cat_sad(tokenizer, pieces, last_pair):
    """Frames spelling `pieces` surely, then a last frame where the acoustics slightly prefer D over T."""
    return torch.cat([path_log_probs(tokenizer, pieces), two_way_frame(tokenizer, *last_pair)[None]])


def test_language_model_changes_the_decision(tiny_lm):
    log_probs = the_cat_sad(CHAR, list("THE|CAT|SA"), ("D", 0.5, "T", 0.4))[None]
    lengths = torch.tensor([11])
    assert greedy(CHAR, log_probs[0]).text == "THE CAT SAD"
    assert BeamSearchDecoder(CHAR).decode(log_probs, lengths)[0].text == "THE CAT SAD"
    assert BeamSearchDecoder(CHAR, lm=tiny_lm, lm_weight=0.0).decode(log_probs, lengths)[0].text == "THE CAT SAD"
    hypothesis = BeamSearchDecoder(CHAR, lm=tiny_lm, lm_weight=2.0, frame_shift=SHIFT).decode(log_probs, lengths)[0]
    assert hypothesis.text == "THE CAT SAT"
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [
        ("THE", 0.0, pytest.approx(3 * SHIFT)), ("CAT", pytest.approx(4 * SHIFT), pytest.approx(7 * SHIFT)),
        ("SAT", pytest.approx(8 * SHIFT), pytest.approx(11 * SHIFT))]
    assert hypothesis.words[-1].confidence == pytest.approx(0.4, abs=1e-3)  # the T the LM chose


def test_language_model_with_word_pieces(tiny_lm):
    log_probs = the_cat_sad(BPE, ["▁THE", "▁CAT", "▁S"], ("AD", 0.5, "AT", 0.4))[None]
    lengths = torch.tensor([4])
    assert BeamSearchDecoder(BPE).decode(log_probs, lengths)[0].text == "THE CAT SAD"
    hypothesis = BeamSearchDecoder(BPE, lm=tiny_lm, frame_shift=SHIFT).decode(log_probs, lengths)[0]
    assert hypothesis.text == "THE CAT SAT"
    assert [w.word for w in hypothesis.words] == ["THE", "CAT", "SAT"]


def test_a_loaded_lm_is_shared_by_decoders_of_other_weights(tiny_lm, kenlm_loads):
    log_probs = the_cat_sad(CHAR, list("THE|CAT|SA"), ("D", 0.5, "T", 0.4))[None]
    lengths = torch.tensor([11])
    shared = WordLM(CHAR, tiny_lm)
    settings = ((0.0, 10), (2.0, 10), (2.0, 500))  # (LM weight, beam)
    shared_texts = [BeamSearchDecoder(CHAR, lm=shared, lm_weight=weight, beam_size=beam).decode(log_probs, lengths)[0]
                    .text for weight, beam in settings]
    assert kenlm_loads == [str(tiny_lm)]  # one load for three decoders
    # Each decides as a decoder that loads the LM from its own file does.
    own_texts = [BeamSearchDecoder(CHAR, lm=tiny_lm, lm_weight=weight, beam_size=beam).decode(log_probs, lengths)[0]
                 .text for weight, beam in settings]
    assert shared_texts == own_texts == ["THE CAT SAD", "THE CAT SAT", "THE CAT SAT"]
    assert len(kenlm_loads) == 4
    with pytest.raises(ConfigError, match="lexicon already"):
        BeamSearchDecoder(CHAR, lm=shared, lexicon=tiny_lm)


def test_a_lexicon_limits_the_words(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("THE\tT H E |\nCAT\tC A T |\nSAT\tS A T |\n")
    log_probs = the_cat_sad(CHAR, list("THE|CAT|SA"), ("D", 0.5, "T", 0.4))[None]
    assert BeamSearchDecoder(CHAR, lexicon=lexicon).decode(log_probs, torch.tensor([11]))[0].text == "THE CAT SAT"


def test_bad_lexicon_line_is_named(tmp_path, tiny_lm):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("THE\tT H E |\nCAT\tC A T # |\n")
    with pytest.raises(ManifestError, match=r"lexicon.txt:2: tokens \['#'\]"):
        BeamSearchDecoder(CHAR, lm=tiny_lm, lexicon=lexicon)


def test_kenlm_binary_needs_a_lexicon(tmp_path):
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0")
    with pytest.raises(ConfigError, match="lexicon"):
        BeamSearchDecoder(CHAR, lm=binary)


def test_spelling_words_for_a_lexicon(tmp_path):
    assert spell_word("CAT", CHAR) == ["C", "A", "T", "|"]
    assert spell_word("SAT", BPE) == ["▁S", "AT"]
    assert spell_word("C@T", CHAR) is None
    assert spell_word("cat", CHAR) is None  # the tokenizer writes it CAT: the LM's "cat" would never be output
    path = tmp_path / "lexicon.txt"
    assert write_lexicon(["<s>", "</s>", "<unk>", "THE", "NAÏVE", "CAT"], CHAR, path) == 2
    assert path.read_text() == "THE\tT H E |\nCAT\tC A T |\n"


# ---------------------------------------------------------------------------------------------------------------
# CUDA (run where a GPU is present)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_test_batch():
    first = path_log_probs(CHAR, ["T", "H", "E", "|", "C", "A", "T"])
    second = torch.cat([path_log_probs(CHAR, ["_", "A", "_", "A", "_"]), path_log_probs(CHAR, ["Z", "Z"])])
    return torch.stack([first, second]), torch.tensor([7, 5])


@needs_cuda
def test_greedy_on_cuda_matches_cpu():
    log_probs, lengths = cuda_test_batch()
    on_cpu = GreedyDecoder(CHAR, SHIFT).decode(log_probs, lengths)
    on_gpu = GreedyDecoder(CHAR, SHIFT).decode(log_probs.cuda(), lengths.cuda())
    assert [(h.text, h.tokens, h.words) for h in on_gpu] == [(h.text, h.tokens, h.words) for h in on_cpu]


@needs_cuda
def test_beam_search_on_cuda_matches_cpu():
    log_probs, lengths = cuda_test_batch()
    decoder = BeamSearchDecoder(CHAR, frame_shift=SHIFT)
    on_cpu = decoder.decode(log_probs, lengths)
    on_gpu = decoder.decode(log_probs.cuda(), lengths.cuda())
    assert [(h.text, h.tokens) for h in on_gpu] == [(h.text, h.tokens) for h in on_cpu]
    for gpu_hypothesis, cpu_hypothesis in zip(on_gpu, on_cpu):
        for gpu_word, cpu_word in zip(gpu_hypothesis.words, cpu_hypothesis.words, strict=True):
            assert (gpu_word.word, gpu_word.start, gpu_word.end) == (cpu_word.word, cpu_word.start, cpu_word.end)
            assert gpu_word.confidence == pytest.approx(cpu_word.confidence, abs=1e-5)
