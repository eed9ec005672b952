"""A picture of what the model decided on a recording: the features it read, its CTC posteriorgram, and the words.

Three panels share the time axis:
  1. the log-mel frames as the acoustic model reads them (normalized);
  2. the posteriorgram: for the tokens the model was most sure of somewhere, their probability at each output frame
     (one row a token, labelled with it), the blank's in the bottom row: CTC's spikes, and the blank between them;
  3. the waveform with each decoded word's span, coloured by its confidence (red unsure, green sure).

Drawn with matplotlib's Figure directly (the Agg canvas), so it works without a display and touches no global
pyplot state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from asr.audio import SAMPLE_RATE, stream_audio

MAX_SECONDS = 30.0  # longer recordings are drawn up to here: beyond it the words would be too small to read
MAX_TOKENS = 30  # posteriorgram rows besides the blank
MIN_PEAK = 0.05  # a token the model never gave this much probability is left out of the posteriorgram


def plot_transcript(recognizer, audio: str | Path | torch.Tensor, transcript, out_path: str | Path,
                    max_seconds: float = MAX_SECONDS) -> None:
    """Draw the first `max_seconds` of `audio` (a file path or a 16 kHz waveform), the recognizer's features and
    posteriors on it, and `transcript`'s words, into the PNG file `out_path`. The recognizer should be in eval mode."""
    if isinstance(audio, torch.Tensor):
        wave = audio[:round(max_seconds * SAMPLE_RATE)]
    else:
        _, wave = next(stream_audio(audio, max_seconds))  # only the part drawn is read
    features, posteriors = _model_view(recognizer, wave)
    shown_seconds = wave.numel() / SAMPLE_RATE
    feature_shift = recognizer.feature_config.hop_ms / 1000.0

    figure = Figure(figsize=(min(30.0, max(8.0, 0.8 * shown_seconds)), 9.0), layout="constrained")
    feature_axes, posterior_axes, word_axes = figure.subplots(3, 1, sharex=True, height_ratios=[2, 3, 1.5])
    title = Path(transcript.audio).name
    if transcript.duration > shown_seconds + 1e-3:
        title += f" (first {shown_seconds:.0f} s of {transcript.duration:.1f} s)"
    figure.suptitle(title)

    feature_axes.imshow(features.T, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                        extent=(0, len(features) * feature_shift, 0, features.shape[1]))
    feature_axes.set_ylabel("mel channel")
    feature_axes.set_title("log-mel features (normalized)", fontsize=9, loc="left")

    _draw_posteriorgram(posterior_axes, posteriors, recognizer.tokenizer.tokens, recognizer.frame_shift)
    _draw_words(word_axes, wave.numpy(), [w for w in transcript.words if w.start < shown_seconds])
    word_axes.set_xlim(0, shown_seconds)
    word_axes.set_xlabel("time (s)")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=100)


@torch.inference_mode()
def _model_view(recognizer, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The normalized features (T, n_mels) and the posteriors (T', V) the recognizer computes from a waveform."""
    audio = wave.to(recognizer.device)[None]
    lengths = torch.tensor([wave.numel()], device=recognizer.device)
    features, feature_lengths = recognizer.frontend(audio, lengths)
    log_probs, out_lengths = recognizer.acoustic(features, feature_lengths)
    return (features[0, :feature_lengths[0]].float().cpu().numpy(),
            log_probs[0, :out_lengths[0]].float().exp().cpu().numpy())


def _draw_posteriorgram(axes, posteriors: np.ndarray, tokens: list[str], frame_shift: float) -> None:
    peaks = posteriors.max(axis=0)
    peaks[0] = 0.0  # the blank has its own row, at the bottom
    candidates = [token for token in np.argsort(-peaks)[:MAX_TOKENS] if peaks[token] >= MIN_PEAK]
    rows = [0] + sorted(candidates)  # vocabulary order reads like an alphabet for characters
    axes.imshow(posteriors[:, rows].T, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                interpolation="nearest", extent=(0, len(posteriors) * frame_shift, -0.5, len(rows) - 0.5))
    axes.set_yticks(range(len(rows)), [tokens[token] for token in rows], fontsize=8)
    axes.set_ylabel("token")
    axes.set_title("CTC posteriors: probability of each token at each output frame", fontsize=9, loc="left")


def _draw_words(axes, samples: np.ndarray, words) -> None:
    # Downsample to a min/max envelope of ~4000 columns: plotting every sample of 30 s is slow and no sharper.
    step = max(1, len(samples) // 4000)
    usable = samples[:len(samples) // step * step].reshape(-1, step)
    times = np.arange(len(usable)) * step / SAMPLE_RATE
    axes.fill_between(times, usable.min(axis=1), usable.max(axis=1), color="0.6", linewidth=0)
    peak = max(1e-3, float(np.abs(samples).max()))
    axes.set_ylim(-peak, 1.6 * peak)
    confidence_colour = colormaps["RdYlGn"]
    for index, word in enumerate(words):
        axes.axvspan(word.start, word.end, color=confidence_colour(word.confidence), alpha=0.35, linewidth=0)
        # Alternate two label heights, so that the labels of short neighbouring words do not overlap.
        height = 1.45 * peak if index % 2 == 0 else 1.15 * peak
        axes.text((word.start + word.end) / 2, height, word.word, ha="center", va="center", fontsize=8, clip_on=True)
    axes.set_yticks([])
    axes.set_title("words (span coloured by confidence: red 0, green 1) over the waveform", fontsize=9, loc="left")
