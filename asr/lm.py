"""Word n-gram language models for the beam-search decoder: interpolated modified Kneser-Ney, written as ARPA.

KenLM's estimator (lmplz) is not on PyPI, so this module makes the same estimate in plain Python: Chen & Goodman's
interpolated modified Kneser-Ney, with lmplz's conventions (Heafield et al. 2013, "Scalable modified Kneser-Ney
language model estimation"). KenLM inside flashlight-text then reads the ARPA file like any lmplz output.

The estimate, for an n-gram `h w` (context h, word w) of order n:

    p(w | h) = (a(h w) - D_n(a(h w))) / Σ_x a(h x)  +  γ(h) · p(w | h minus its first word)
    γ(h)     = (D_n(1)·N1(h •) + D_n(2)·N2(h •) + D_n(3+)·N3+(h •)) / Σ_x a(h x)

where a() is the *adjusted* count: the plain count at the highest order and for n-grams that begin with <s>, and
otherwise the number of different words seen just before the n-gram (its continuation count); N_k(h •) counts the
words that follow h with adjusted count k; and unigrams interpolate with the uniform distribution over the words
that can be predicted (every word but <s>). In the ARPA file an n-gram's backoff weight is γ of it as a context,
which makes the ARPA backoff reading give back exactly the interpolated probabilities.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

SENTENCE_START = "<s>"
SENTENCE_END = "</s>"
UNKNOWN_WORD = "<unk>"
ARPA_LOG_ZERO = -99.0  # the log10 probability ARPA files give <s>, which is never predicted
KENLM_BINARY_MAGIC = b"mmap lm "  # how every KenLM binary file begins


@dataclass(frozen=True)
class Discounts:
    """Modified Kneser-Ney discounts of one order: what is taken from n-grams seen once, twice, three or more times."""

    one: float
    two: float
    three_plus: float

    def __call__(self, count: int) -> float:
        """The discount of an n-gram with this adjusted count."""
        if count >= 3:
            return self.three_plus
        return self.two if count == 2 else self.one


# lmplz's --discount_fallback values, for orders where a small corpus leaves the formula undefined or out of range.
FALLBACK_DISCOUNTS = Discounts(0.5, 1.0, 1.5)


def estimate_discounts(count_of_counts: Sequence[int]) -> Discounts:
    """Chen & Goodman's discounts from n1..n4, the numbers of n-grams whose adjusted count is 1, 2, 3 and 4.

    Y = n1 / (n1 + 2 n2);  D(1) = 1 - 2Y n2/n1;  D(2) = 2 - 3Y n3/n2;  D(3+) = 3 - 4Y n4/n3.
    Raises ValueError when a count is zero or a discount falls outside (0, k), as lmplz does for corpora too small
    to estimate them.
    """
    n1, n2, n3, n4 = count_of_counts
    if min(n1, n2, n3, n4) == 0:
        raise ValueError(f"no n-gram has adjusted count {1 + [n1, n2, n3, n4].index(0)}")
    y = n1 / (n1 + 2 * n2)
    discounts = Discounts(1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    for count, discount in zip((1, 2, 3), (discounts.one, discounts.two, discounts.three_plus)):
        if not 0 < discount < count:
            raise ValueError(f"discount {discount:.3f} for adjusted count {count} is outside (0, {count})")
    return discounts


@dataclass
class NgramModel:
    """A backoff n-gram model: the probability (not log) of every n-gram it holds, and the backoff weights of those
    that are contexts. Index n - 1 of `probabilities`, `backoffs` and `discounts` is order n; n-grams are tuples."""

    order: int
    probabilities: list[dict[tuple[str, ...], float]]
    backoffs: list[dict[tuple[str, ...], float]]
    discounts: list[Discounts]

    @property
    def vocabulary(self) -> list[str]:
        """Every word of the model, <s>, </s> and <unk> included, sorted."""
        return sorted(ngram[0] for ngram in self.probabilities[0])

    def probability(self, context: Sequence[str], word: str) -> float:
        """p(word | context) as an ARPA reader computes it: the longest n-gram held, times the backoff weights of
        the longer contexts that were not. Unknown words count as <unk>."""
        if (word,) not in self.probabilities[0]:
            word = UNKNOWN_WORD
        context = tuple(context)[max(0, len(context) - self.order + 1):]
        backoff = 1.0
        for start in range(len(context) + 1):
            history = context[start:]
            ngram = history + (word,)
            if ngram in self.probabilities[len(history)]:
                return backoff * self.probabilities[len(history)][ngram]
            backoff *= self.backoffs[len(history) - 1].get(history, 1.0)
        raise AssertionError("every vocabulary word has a unigram probability")


def read_sentences(text_lines: Iterable[str], normalize: Callable[[str], str] | None = None,
                   vocab_limit: int | None = None) -> list[list[str]]:
    """Lines of text → lists of words, normalized; empty lines dropped. With `vocab_limit`, only that many of the
    most frequent words are kept (ties broken alphabetically) and the others become <unk>."""
    sentences = []
    for line in text_lines:
        words = (normalize(line) if normalize else line).split()
        if words:
            sentences.append(words)
    if vocab_limit is not None:
        frequencies = Counter(word for words in sentences for word in words)
        ranked = sorted(frequencies, key=lambda word: (-frequencies[word], word))
        kept = set(ranked[:vocab_limit])
        sentences = [[word if word in kept else UNKNOWN_WORD for word in words] for words in sentences]
    return sentences


def adjusted_counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Kneser-Ney adjusted counts of every n-gram of the sentences (padded with <s> and </s>), orders 1..`order`
    (at least 2).

    The highest order and n-grams that begin with <s> keep their plain counts; every other n-gram counts the
    different words seen before it. Every n-gram that is not at the start of a sentence is the suffix of a longer
    one, so counting the highest order and the sentence starts finds them all. <s> itself is left out of the
    unigrams: it is never predicted.
    """
    highest = Counter()
    sentence_starts = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (SENTENCE_START, *words, SENTENCE_END)
        highest.update(padded[i:i + order] for i in range(len(padded) - order + 1))
        for n in range(2, min(order, len(padded) + 1)):
            sentence_starts[n - 1][padded[:n]] += 1
    counts = [Counter() for _ in range(order)]
    counts[order - 1] = highest
    for n in range(order - 1, 0, -1):
        counts[n - 1] = Counter(ngram[1:] for ngram in counts[n])  # one for each different left neighbour
        counts[n - 1].update(sentence_starts[n - 1])
    return counts


def _discounts_of_order(counts: Counter, n: int) -> Discounts:
    count_of_counts = Counter(count for count in counts.values() if count <= 4)
    try:
        return estimate_discounts([count_of_counts[k] for k in (1, 2, 3, 4)])
    except ValueError as problem:
        log.warning("order %d: cannot estimate Kneser-Ney discounts (%s); using the fallback %s",
                    n, problem, FALLBACK_DISCOUNTS)
        return FALLBACK_DISCOUNTS


def _context_statistics(counts: Counter, discounts: Discounts) -> tuple[dict, dict]:
    """For each context h: Σ_x a(h x), and γ(h), the share of its probability left to the lower order."""
    totals = defaultdict(int)
    discounted = defaultdict(float)
    for ngram, count in counts.items():
        totals[ngram[:-1]] += count
        discounted[ngram[:-1]] += discounts(count)
    gammas = {context: discounted[context] / total for context, total in totals.items()}
    return totals, gammas


def estimate_kneser_ney(sentences: Sequence[Sequence[str]], order: int = 3,
                        prune: Sequence[int] | None = None) -> NgramModel:
    """Interpolated modified Kneser-Ney estimate of an `order`-gram model of the sentences (lists of words).

    `prune` gives, for each order from unigrams up, the adjusted count at or below which an n-gram is left out (as
    lmplz's --prune; unigrams cannot be pruned, so its first value must be 0). An n-gram that is the context or the
    lower-order suffix of a kept longer one is kept too, as ARPA readers need them. The probabilities of kept
    n-grams do not change; the backoff weight of a context that lost some of its continuations is recomputed so
    that its distribution still sums to one.
    """
    if order < 2:
        raise ConfigError(f"n-gram order must be at least 2 (KenLM reads no unigram models), got {order}")
    if not sentences:
        raise ConfigError("no text to estimate a language model from")
    thresholds = list(prune) if prune is not None else [0] * order
    if len(thresholds) != order or thresholds[0] != 0 or any(threshold < 0 for threshold in thresholds):
        raise ConfigError(f"prune needs {order} thresholds, one an order, the first (unigrams) 0; got {thresholds}")

    counts = adjusted_counts(sentences, order)
    discounts = [_discounts_of_order(counts[n - 1], n) for n in range(1, order + 1)]

    # Unigrams: interpolated with the uniform distribution over every word that can be predicted.
    words = {ngram[0] for ngram in counts[0]} | {SENTENCE_END, UNKNOWN_WORD}
    totals, gammas = _context_statistics(counts[0], discounts[0])
    uniform = gammas[()] / len(words)
    probabilities = [{(word,): uniform for word in words}]
    for ngram, count in counts[0].items():
        probabilities[0][ngram] += (count - discounts[0](count)) / totals[()]
    backoffs = []

    for n in range(2, order + 1):
        totals, gammas = _context_statistics(counts[n - 1], discounts[n - 1])
        lower = probabilities[n - 2]
        probabilities.append({
            ngram: (count - discounts[n - 1](count)) / totals[ngram[:-1]] + gammas[ngram[:-1]] * lower[ngram[1:]]
            for ngram, count in counts[n - 1].items()})
        backoffs.append(gammas)
    probabilities[0][(SENTENCE_START,)] = 0.0  # held only as a context: it begins every sentence

    model = NgramModel(order, probabilities, backoffs, discounts)
    if any(thresholds):
        _prune(model, counts, thresholds)
    return model


def _prune(model: NgramModel, counts: list[Counter], thresholds: list[int]) -> None:
    """Drop the n-grams at or below their order's count threshold, then renormalize the backoff weights."""
    kept_longer: set[tuple[str, ...]] = set()
    for n in range(model.order, 1, -1):
        needed = {ngram[:-1] for ngram in kept_longer} | {ngram[1:] for ngram in kept_longer}
        table = model.probabilities[n - 1]
        kept = {ngram for ngram, count in counts[n - 1].items() if count > thresholds[n - 1] or ngram in needed}
        model.probabilities[n - 1] = {ngram: table[ngram] for ngram in kept}
        kept_longer = kept

    # Backoff weights, from the lowest order up. A context whose continuations were all kept keeps γ: the suffixes
    # of kept n-grams are kept, so the lower-order probabilities of its continuations did not change and it still
    # sums to one. Any other context gets what its kept continuations leave, shared out in proportion to the
    # lower order's probabilities of the words it no longer holds.
    for n in range(2, model.order + 1):
        kept_sum = defaultdict(float)
        kept_lower_sum = defaultdict(float)
        kept_number = Counter()
        for ngram, probability in model.probabilities[n - 1].items():
            kept_sum[ngram[:-1]] += probability
            kept_lower_sum[ngram[:-1]] += model.probability(ngram[1:-1], ngram[-1])
            kept_number[ngram[:-1]] += 1
        seen_number = Counter(ngram[:-1] for ngram in counts[n - 1])
        for context in model.backoffs[n - 2]:
            if kept_number[context] < seen_number[context]:
                model.backoffs[n - 2][context] = (1 - kept_sum[context]) / (1 - kept_lower_sum[context])
        lower_contexts = model.probabilities[n - 2]
        model.backoffs[n - 2] = {context: weight for context, weight in model.backoffs[n - 2].items()
                                 if context in lower_contexts}


def write_arpa(model: NgramModel, path: str | Path) -> None:
    """Write the model as an ARPA file: log10 probabilities and backoff weights, n-grams sorted in each order."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("\\data\\\n")
        for n, table in enumerate(model.probabilities, start=1):
            out.write(f"ngram {n}={len(table)}\n")
        for n, table in enumerate(model.probabilities, start=1):
            out.write(f"\n\\{n}-grams:\n")
            backoffs = model.backoffs[n - 1] if n < model.order else {}
            for ngram in sorted(table):
                probability = table[ngram]
                line = f"{math.log10(probability) if probability > 0 else ARPA_LOG_ZERO:.6f}\t{' '.join(ngram)}"
                if ngram in backoffs:
                    line += f"\t{math.log10(backoffs[ngram]):.6f}"
                out.write(line + "\n")
        out.write("\n\\end\\\n")


def build_arpa(text_lines: Iterable[str], out_path: str | Path, order: int = 3,
               normalize: Callable[[str], str] | None = None, vocab_limit: int | None = None,
               prune: Sequence[int] | None = None) -> NgramModel:
    """Estimate an `order`-gram interpolated modified Kneser-Ney model of the lines and write it to `out_path` as ARPA.

    `normalize` is applied to each line first (pass asr.text.normalize_text so that the words are spelled as the
    tokenizer spells them; None takes lines as they are); see read_sentences for `vocab_limit` and
    estimate_kneser_ney for `prune`. Returns the model.
    """
    model = estimate_kneser_ney(read_sentences(text_lines, normalize, vocab_limit), order, prune)
    write_arpa(model, out_path)
    return model


def is_kenlm_binary(path: str | Path) -> bool:
    """Whether the file is a KenLM binary model (build_binary output) rather than ARPA text."""
    with open(path, "rb") as file:
        return file.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC


def read_arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's unigram section, in file order (<s>, </s> and <unk> included)."""
    words = []
    try:
        with open(path, encoding="utf-8") as arpa:
            lines = iter(arpa)
            if not any(line.strip() == "\\data\\" for line in lines):
                raise ModelFileError(f"{path}: not an ARPA language model (no \\data\\ line)")
            if not any(line.strip() == "\\1-grams:" for line in lines):
                raise ModelFileError(f"{path}: ARPA language model without a \\1-grams: section")
            for line in lines:
                fields = line.split()
                if not fields:
                    continue
                if fields[0].startswith("\\"):
                    break
                if len(fields) < 2:
                    raise ModelFileError(f"{path}: unigram line without a word: {line.strip()!r}")
                words.append(fields[1])
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{path}: cannot read the language model's words: {error}") from error
    return words
