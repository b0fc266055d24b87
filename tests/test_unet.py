"""The 3D UNet: shapes, no per-sample normalisation, no global residual, translation
equivariance for shifts by its divisor, anisotropic pooling plans."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volden.unet import UNet3D, UNetConfig, plan_pools, receptive_radius

from conftest import tiny_config


def _network(config: UNetConfig, seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(config).eval()


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),  # pools z once
        tiny_config(voxel_size=(2.0, 0.5, 0.5)),  # never pools z
        UNetConfig(depth=0, width=4, pools=()),
        UNetConfig(depth=3, width=2, pools=((1, 2, 2), (2, 2, 2), (2, 2, 2)), convs_per_level=1),
    ],
)
def test_output_shape_equals_input_shape(config):
    network = _network(config)
    d = config.divisor
    for multiples in [(1, 1, 1), (3, 2, 1), (2, 3, 5)]:
        shape = tuple(m * v for m, v in zip(multiples, (max(v, 4) for v in d)))
        with torch.no_grad():
            out = network(torch.randn(2, 1, *shape))
        assert out.shape == (2, 1, *shape)


def test_divisor_is_product_of_pools():
    config = UNetConfig(depth=3, width=4, pools=((1, 2, 2), (2, 2, 2), (1, 1, 2)))
    assert config.divisor == (2, 4, 8)


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError):
        UNetConfig(depth=2, width=4, pools=((1, 2, 2),))
    with pytest.raises(ValueError):
        UNetConfig(depth=1, width=0, pools=((1, 2, 2),))
    config = UNetConfig(depth=2, width=8, pools=((1, 2, 2), (2, 2, 2)), convs_per_level=3)
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_no_per_sample_normalisation_layers():
    banned = (nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
    for config in [tiny_config(), UNetConfig()]:
        network = UNet3D(config)
        assert not [m for m in network.modules() if isinstance(m, banned)]


def test_no_global_residual():
    """With every weight and bias zero the output is zero, whatever the input: the network adds
    no copy of its input to the output (a global skip would return the input here)."""
    network = _network(tiny_config())
    with torch.no_grad():
        for p in network.parameters():
            p.zero_()
        x = torch.randn(1, 1, 16, 32, 32) * 10
        assert torch.count_nonzero(network(x)) == 0


def test_output_does_not_depend_on_other_samples_of_the_batch():
    """Per-sample statistics (or BatchNorm in train mode) would couple the samples of a batch."""
    network = _network(tiny_config())
    a, b = torch.randn(1, 1, 16, 32, 32), torch.randn(1, 1, 16, 32, 32) * 5 + 3
    with torch.no_grad():
        together = network(torch.cat([a, b]))
        alone = network(a)
    assert torch.allclose(together[:1], alone, atol=1e-5)


@pytest.mark.parametrize("voxel_size", [None, (2.0, 0.5, 0.5)])
def test_translation_equivariant_in_the_interior(voxel_size):
    """Shifting the input by a multiple of the divisor shifts the output, away from the edges:
    what makes overlapping tiles agree."""
    config = tiny_config(patch=(16, 32, 32), voxel_size=voxel_size)
    network = _network(config)
    d = config.divisor
    shift = (d[0], 2 * d[1], d[2])
    size = (40, 64, 64)
    generator = torch.Generator().manual_seed(1)
    big = torch.randn((1, 1, *(s + t for s, t in zip(size, shift))), generator=generator)
    a = big[..., : size[0], : size[1], : size[2]]
    b = big[..., shift[0] :, shift[1] :, shift[2] :]
    with torch.no_grad():
        out_a, out_b = network(a)[0, 0], network(b)[0, 0]
    r = receptive_radius(config)
    # out_b[p] corresponds to out_a[p + shift]; compare where both are >= r from every edge
    inner_a = tuple(slice(t + rr, s - rr) for t, rr, s in zip(shift, r, size))
    inner_b = tuple(slice(rr, s - rr - t) for t, rr, s in zip(shift, r, size))
    assert all(sl.stop - sl.start > 0 for sl in inner_a)
    assert torch.allclose(out_a[inner_a], out_b[inner_b], atol=1e-5)
    # near the edges the two differ (zero padding): the comparison above is not vacuous
    overlap_a = out_a[shift[0] :, shift[1] :, shift[2] :]
    overlap_b = out_b[: size[0] - shift[0], : size[1] - shift[1], : size[2] - shift[2]]
    assert not torch.allclose(overlap_a, overlap_b, atol=1e-3)


def test_receptive_radius_bounds_the_reach_of_a_voxel():
    config = tiny_config()
    network = _network(config)
    size = (40, 64, 64)
    x = torch.randn(1, 1, *size)
    r = receptive_radius(config)
    with torch.no_grad():
        base = network(x)
        for centre in [(20, 32, 32), (21, 33, 35)]:
            y = x.clone()
            y[(0, 0, *centre)] += 100.0
            changed = torch.nonzero((network(y) - base)[0, 0].abs() > 1e-5)
            assert len(changed) > 0
            reach = (changed - torch.tensor(centre)).abs().max(0).values.tolist()
            assert all(0 < got <= bound for got, bound in zip(reach, r)), (reach, r)


def test_plan_pools_isotropic_pools_every_axis():
    assert plan_pools((32, 64, 64), 2) == ((2, 2, 2), (2, 2, 2))


@pytest.mark.parametrize(
    "voxel_size, depth, expected",
    [
        # z 4x coarser: lateral pooling only until y and x have caught up
        ((2.0, 0.5, 0.5), 3, ((1, 2, 2), (1, 2, 2), (2, 2, 2))),
        # z exactly 2x coarser counts as coarse
        ((1.0, 0.5, 0.5), 2, ((1, 2, 2), (2, 2, 2))),
        ((5.0, 1.0, 1.0), 2, ((1, 2, 2), (1, 2, 2))),
        # z 1.5x coarser is pooled with y and x, and stays 1.5x coarser
        ((1.5, 1.0, 1.0), 2, ((2, 2, 2), (2, 2, 2))),
    ],
)
def test_plan_pools_does_not_pool_coarse_z(voxel_size, depth, expected):
    """z is not pooled while its voxels are >= 2x the lateral ones."""
    assert plan_pools((64, 64, 64), depth, voxel_size) == expected


def test_plan_pools_does_not_pool_short_z():
    assert [p[0] for p in plan_pools((8, 64, 64), 2)] == [1, 1]
    assert plan_pools((16, 32, 32), 2) == ((2, 2, 2), (1, 2, 2))
    assert plan_pools((16, 16, 16), 2) == ((2, 2, 2), (1, 1, 1))
