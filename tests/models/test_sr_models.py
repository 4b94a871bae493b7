"""SR networks: output shapes for x2/x3/x4, EDSR starts as bicubic, the pixel-shuffle upsampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.sr import EDSR, SRCNN
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import MODELS, build


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("model_type", ["EDSR", "SRCNN"])
def test_output_is_scale_times_the_input_size(model_type, scale):
    model = build(MODELS, Component(model_type, {"scale": scale}))
    lr = torch.rand(2, 3, 7, 9)
    assert model(lr).shape == (2, 3, 7 * scale, 9 * scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_untrained_edsr_with_bicubic_skip_is_exactly_bicubic(scale):
    torch.manual_seed(0)
    model = EDSR(scale=scale, num_features=8, num_blocks=2)
    lr = torch.rand(1, 3, 6, 5)
    assert torch.equal(model(lr), F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False))


def test_edsr_learns_away_from_bicubic_after_one_step():
    torch.manual_seed(0)
    model = EDSR(scale=2, num_features=8, num_blocks=1)
    lr, hr = torch.rand(4, 3, 6, 6), torch.rand(4, 3, 12, 12)
    F.l1_loss(model(lr), hr).backward()
    with torch.no_grad():  # one plain gradient step: the zero tail gets a gradient, so it moves
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    assert not torch.equal(model(lr), F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False))


@pytest.mark.parametrize(("scale", "factors"), [(2, [2]), (3, [3]), (4, [2, 2])])
def test_upsampler_uses_pixel_shuffle_stages(scale, factors):
    model = EDSR(scale=scale, num_features=8, num_blocks=1)
    assert [m.upscale_factor for m in model.upsample if isinstance(m, nn.PixelShuffle)] == factors


def test_bicubic_skip_adds_no_parameters_so_weights_load_either_way():
    with_skip, without = EDSR(num_features=8, num_blocks=2), EDSR(num_features=8, num_blocks=2, bicubic_skip=False)
    without.load_state_dict(with_skip.state_dict())  # strict by default
    lr = torch.rand(1, 3, 5, 5)
    bicubic = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(with_skip(lr), without(lr) + bicubic)


def test_srcnn_has_the_9_1_5_layout():
    kernels = [m.kernel_size for m in SRCNN().body if isinstance(m, nn.Conv2d)]
    assert kernels == [(9, 9), (1, 1), (5, 5)]


@pytest.mark.parametrize("model_type", ["EDSR", "SRCNN"])
def test_a_bad_scale_is_an_input_error_naming_the_key(model_type):
    with pytest.raises(InputError, match=rf"config key model: model {model_type}: scale must be an integer"):
        build(MODELS, Component(model_type, {"scale": 1.5}), key="model")
