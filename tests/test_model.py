import itertools

import pytest
import torch
from torch.nn import functional as F

from model import SegNet, SegNetConfig, count_parameters

VARIANTS = list(itertools.product((2, 3, 4, 5), (3, 5), (8, 16)))  # depth, kernel, base width


@pytest.mark.parametrize("depth,kernel,width", VARIANTS)
def test_forward_backward_every_variant(depth, kernel, width):
    torch.manual_seed(0)
    model = SegNet(depth=depth, base_width=width, max_width=64, convs_per_stage=(2,) * depth, kernel_size=kernel)
    x = torch.randn(2, 1, 96, 96)
    logits = model(x)
    assert logits.shape == (2, 4, 96, 96)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, torch.randint(0, 4, (2, 96, 96)))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_vgg16_shape_matches_the_original_segnet():
    cfg = SegNetConfig(depth=5, base_width=64, convs_per_stage=(2, 2, 3, 3, 3), kernel_size=3)
    assert cfg.widths == (64, 128, 256, 512, 512)
    n = count_parameters(SegNet.from_config(cfg))
    assert 29.3e6 < n < 29.7e6  # SegNet-VGG16 with BatchNorm: about 29.5 M


def test_width_cap_and_config_round_trip():
    cfg = SegNetConfig(depth=4, base_width=32, max_width=128, convs_per_stage=(1, 1, 2, 2), dropout=0.2)
    assert cfg.widths == (32, 64, 128, 128)
    assert SegNetConfig.from_dict(cfg.to_dict()) == cfg
    assert SegNet.from_config(cfg).config == cfg


@pytest.mark.parametrize(
    "kwargs",
    [dict(depth=3, convs_per_stage=(2, 2)), dict(depth=2, convs_per_stage=(2, 2), kernel_size=4),
     dict(depth=2, convs_per_stage=(0, 2)), dict(depth=2, convs_per_stage=(1, 1), dropout=1.0)],
)
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        SegNetConfig(**kwargs)


def test_decoder_unpools_at_the_encoder_pooling_indices():
    """The first decoder stage's input is zero except where stage 1's max pooling took its maxima."""
    torch.manual_seed(1)
    model = SegNet(depth=2, base_width=4, convs_per_stage=(1, 1)).eval()
    seen = {}
    model.encoders[0].register_forward_hook(lambda m, i, o: seen.__setitem__("enc", o))
    model.decoders[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("dec_in", i[0]))
    for shift in (0, 1):
        x = torch.roll(torch.randn(1, 1, 32, 32), shifts=shift, dims=-1)
        with torch.no_grad():
            model(x)
        _, indices = F.max_pool2d(seen["enc"], 2, stride=2, return_indices=True)
        at_argmax = torch.zeros_like(seen["enc"]).flatten(2)
        at_argmax.scatter_(2, indices.flatten(2), 1.0)
        at_argmax = at_argmax.view_as(seen["enc"]).bool()
        dec_in = seen["dec_in"]
        assert dec_in.shape == seen["enc"].shape
        assert (dec_in[~at_argmax] == 0).all()  # nothing outside the remembered positions
        assert (dec_in[at_argmax] != 0).any()  # and values at them (ReLU zeroes some)
        # one position per 2x2 window, so it is not an interpolating up-sampling
        per_window = F.avg_pool2d(at_argmax.float(), 2) * 4
        assert (per_window == 1).all()
