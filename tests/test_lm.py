"""The Kneser-Ney ARPA builder: hand-computed values, an independent transcription of the formulas, distributions
that sum to one, and KenLM (inside flashlight-text) reading the files."""
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from asr.errors import ConfigError, ModelFileError
from asr.lm import FALLBACK_DISCOUNTS, Discounts, adjusted_counts, build_arpa, estimate_discounts, read_arpa_unigrams

REPO = Path(__file__).resolve().parents[1]


def read_arpa(path):
    """An ARPA file → ({n-gram: probability}, {n-gram: backoff weight}), plain (not log) values."""
    probabilities, backoffs = {}, {}
    for line in Path(path).read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:  # \data\, ngram counts, section headers, blank lines
            continue
        ngram = tuple(fields[1].split())
        probabilities[ngram] = 10 ** float(fields[0])
        if len(fields) == 3:
            backoffs[ngram] = 10 ** float(fields[2])
    return probabilities, backoffs


def arpa_probability(arpa, context, word):
    """p(word | context) by the ARPA backoff rule."""
    probabilities, backoffs = arpa
    if tuple(context) + (word,) in probabilities:
        return probabilities[tuple(context) + (word,)]
    return backoffs.get(tuple(context), 1.0) * arpa_probability(arpa, context[1:], word)


def contexts_of(arpa, order):
    """Every context an ARPA model conditions on: the empty one and each n-gram below the top order (but those
    ending a sentence, which nothing follows)."""
    return [()] + [ngram for ngram in arpa[0] if len(ngram) < order and ngram[-1] != "</s>"]


def synthetic_corpus(sentences=200, seed=0):
    """Sentences over 60 words of Zipfian frequencies: every order sees adjusted counts 1 to 4 (real discounts)."""
    rng = random.Random(seed)
    words = [f"W{i}" for i in range(60)]
    weights = [1 / (rank + 1) for rank in range(60)]
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 7))) for _ in range(sentences)]


# ---------------------------------------------------------------------------------------------------------------
# Discounts and counts


def test_discounts_by_hand():
    # n1..n4 = 10, 5, 3, 2: Y = 10 / 20 = 0.5; D1 = 1 - 2·0.5·5/10; D2 = 2 - 3·0.5·3/5; D3+ = 3 - 4·0.5·2/3.
    discounts = estimate_discounts([10, 5, 3, 2])
    assert (discounts.one, discounts.two, discounts.three_plus) == pytest.approx((0.5, 1.1, 3 - 4 / 3))
    assert (discounts(1), discounts(2), discounts(3), discounts(7)) == pytest.approx((0.5, 1.1, 5 / 3, 5 / 3))


@pytest.mark.parametrize("count_of_counts", [[10, 5, 0, 2], [10, 1, 10, 1]])
def test_discounts_that_cannot_be_estimated_are_refused(count_of_counts):
    with pytest.raises(ValueError):
        estimate_discounts(count_of_counts)


def test_adjusted_counts_by_hand():
    # <s> a b </s> twice, <s> b </s>: "a" follows only <s>; "b" follows a and <s>; "</s>" only b.
    unigrams, bigrams = adjusted_counts([["a", "b"], ["a", "b"], ["b"]], order=2)
    assert unigrams == {("a",): 1, ("b",): 2, ("</s>",): 1}
    assert bigrams == {("<s>", "a"): 2, ("a", "b"): 2, ("b", "</s>"): 3, ("<s>", "b"): 1}


def test_adjusted_counts_keep_plain_counts_after_sentence_start():
    _, bigrams, trigrams = adjusted_counts([["x", "y"], ["z", "y"], ["x"]], order=3)
    assert bigrams[("<s>", "x")] == 2  # a plain count: nothing precedes <s>
    assert bigrams[("x", "y")] == 1  # one left neighbour (<s>), though seen once
    assert trigrams == {("<s>", "x", "y"): 1, ("x", "y", "</s>"): 1, ("<s>", "z", "y"): 1,
                        ("z", "y", "</s>"): 1, ("<s>", "x", "</s>"): 1}


# ---------------------------------------------------------------------------------------------------------------
# Probabilities


def test_tiny_bigram_model_by_hand(tmp_path):
    # Counts as in test_adjusted_counts_by_hand; every count-of-counts has holes, so discounts fall back to 0.5, 1, 1.5.
    # Unigrams: total 4, γ = (0.5·2 + 1·1)/4 = 0.5 spread over {a, b, </s>, <unk>}: p(a) = 0.5/4 + 0.125 = 0.25,
    # p(b) = 1/4 + 0.125, p(</s>) = 0.25, p(<unk>) = 0.125.
    # After <s>: total 3, u(a) = 1/3, u(b) = 0.5/3, γ = 1.5/3 → p(a|<s>) = 1/3 + 0.5·0.25, p(b|<s>) = 1/6 + 0.5·0.375.
    # After a: p(b|a) = 1/2 + 0.5·0.375. After b: p(</s>|b) = 1.5/3 + 0.5·0.25; p(b|b) = 0.5·0.375 by backoff.
    model = build_arpa(["a b", "a b", "b"], tmp_path / "lm.arpa", order=2)
    assert model.discounts == [FALLBACK_DISCOUNTS, FALLBACK_DISCOUNTS]
    arpa = read_arpa(tmp_path / "lm.arpa")
    expected = {((), "a"): 0.25, ((), "b"): 0.375, ((), "</s>"): 0.25, ((), "<unk>"): 0.125,
                (("<s>",), "a"): 1 / 3 + 0.125, (("<s>",), "b"): 1 / 6 + 0.1875, (("a",), "b"): 0.6875,
                (("b",), "</s>"): 0.625, (("b",), "b"): 0.1875, (("a",), "a"): 0.125}
    for (context, word), probability in expected.items():
        assert arpa_probability(arpa, context, word) == pytest.approx(probability, rel=1e-5), (context, word)
    assert arpa[1] == pytest.approx({("<s>",): 0.5, ("a",): 0.5, ("b",): 0.5}, rel=1e-5)


def reference_kneser_ney(sentences, order):
    """Interpolated modified Kneser-Ney written straight from its definition, counting every order's n-grams."""
    padded = [["<s>", *sentence.split(), "</s>"] for sentence in sentences]
    plain = [Counter(tuple(s[i:i + n]) for s in padded for i in range(len(s) - n + 1)) for n in range(1, order + 1)]
    adjusted = [Counter() for _ in range(order)]
    for n in range(1, order + 1):
        for ngram, count in plain[n - 1].items():
            if ngram == ("<s>",):
                continue
            if n == order or ngram[0] == "<s>":
                adjusted[n - 1][ngram] = count
            else:
                adjusted[n - 1][ngram] = sum(1 for longer in plain[n] if longer[1:] == ngram)
    discounts = []
    for counts in adjusted:
        n1, n2, n3, n4 = (sum(1 for c in counts.values() if c == k) for k in (1, 2, 3, 4))
        y = n1 / (n1 + 2 * n2)
        discounts.append(Discounts(1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3))
    vocabulary = {ngram[0] for ngram in adjusted[0]} | {"<unk>"}
    following = [{} for _ in range(order)]  # [n - 1]: context → {n-gram: adjusted count}
    for n in range(1, order + 1):
        for ngram, count in adjusted[n - 1].items():
            following[n - 1].setdefault(ngram[:-1], {})[ngram] = count

    def probability(context, word):
        n = len(context) + 1
        lower = 1 / len(vocabulary) if n == 1 else probability(context[1:], word)
        if context not in following[n - 1]:
            return lower
        counts = following[n - 1][context]
        total = sum(counts.values())
        gamma = sum(discounts[n - 1](count) for count in counts.values()) / total
        count = counts.get(context + (word,), 0)
        return (count - discounts[n - 1](count) if count else 0.0) / total + gamma * lower

    return probability, discounts, sorted(vocabulary)


def test_arpa_gives_the_interpolated_kneser_ney_probabilities(tmp_path):
    sentences = synthetic_corpus()
    model = build_arpa(sentences, tmp_path / "lm.arpa", order=3)
    reference, discounts, vocabulary = reference_kneser_ney(sentences, order=3)
    for ours, theirs in zip(model.discounts, discounts):
        assert (ours.one, ours.two, ours.three_plus) == pytest.approx((theirs.one, theirs.two, theirs.three_plus))
    assert FALLBACK_DISCOUNTS not in model.discounts
    arpa = read_arpa(tmp_path / "lm.arpa")
    contexts = contexts_of(arpa, 3)
    assert len(contexts) > 400
    for context in contexts:
        for word in vocabulary:
            assert arpa_probability(arpa, context, word) == pytest.approx(reference(context, word), rel=2e-5)


@pytest.mark.parametrize("prune", [None, [0, 1, 1], [0, 2, 3]])
def test_every_context_sums_to_one(tmp_path, prune):
    model = build_arpa(synthetic_corpus(), tmp_path / "lm.arpa", order=3, prune=prune)
    arpa = read_arpa(tmp_path / "lm.arpa")
    predictable = [word for word in model.vocabulary if word != "<s>"]
    for context in contexts_of(arpa, 3):
        assert sum(arpa_probability(arpa, context, word) for word in predictable) == pytest.approx(1.0, abs=1e-4)


def test_pruning_drops_rare_ngrams_but_keeps_what_arpa_needs(tmp_path):
    full = build_arpa(synthetic_corpus(), tmp_path / "full.arpa", order=3)
    pruned = build_arpa(synthetic_corpus(), tmp_path / "pruned.arpa", order=3, prune=[0, 1, 2])
    assert len(pruned.probabilities[2]) < len(full.probabilities[2])
    assert pruned.probabilities[0] == full.probabilities[0]
    for n in (2, 3):
        for ngram, probability in pruned.probabilities[n - 1].items():
            assert ngram[:-1] in pruned.probabilities[n - 2]  # its context
            assert ngram[1:] in pruned.probabilities[n - 2]  # its suffix
            assert probability == full.probabilities[n - 1][ngram]  # kept n-grams keep their probability


def test_vocabulary_limit_maps_rare_words_to_unknown(tmp_path):
    model = build_arpa(["a a a b b c", "a b d"], tmp_path / "lm.arpa", order=2, vocab_limit=2)
    assert model.vocabulary == ["</s>", "<s>", "<unk>", "a", "b"]
    assert ("b", "<unk>") in model.probabilities[1]


def test_normalize_is_applied_to_each_line(tmp_path):
    model = build_arpa(["The cat.", "  ", "the CAT"], tmp_path / "lm.arpa", order=2,
                       normalize=lambda line: line.upper().replace(".", ""))
    assert model.vocabulary == ["</s>", "<s>", "<unk>", "CAT", "THE"]


@pytest.mark.parametrize("order, prune", [(1, None), (3, [0, 1]), (2, [1, 1]), (2, [0, -1])])
def test_bad_settings_are_refused(tmp_path, order, prune):
    with pytest.raises(ConfigError):
        build_arpa(["a b"], tmp_path / "lm.arpa", order=order, prune=prune)


def test_no_text_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no text"):
        build_arpa(["", "  "], tmp_path / "lm.arpa")


def test_read_arpa_unigrams(tmp_path):
    model = build_arpa(["a b", "b c"], tmp_path / "lm.arpa", order=2)
    assert sorted(read_arpa_unigrams(tmp_path / "lm.arpa")) == model.vocabulary
    (tmp_path / "not.arpa").write_text("hello\n")
    with pytest.raises(ModelFileError, match=r"not.arpa: not an ARPA"):
        read_arpa_unigrams(tmp_path / "not.arpa")


# ---------------------------------------------------------------------------------------------------------------
# KenLM reads the files


def test_kenlm_scores_as_the_arpa_file_says(tmp_path):
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import create_word_dict

    sentences = synthetic_corpus()
    build_arpa(sentences, tmp_path / "lm.arpa", order=3, prune=[0, 1, 1])
    arpa = read_arpa(tmp_path / "lm.arpa")
    words = read_arpa_unigrams(tmp_path / "lm.arpa")
    dictionary = create_word_dict({word: [[word]] for word in words})
    lm = kenlm.KenLM(str(tmp_path / "lm.arpa"), dictionary)
    for sentence in sentences[:50] + ["W9 W9 W9 W0 W8"]:
        state, history = lm.start(False), ("<s>",)
        for word in sentence.split():
            state, log10_probability = lm.score(state, dictionary.get_index(word))
            assert log10_probability == pytest.approx(math.log10(arpa_probability(arpa, history[-2:], word)),
                                                      abs=1e-5)
            history += (word,)
        _, log10_probability = lm.finish(state)
        assert log10_probability == pytest.approx(math.log10(arpa_probability(arpa, history[-2:], "</s>")), abs=1e-5)


def test_flashlight_decoder_loads_the_model(tmp_path):
    from torchaudio.models.decoder import ctc_decoder

    build_arpa(["THE CAT", "A CAT"], tmp_path / "lm.arpa", order=2)
    (tmp_path / "lexicon.txt").write_text("THE\tT H E |\nCAT\tC A T |\nA\tA |\n")
    tokens = ["<blank>", "|", "A", "C", "E", "H", "T"]
    decoder = ctc_decoder(str(tmp_path / "lexicon.txt"), tokens, lm=str(tmp_path / "lm.arpa"),
                          blank_token="<blank>", sil_token="|")
    path = [tokens.index(token) for token in "THE|CAT|"]
    emissions = torch.full((1, len(path), len(tokens)), -10.0)
    emissions[0, torch.arange(len(path)), path] = 0.0
    assert decoder(emissions)[0][0].words == ["THE", "CAT"]


@pytest.mark.slow
def test_full_text_corpus_builds_and_loads(data_dir, tmp_path):
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    from flashlight.lib.text.dictionary import create_word_dict

    from asr.text import normalize_text

    lines = []
    for path in sorted((data_dir / "text").glob("ljspeech-*-sentences.txt")):
        lines += path.read_text(encoding="utf-8").splitlines()
    model = build_arpa(lines, tmp_path / "lm.arpa", order=3, normalize=normalize_text)
    assert FALLBACK_DISCOUNTS not in model.discounts
    words = read_arpa_unigrams(tmp_path / "lm.arpa")
    lm = kenlm.KenLM(str(tmp_path / "lm.arpa"), create_word_dict({word: [[word]] for word in words}))
    assert lm is not None
    # Every context's distribution sums to one; a sample of contexts, as the vocabulary is large.
    predictable = [word for word in model.vocabulary if word != "<s>"]
    for context in random.Random(0).sample(sorted(model.backoffs[1]), 20) + [("<s>",), ()]:
        assert sum(model.probability(context, word) for word in predictable) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# tools/build_lm.py


def test_build_lm_tool_writes_the_model_and_lexicon(tmp_path):
    (tmp_path / "text.txt").write_text("The cat sat.\nThe cat, it sat on the mat!\nA dog sat\n")
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_lm.py"), "--text", str(tmp_path / "text.txt"), "--order", "2",
         "--out", str(tmp_path / "lm.arpa"), "--lexicon-out", str(tmp_path / "lexicon.txt"), "--tokens", "char"],
        capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
    assert "8 words" in completed.stdout
    assert sorted(read_arpa_unigrams(tmp_path / "lm.arpa")) == [
        "</s>", "<s>", "<unk>", "A", "CAT", "DOG", "IT", "MAT", "ON", "SAT", "THE"]
    assert "CAT\tC A T |" in (tmp_path / "lexicon.txt").read_text().splitlines()


def test_build_lm_tool_names_a_missing_file(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_lm.py"), "--text", str(tmp_path / "absent.txt"),
         "--out", str(tmp_path / "lm.arpa")], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 1
    assert "absent.txt" in completed.stderr and "Traceback" not in completed.stderr
