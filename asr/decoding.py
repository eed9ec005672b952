"""CTC log-probabilities → words, with word times and confidences: greedy and beam-search (+ n-gram LM) decoding.

Both decoders take the acoustic model's output, `(B, T, V)` log-probabilities and their `(B,)` lengths, and return
one `Hypothesis` per utterance: its text, its token ids (the CTC label sequence, blanks and repeats removed) and its
words, each with start and end times and a confidence.

- `GreedyDecoder` takes the most probable token of every frame (on the tensor's device), merges repeats and drops
  blanks. Word times and confidences come from that best path itself. It takes numpy arrays too (an ONNX Runtime
  model's output) and then needs no torch.
- `BeamSearchDecoder` wraps flashlight-text's CTC beam search (`torchaudio.models.decoder.ctc_decoder`): without a
  language model it searches label sequences (summing over their CTC paths); with a word n-gram LM (ARPA or KenLM
  binary) it searches words of a lexicon, scored by the acoustics plus `lm_weight` × LM + `word_score` a word.
  Word times come from a CTC forced alignment of the hypothesis (`align_words`). It runs on torch tensors (numpy
  arrays are turned into tensors), so it imports torch and torchaudio when built.

`make_decoder(recognizer, ...)` holds the choice between them: greedy, unless beam search or an LM is asked for.

How tokens make words: the character tokenizer writes `|` between words; the BPE tokenizer starts every word with a
piece that begins with sentencepiece's `▁`. A word's text is the tokenizer's decoding of its tokens.

A word's confidence is the smallest, over its tokens, of each token's peak posterior (the largest probability the
decoded path gives the token over the frames it spans): CTC posteriors are spiky, so a token's peak says how sure the
model was of it, and a word is only as reliable as its least certain token.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from asr.errors import AsrError, ConfigError, ManifestError, ModelFileError
from asr.lm import SENTENCE_END, SENTENCE_START, UNKNOWN_WORD, is_kenlm_binary, read_arpa_unigrams
from asr.text import WORD_DELIMITER, WORD_START

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TOKENIZER_KINDS = ("char", "bpe")
# The log-probability that stands for "impossible" in the frame appended for flashlight (see BeamSearchDecoder):
# finite, because flashlight sums and compares scores.
_IMPOSSIBLE = -1.0e4


@dataclass
class Word:
    """A decoded word: its text, start and end in seconds from the start of the audio, and a confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Hypothesis:
    """A decoded utterance: its text (words separated by single spaces), token ids, words, and the decoder's score
    (the log-probability of the greedy path; flashlight's acoustic + weighted LM score; None when not scored)."""

    text: str
    tokens: list[int]
    words: list[Word]
    score: float | None = None


class _TokenSpan(NamedTuple):
    token: int
    first_frame: int
    last_frame: int
    confidence: float  # the token's peak posterior over its frames


def _check_tokenizer(tokenizer) -> None:
    if tokenizer.kind not in TOKENIZER_KINDS:
        raise ConfigError(f"cannot decode for a {tokenizer.kind!r} tokenizer; "
                          f"known kinds: {', '.join(TOKENIZER_KINDS)}")
    if tokenizer.blank_id != 0:
        raise ConfigError(f"the CTC blank must be token 0, the tokenizer has it at {tokenizer.blank_id}")


def _token_spans(frame_labels: Sequence[int], frame_posteriors: Sequence[float], blank_id: int) -> list[_TokenSpan]:
    """A CTC path (one label a frame) → its tokens: each run of one non-blank label is one token."""
    spans = []
    frame = 0
    for label, run in itertools.groupby(frame_labels):
        length = len(list(run))
        if label != blank_id:
            spans.append(_TokenSpan(label, frame, frame + length - 1, max(frame_posteriors[frame:frame + length])))
        frame += length
    return spans


def _words(spans: Iterable[_TokenSpan], tokenizer, frame_shift: float,
           word_span: Sequence[float] | None = None) -> list[Word]:
    """Group token spans into words (at `|` for characters, at `▁` for word pieces) with times and confidences.

    A word's time is that of the frames where its tokens fire. With `word_span` (onset, end), seconds measured from
    a word's first firing frame to where its speech starts and ends (a model's own latency, as
    recipes/digits/local/judge.py --calibrate measures it), the word spans [first frame + onset, last frame + end]
    instead, never before 0 nor past the next word's start."""
    groups: list[list[_TokenSpan]] = []
    starts_word = True
    for span in spans:
        piece = tokenizer.tokens[span.token]
        if tokenizer.kind == "char" and piece == WORD_DELIMITER:
            starts_word = True
            continue
        if starts_word or (tokenizer.kind == "bpe" and piece.startswith(WORD_START)):
            groups.append([])
            starts_word = False
        groups[-1].append(span)
    words = []
    for group in groups:
        text = tokenizer.decode([span.token for span in group]).strip()
        if not text:  # a lone "▁" piece spells nothing
            continue
        start, end = group[0].first_frame * frame_shift, (group[-1].last_frame + 1) * frame_shift
        if word_span is not None:
            start, end = max(0.0, start + word_span[0]), max(0.0, group[-1].last_frame * frame_shift + word_span[1])
        words.append(Word(text, round(start, 3), round(end, 3), min(span.confidence for span in group)))
    if word_span is not None:  # one voice says one word at a time: a span ends where the next begins
        for word, following in zip(words, words[1:]):
            word.end = max(word.start, min(word.end, following.start))
    return words


def _hypothesis(tokens: list[int], words: list[Word], score: float | None) -> Hypothesis:
    return Hypothesis(" ".join(word.word for word in words), tokens, words, score)


class GreedyDecoder:
    """Best-path decoding: the most probable token of each frame, repeats merged, blanks dropped."""

    def __init__(self, tokenizer, frame_shift: float = 0.04, word_span: Sequence[float] | None = None):
        """`word_span`: see `_words`; a model file holds its own under metadata["word_span"]."""
        _check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.frame_shift = frame_shift
        self.word_span = word_span

    def decode(self, log_probs: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> list[Hypothesis]:
        """(B, T, V) log-probabilities and (B,) lengths, tensors or numpy arrays → one Hypothesis an utterance, its
        score the path's log-probability. The argmax of a tensor runs on its device; only each frame's best label and
        its log-probability travel to the CPU."""
        best_log_probs, best_labels = _best_path(log_probs)
        hypotheses = []
        for utterance, length in enumerate(lengths.tolist()):
            path_log_probs = best_log_probs[utterance, :length]
            spans = _token_spans(best_labels[utterance, :length].tolist(), np.exp(path_log_probs).tolist(),
                                 self.tokenizer.blank_id)
            hypotheses.append(_hypothesis([span.token for span in spans],
                                          _words(spans, self.tokenizer, self.frame_shift, self.word_span),
                                          float(path_log_probs.sum())))
        return hypotheses


def _best_path(log_probs: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's largest log-probability (float32) and its label, (B, T) numpy arrays each."""
    if isinstance(log_probs, np.ndarray):
        best_labels = log_probs.argmax(axis=-1)
        best = np.take_along_axis(log_probs, best_labels[..., None], axis=-1)[..., 0]
        return best.astype(np.float32, copy=False), best_labels
    best, best_labels = log_probs.detach().max(dim=-1)  # a tensor: torch is loaded already, as it made one
    return best.float().cpu().numpy(), best_labels.cpu().numpy()


def _as_cpu_tensor(log_probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Log-probabilities as a float32 CPU tensor without gradient: what forced alignment and flashlight take."""
    import torch

    if isinstance(log_probs, np.ndarray):
        return torch.from_numpy(np.asarray(log_probs, dtype=np.float32))
    return log_probs.detach().float().cpu()


def align_words(log_probs: torch.Tensor, token_ids: Sequence[int], tokenizer, frame_shift: float = 0.04) -> list[Word]:
    """Words of a token sequence, with times and confidences from its CTC forced alignment to `(T, V)` log-probs.

    The alignment (torchaudio.functional.forced_align, on the tensor's device) is the most probable CTC path that
    spells exactly `token_ids`; a word spans its tokens' frames and its confidence is taken from the posteriors that
    path gives them. Raises ValueError when the tokens cannot fit in T frames (a repeated token needs a blank between).
    """
    import torch
    import torchaudio

    token_ids = [int(token) for token in token_ids]
    if not token_ids:
        return []
    repeats = sum(previous == token for previous, token in zip(token_ids, token_ids[1:]))
    if len(token_ids) + repeats > log_probs.shape[0]:
        raise ValueError(f"{len(token_ids)} tokens ({repeats} repeated) cannot be aligned to "
                         f"{log_probs.shape[0]} frames")
    targets = torch.tensor([token_ids], dtype=torch.int32, device=log_probs.device)
    labels, label_log_probs = torchaudio.functional.forced_align(
        log_probs.detach().float().unsqueeze(0), targets, blank=tokenizer.blank_id)
    spans = _token_spans(labels[0].tolist(), label_log_probs[0].exp().tolist(), tokenizer.blank_id)
    return _words(spans, tokenizer, frame_shift)


def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


def prefix_beam_search(log_probs: torch.Tensor, beam_size: int = 50, blank_id: int = 0) -> list[int]:
    """The most probable CTC label sequence of `(T, V)` log-probs, by prefix beam search (Hannun et al. 2014).

    Plain Python, for when flashlight-text is not installed. Each prefix keeps two log-probabilities, of the paths
    that spell it and end in a blank or in its last label, because only the first may be extended by a repeat of that
    label; after each frame the `beam_size` most probable prefixes survive.
    """
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix → (ends in blank, in label)
    for frame in _as_cpu_tensor(log_probs).tolist():
        extended = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (blank_end, label_end) in beams.items():
            total = _log_add(blank_end, label_end)
            same = extended[prefix]
            same[0] = _log_add(same[0], total + frame[blank_id])
            for token, token_log_prob in enumerate(frame):
                if token == blank_id:
                    continue
                longer = extended[prefix + (token,)]
                if prefix and token == prefix[-1]:
                    same[1] = _log_add(same[1], label_end + token_log_prob)  # the label goes on: no new token
                    longer[1] = _log_add(longer[1], blank_end + token_log_prob)  # a blank came between: a new one
                else:
                    longer[1] = _log_add(longer[1], total + token_log_prob)
        ranked = sorted(extended.items(), key=lambda item: _log_add(*item[1]), reverse=True)
        beams = {prefix: tuple(scores) for prefix, scores in ranked[:beam_size]}
    best = max(beams, key=lambda prefix: _log_add(*beams[prefix]))
    return list(best)


def spell_word(word: str, tokenizer) -> list[str] | None:
    """The tokens that spell `word` in a flashlight lexicon, or None when the tokenizer cannot spell it exactly.

    Character spellings end with `|`: flashlight's lexicon decoder ends a word on its spelling's last token, and a
    word ends where the model writes `|`. Word-piece spellings need no end mark (the next word's `▁` is the boundary).
    """
    try:
        token_ids = tokenizer.encode(word)
    except AsrError:  # characters outside the tokenizer's alphabet
        return None
    if not token_ids or tokenizer.decode(token_ids) != word:
        return None
    pieces = [tokenizer.tokens[token] for token in token_ids]
    return pieces + [WORD_DELIMITER] if tokenizer.kind == "char" else pieces


def write_lexicon(words: Iterable[str], tokenizer, path: str | Path) -> int:
    """Write a flashlight lexicon (`WORD<TAB>t1 t2 ...` a line) of the words the tokenizer can spell; returns how
    many it wrote. <s>, </s> and <unk> are left out; so is a word the tokenizer cannot spell (logged)."""
    written, unspellable = 0, []
    with open(path, "w", encoding="utf-8") as lexicon:
        for word in words:
            if word in (SENTENCE_START, SENTENCE_END, UNKNOWN_WORD):
                continue
            spelling = spell_word(word, tokenizer)
            if spelling is None:
                unspellable.append(word)
                continue
            lexicon.write(f"{word}\t{' '.join(spelling)}\n")
            written += 1
    if unspellable:
        log.warning("%d words cannot be spelled with the %s tokenizer and are left out of the lexicon, e.g. %s",
                    len(unspellable), tokenizer.kind, ", ".join(unspellable[:5]))
    return written


def _check_lexicon(path: Path, tokens: Sequence[str]) -> None:
    """Raise ManifestError naming the line of a lexicon that flashlight could not use."""
    known = set(tokens)
    try:
        with open(path, encoding="utf-8") as lexicon:
            for line_number, line in enumerate(lexicon, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise ManifestError(path, line_number, f"word {fields[0]!r} has no spelling")
                unknown = [token for token in fields[1:] if token not in known]
                if unknown:
                    raise ManifestError(path, line_number, f"tokens {unknown} are not in the tokenizer")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(path, None, f"cannot read the lexicon: {error}") from error


def _flashlight_ctc_decoder():
    """torchaudio's flashlight-text decoder factory, or None when flashlight-text is not installed."""
    try:
        from torchaudio.models.decoder import ctc_decoder
    except RuntimeError:  # torchaudio's way of saying that flashlight-text cannot be imported
        return None
    return ctc_decoder


def _cuda_ctc_decoder():
    """torchaudio's CUDA CTC prefix beam search factory, or None where this torchaudio build lacks it."""
    try:
        from torchaudio.models.decoder import cuda_ctc_decoder
    except (ImportError, RuntimeError, OSError):
        return None
    return cuda_ctc_decoder


class WordLM:
    """A word n-gram LM loaded once with the lexicon it is searched over: what every beam search with that LM
    shares, whatever its LM weight, word score and beam. Loading a big ARPA file (the 4 GB LibriSpeech 4-gram) takes
    minutes and spelling a 200k-word lexicon a good while; tuning the weights on a grid builds one `WordLM` and a
    `BeamSearchDecoder(tokenizer, lm=word_lm, ...)` a point, each built from it in a pass over the lexicon.

    `lm` is an ARPA file or KenLM binary, or None for a lexicon without an LM. Without `lexicon`, the lexicon is
    every LM unigram the tokenizer can spell (an ARPA file is needed for that: a KenLM binary does not list its words).
    """

    def __init__(self, tokenizer, lm: str | Path | None = None, lexicon: str | Path | None = None):
        if _flashlight_ctc_decoder() is None:
            raise ConfigError("decoding with a language model or lexicon needs flashlight-text: "
                              "pip install flashlight-text")
        from flashlight.lib.text.dictionary import create_word_dict, load_words

        _check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.lm_path = None if lm is None else Path(lm)
        if self.lm_path is not None and not self.lm_path.is_file():
            raise ModelFileError(f"{lm}: language model file not found")
        # The spelled lexicon lives as long as this object: flashlight reads it from a file at every decoder built.
        self._folder = tempfile.TemporaryDirectory(prefix="asr-lexicon-")
        if lexicon is None:
            if self.lm_path is None:
                raise ConfigError("a WordLM needs an LM, a lexicon or both")
            if is_kenlm_binary(self.lm_path):
                raise ConfigError(f"{lm}: a KenLM binary does not list its words; give a lexicon too")
            lexicon = Path(self._folder.name) / "lexicon.txt"
            if write_lexicon(read_arpa_unigrams(self.lm_path), tokenizer, lexicon) == 0:
                raise ConfigError(f"{lm}: the {tokenizer.kind} tokenizer can spell none of its words")
        self.lexicon_path = Path(lexicon)
        if not self.lexicon_path.is_file():
            raise ManifestError(self.lexicon_path, None, "lexicon file not found")
        _check_lexicon(self.lexicon_path, tokenizer.tokens)
        self.kenlm = None  # no LM: torchaudio's ctc_decoder puts in flashlight's zero LM
        if self.lm_path is not None:
            from flashlight.lib.text.decoder import kenlm

            # The word indices of the LM are those torchaudio's ctc_decoder gives the lexicon's words.
            word_dict = create_word_dict(load_words(str(self.lexicon_path)))
            try:
                self.kenlm = kenlm.KenLM(str(self.lm_path), word_dict)
            except RuntimeError as error:  # KenLM's complaint about a file it cannot parse
                raise ModelFileError(f"{lm}: cannot load the language model: {error}") from error
            self._word_dict = word_dict  # the LM refers to it


class BeamSearchDecoder:
    """CTC beam search, with or without a word n-gram language model (flashlight-text through torchaudio).

    - No `lm` and no `lexicon`: lexicon-free search over label sequences. On CUDA log-probs it runs torchaudio's
      CUDA prefix beam search where that is built (it skips frames whose blank probability exceeds 0.95); without
      flashlight-text, `prefix_beam_search` (plain Python, one hypothesis an utterance, no score).
    - `lm` (an ARPA file or KenLM binary): words of the lexicon, scored by acoustics + `lm_weight` × LM log10
      probability + `word_score` a word. Without `lexicon`, the lexicon is every LM unigram the tokenizer can spell
      (an ARPA file is needed for that: a KenLM binary does not list its words). `lm` may also be a `WordLM`,
      loaded once and shared by decoders of other weights (it holds its lexicon: then give no `lexicon`).
    - `lexicon` without `lm`: words of the lexicon, no LM.

    `beam_threshold` drops hypotheses that score that much below the best; `nbest` is how many `decode_nbest` keeps.

    Flashlight needs a silence token. For characters it is `|`; a lexicon word's spelling ends with it, and as our
    transcripts have no `|` after the last word (wav2letter trains with `--surround=|`), one frame in which `|` is
    certain is appended to each utterance so that its last word can end. Word pieces have no silence unit, the `▁`
    of each word's first piece being the boundary, so the blank stands in for it. Without a lexicon the blank is
    the silence token for both: flashlight treats a silence label at the first frame as free, which plain CTC does
    not.
    """

    def __init__(self, tokenizer, beam_size: int = 50, lm: str | Path | WordLM | None = None,
                 lexicon: str | Path | None = None, lm_weight: float = 2.0, word_score: float = 0.0,
                 beam_threshold: float = 25.0, frame_shift: float = 0.04, nbest: int = 1):
        import torch  # here, not at the top: greedy decoding of an ONNX model's output never loads it

        _check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.beam_size = beam_size
        self.frame_shift = frame_shift
        self.nbest = nbest
        self.uses_lexicon = lm is not None or lexicon is not None
        self._delimiter_frame = None
        if self.uses_lexicon and tokenizer.kind == "char":
            self._delimiter_frame = torch.full((1, len(tokenizer.tokens)), _IMPOSSIBLE)
            self._delimiter_frame[0, tokenizer.tokens.index(WORD_DELIMITER)] = 0.0
        ctc_decoder = _flashlight_ctc_decoder()
        if ctc_decoder is None:
            if self.uses_lexicon:
                raise ConfigError("decoding with a language model or lexicon needs flashlight-text: "
                                  "pip install flashlight-text")
            self._flashlight = None
        else:
            self._flashlight = self._build_flashlight(ctc_decoder, lm, lexicon, lm_weight, word_score, beam_threshold)

    def _build_flashlight(self, ctc_decoder, lm, lexicon, lm_weight, word_score, beam_threshold):
        blank = self.tokenizer.tokens[self.tokenizer.blank_id]
        # log_add: merged hypotheses add their probabilities, so the search is over label sequences, not paths.
        options = dict(tokens=list(self.tokenizer.tokens), nbest=self.nbest, beam_size=self.beam_size,
                       beam_threshold=beam_threshold, log_add=True, blank_token=blank)
        if not self.uses_lexicon:
            return ctc_decoder(lexicon=None, sil_token=blank, **options)
        silence = WORD_DELIMITER if self.tokenizer.kind == "char" else blank
        if not isinstance(lm, WordLM):
            lm = WordLM(self.tokenizer, lm, lexicon)
        elif lexicon is not None:
            raise ConfigError("a loaded WordLM holds its lexicon already; give no other")
        elif lm.tokenizer is not self.tokenizer and list(lm.tokenizer.tokens) != list(self.tokenizer.tokens):
            raise ConfigError("the WordLM was spelled with another tokenizer")
        self.word_lm = lm
        # Building the search from the loaded LM costs a pass over the lexicon (its trie), not a parse of the LM.
        return ctc_decoder(lexicon=str(lm.lexicon_path), lm=lm.kenlm, lm_weight=lm_weight, word_score=word_score,
                           sil_token=silence, **options)

    def decode(self, log_probs: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> list[Hypothesis]:
        """(B, T, V) log-probabilities and (B,) lengths → the best Hypothesis of each utterance."""
        return [hypotheses[0] for hypotheses in self.decode_nbest(log_probs, lengths)]

    def decode_nbest(self, log_probs: torch.Tensor | np.ndarray,
                     lengths: torch.Tensor | np.ndarray) -> list[list[Hypothesis]]:
        """(B, T, V) log-probabilities and (B,) lengths (tensors, or numpy arrays) → up to `nbest` hypotheses an
        utterance, best first."""
        import torch

        with torch.no_grad():
            if getattr(log_probs, "is_cuda", False) and not self.uses_lexicon and self._cuda_decoder is not None:
                return self._decode_cuda(log_probs, lengths)
            emissions = _as_cpu_tensor(log_probs)
            return [self._decode_utterance(emissions[utterance, :length])
                    for utterance, length in enumerate(lengths.tolist())]

    def _decode_utterance(self, emissions: torch.Tensor) -> list[Hypothesis]:
        import torch

        if self._flashlight is None:
            tokens = prefix_beam_search(emissions, self.beam_size, self.tokenizer.blank_id)
            return [self._hypothesis(emissions, tokens, None)]
        frames = emissions.shape[0]
        searched = emissions if self._delimiter_frame is None else torch.cat([emissions, self._delimiter_frame])
        hypotheses = []
        for result in self._flashlight(searched.unsqueeze(0).contiguous())[0]:
            # Flashlight's path has a silence step before the first frame (timestep 0) and after the last;
            # keep the tokens that begin on a real frame (timesteps 1..T), not on those or the appended one.
            tokens = [token for token, step in zip(result.tokens.tolist(), result.timesteps.tolist())
                      if 1 <= step <= frames]
            hypotheses.append(self._hypothesis(emissions, tokens, result.score))
        return hypotheses

    @functools.cached_property
    def _cuda_decoder(self):
        """torchaudio's CUDA prefix beam search, built at the first CUDA batch; None where it is not built."""
        factory = _cuda_ctc_decoder()
        return factory(list(self.tokenizer.tokens), nbest=self.nbest, beam_size=self.beam_size) if factory else None

    def _decode_cuda(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        import torch

        emissions = log_probs.detach().float().contiguous()
        results = self._cuda_decoder(emissions, lengths.to(device=emissions.device, dtype=torch.int32).contiguous())
        return [[self._hypothesis(emissions[utterance, :length], [int(token) for token in result.tokens],
                                  float(result.score)) for result in nbest]
                for utterance, (nbest, length) in enumerate(zip(results, lengths.tolist()))]

    def _hypothesis(self, emissions: torch.Tensor, tokens: list[int], score: float | None) -> Hypothesis:
        return _hypothesis(tokens, align_words(emissions, tokens, self.tokenizer, self.frame_shift), score)


def make_decoder(recognizer, kind: str | None = None, lm: str | Path | None = None, lexicon: str | Path | None = None,
                 **beam_options) -> GreedyDecoder | BeamSearchDecoder:
    """The decoder of a recognizer's output (asr.backend.SpeechRecognizer): greedy, with the model file's calibrated
    word spans if it has them, unless `kind` is "beam" or an `lm` or `lexicon` is given; then beam search with
    `beam_options` (beam_size, beam_threshold, lm_weight, word_score; None or absent: its defaults).

    Beam search runs on torch tensors (flashlight through torchaudio, forced alignment for word times): with an ONNX
    model it works too, and imports torch; greedy decoding does not."""
    if kind not in (None, "greedy", "beam"):
        raise ConfigError(f"unknown decoder {kind!r}: greedy or beam")
    if kind == "greedy" and (lm or lexicon):
        raise AsrError("--lm and --lexicon need the beam-search decoder (--decoder beam)")
    if kind == "greedy" or (kind is None and not (lm or lexicon)):
        return GreedyDecoder(recognizer.tokenizer, frame_shift=recognizer.frame_shift, word_span=recognizer.word_span)
    given = {name: value for name, value in dict(beam_options, lm=lm, lexicon=lexicon).items() if value is not None}
    return BeamSearchDecoder(recognizer.tokenizer, frame_shift=recognizer.frame_shift, **given)
