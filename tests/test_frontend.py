"""asr.frontend: the chain of LogMel, normalization and augmentation, against each part alone."""
import pytest
import torch
from reference_features import pad

from asr.errors import ConfigError
from asr.features import FeatureConfig, LogMel
from asr.frontend import Frontend
from asr.normalization import GlobalCMVN, utterance_cmvn
from asr.specaugment import SpecAugment, SpecAugmentConfig


def test_frontend_with_global_normalization_needs_statistics():
    with pytest.raises(ConfigError, match="asr cmvn --manifest"):
        Frontend(FeatureConfig(normalization="global"))


def test_frontend_refuses_statistics_of_another_size():
    stats = {"mean": [0.0] * 40, "std": [1.0] * 40}
    with pytest.raises(ConfigError, match="40 channels but features.n_mels is 80"):
        Frontend(FeatureConfig(), cmvn_stats=stats)


def test_frontend_state_dict_has_the_same_shape_whatever_the_normalization():
    stats = {"mean": [1.0] * 80, "std": [2.0] * 80}
    shapes = [
        {name: tuple(tensor.shape) for name, tensor in Frontend(cfg, cmvn_stats=cmvn).state_dict().items()}
        for cfg, cmvn in [(FeatureConfig(), stats), (FeatureConfig(normalization="utterance"), None),
                          (FeatureConfig(normalization="none"), None)]
    ]
    assert shapes[0] == shapes[1] == shapes[2] == {"cmvn.mean": (80,), "cmvn.std": (80,)}


@pytest.mark.parametrize("normalization", ["global", "utterance", "none"])
def test_frontend_chains_log_mel_and_the_chosen_normalization(sentence_waves, normalization):
    cfg = FeatureConfig(normalization=normalization)
    stats = {"mean": torch.linspace(-10, 0, 80).tolist(), "std": torch.linspace(1, 4, 80).tolist()}
    frontend = Frontend(cfg, cmvn_stats=stats).eval()
    audio, lengths = pad(sentence_waves[:2])
    feats, feat_lengths = frontend(audio, lengths)
    log_mel, _ = LogMel(cfg)(audio, lengths)
    expected = {
        "global": GlobalCMVN(stats["mean"], stats["std"])(log_mel, feat_lengths),
        "utterance": utterance_cmvn(log_mel, feat_lengths),
        "none": log_mel,
    }[normalization]
    torch.testing.assert_close(feats, expected)


def test_frontend_normalizes_by_the_speaker_statistics_it_is_given_else_by_the_training_sets(sentence_waves):
    cfg = FeatureConfig(normalization="speaker")
    training_set = {"mean": torch.linspace(-10, 0, 80).tolist(), "std": torch.linspace(1, 4, 80).tolist()}
    frontend = Frontend(cfg, cmvn_stats=training_set).eval()
    audio, lengths = pad(sentence_waves[:2])
    log_mel, feat_lengths = LogMel(cfg)(audio, lengths)
    rows = torch.tensor([[[-8.0] * 80, [2.0] * 80], [[-7.0] * 80, [3.0] * 80]])
    feats, _ = frontend(audio, lengths, rows)
    for index, length in enumerate(feat_lengths.tolist()):
        expected = (log_mel[index, :length] - (-8.0 + index)) / (2.0 + index)
        torch.testing.assert_close(feats[index, :length], expected)
        assert (feats[index, length:] == 0).all()
    # Without them: the training set's statistics, their mean moved to the utterance's own level in every band.
    fallback, _ = frontend(audio, lengths)
    mean, std = torch.tensor(training_set["mean"]), torch.tensor(training_set["std"])
    for index, length in enumerate(feat_lengths.tolist()):
        valid = log_mel[index, :length]
        torch.testing.assert_close(fallback[index, :length], (valid - (mean - mean.mean() + valid.mean())) / std)
        assert (fallback[index, length:] == 0).all()
    # ... which makes it deaf to the recording's gain: every log-mel band moves by log(gain²) (noise keeps them all
    # above the log floor, which does not move).
    noisy = audio + 1e-3 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frontend(0.1 * noisy, lengths)[0], frontend(noisy, lengths)[0], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="normalization is 'utterance'"):
        Frontend(FeatureConfig(normalization="utterance"))(audio, lengths, rows)
    with pytest.raises(ConfigError, match="normalization is 'speaker' but no CMVN statistics"):
        Frontend(cfg)


def test_frontend_draws_vtlp_factors_only_in_training_and_within_bounds(sentence_waves):
    specaug = SpecAugmentConfig(vtlp_max_warp=0.1, freq_masks=0, time_masks=0)
    frontend = Frontend(FeatureConfig(normalization="none"), specaug=specaug)
    audio, lengths = pad(sentence_waves[:3])
    clean, _ = frontend.eval()(audio, lengths)
    assert frontend.specaug.draw_warp_factors(3, "cpu") is None
    torch.manual_seed(0)
    factors = frontend.train().specaug.draw_warp_factors(1000, "cpu")
    assert factors.min() >= 0.9 and factors.max() <= 1.1 and factors.std() > 0.05
    torch.manual_seed(0)
    warped, _ = frontend(audio, lengths)
    torch.manual_seed(0)
    expected, _ = frontend.logmel(audio, lengths, frontend.specaug.draw_warp_factors(3, "cpu"))
    torch.testing.assert_close(warped, expected)
    assert not torch.allclose(warped, clean)
    assert SpecAugment(SpecAugmentConfig(vtlp_max_warp=0.1, enabled=False)).train().draw_warp_factors(3, "cpu") is None


def test_frontend_augments_only_in_training(sentence_waves):
    frontend = Frontend(FeatureConfig(normalization="utterance"), specaug=SpecAugmentConfig())
    audio, lengths = pad(sentence_waves[:2])
    clean, _ = frontend.eval()(audio, lengths)
    torch.manual_seed(0)
    augmented, _ = frontend.train()(audio, lengths)
    masked = (augmented == 0) & (clean != 0)
    assert masked.any()
    assert torch.equal(augmented[~masked], clean[~masked])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_frontend_on_cuda_matches_cpu(sentence_waves):
    frontend = Frontend(FeatureConfig(normalization="utterance"), specaug=SpecAugmentConfig())
    audio, lengths = pad(sentence_waves)
    on_cpu, cpu_lengths = frontend.eval()(audio, lengths)
    frontend.cuda()
    on_gpu, gpu_lengths = frontend(audio.cuda(), lengths.cuda())
    assert on_gpu.device.type == "cuda" and torch.equal(gpu_lengths.cpu(), cpu_lengths)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-3)
    augmented, _ = frontend.train()(audio.cuda(), lengths.cuda())
    assert augmented.device.type == "cuda" and (augmented == 0).sum() > (on_gpu == 0).sum()
