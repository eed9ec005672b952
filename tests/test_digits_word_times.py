"""Word times of whole-word digit tokens: a word is one CTC spike, and a model's latency from spike to speech, once
measured (recipes/digits/local/judge.py --calibrate), turns it into the word's span. Checked on hand-made lattices
with the recipe's own tokenizer, and the energy-based speech finder the calibration uses on signals whose speech is
known."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.data.digits import DIGIT_WORDS
from asr.decoding import GreedyDecoder
from asr.text import BpeTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "digits" / "local"))
from judge import speech_span, word_errors  # noqa: E402

FRAME = 0.08


@pytest.fixture(scope="module")
def tokenizer():
    rng = np.random.default_rng(0)
    texts = [" ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, 5)) for _ in range(300)]
    return BpeTokenizer.train(texts, vocab_size=28)


def spikes(tokenizer, frames: int, fired: dict[int, str]) -> torch.Tensor:
    """(1, frames, V) log-probabilities: blank everywhere but the frames of `fired` (frame → word)."""
    probs = torch.full((frames, tokenizer.vocab_size), 1e-4)
    probs[:, 0] = 1.0
    for frame, word in fired.items():
        (token,) = tokenizer.encode(word)
        probs[frame] = 1e-4
        probs[frame, token] = 1.0
    return (probs / probs.sum(-1, keepdim=True)).log()[None]


def test_each_digit_is_one_whole_word_token(tokenizer):
    assert all(len(tokenizer.encode(word)) == 1 for word in DIGIT_WORDS)


def test_without_a_latency_a_word_is_the_frame_where_it_fires(tokenizer):
    (hypothesis,) = GreedyDecoder(tokenizer, FRAME).decode(spikes(tokenizer, 20, {0: "SIX", 9: "TWO"}),
                                                           torch.tensor([20]))
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [("SIX", 0.0, 0.08), ("TWO", 0.72, 0.8)]


def test_a_measured_latency_moves_each_word_onto_its_speech_and_never_before_zero(tokenizer):
    decoder = GreedyDecoder(tokenizer, FRAME, word_span=(0.2, 0.55))
    (hypothesis,) = decoder.decode(spikes(tokenizer, 20, {0: "SIX", 9: "TWO"}), torch.tensor([20]))
    assert [(w.word, w.start, w.end) for w in hypothesis.words] == [("SIX", 0.2, 0.55), ("TWO", 0.92, 1.27)]
    (close,) = decoder.decode(spikes(tokenizer, 20, {0: "SIX", 3: "TWO"}), torch.tensor([20]))
    assert [(w.start, w.end) for w in close.words] == [(0.2, 0.44), (0.44, 0.79)]  # SIX ends where TWO starts
    early = GreedyDecoder(tokenizer, FRAME, word_span=(-0.3, 0.1))
    (hypothesis,) = early.decode(spikes(tokenizer, 20, {1: "SIX"}), torch.tensor([20]))
    assert (hypothesis.words[0].start, hypothesis.words[0].end) == (0.0, pytest.approx(0.18))


def test_the_energy_speech_finder_finds_a_tone_in_silence_and_noise():
    rate = 16000
    rng = np.random.default_rng(1)
    wave = rng.standard_normal(rate) * 1e-4
    wave[4000:10000] += 0.5 * np.sin(2 * np.pi * 300 * np.arange(6000) / rate)
    low, high = speech_span(wave)
    assert low == pytest.approx(0.25, abs=0.01) and high == pytest.approx(0.625, abs=0.01)


@pytest.mark.parametrize("reference, hypothesis, errors, wrong", [
    ("ONE TWO THREE", "ONE TWO THREE", 0, [False, False, False]),
    ("ONE TWO THREE", "ONE SIX THREE", 1, [False, True, False]),
    ("ONE TWO", "ONE SIX TWO", 1, [False, True, False]),
    ("ONE TWO", "", 2, []),
    ("", "SIX", 1, [True]),
])
def test_a_confident_word_is_wrong_when_substituted_or_inserted(reference, hypothesis, errors, wrong):
    assert word_errors(reference, hypothesis)[0] == errors
    assert word_errors(reference, hypothesis)[2] == wrong
