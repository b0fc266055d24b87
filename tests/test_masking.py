"""J-partition masking: the fill never reads a masked voxel, the loss sees masked voxels only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from volden.masking import apply_mask, donut_fill, masked_mse, neighbour_fill, phase_mask, random_phase_masks

SHAPE = (9, 12, 15)
GRIDS = [(3, 3, 3), (2, 2, 2), (1, 3, 3)]


def _random_input(seed: int = 0, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, *SHAPE), generator=generator) * 10 + 5


def _masks(grid, batch: int = 3, seed: int = 1, phases: int = 1) -> torch.Tensor:
    return random_phase_masks(batch, SHAPE, grid, generator=torch.Generator().manual_seed(seed), phases=phases)


def test_phase_mask_selects_one_phase_of_the_grid():
    mask = phase_mask(SHAPE, (3, 2, 5), (1, 0, 4))
    assert mask.shape == SHAPE and mask.dtype == torch.bool
    coords = torch.nonzero(mask)
    assert torch.all(coords[:, 0] % 3 == 1)
    assert torch.all(coords[:, 1] % 2 == 0)
    assert torch.all(coords[:, 2] % 5 == 4)
    expected = len(range(1, 9, 3)) * len(range(0, 12, 2)) * len(range(4, 15, 5))
    assert int(mask.sum()) == expected


@pytest.mark.parametrize("grid", GRIDS)
def test_phases_partition_the_volume(grid):
    """Every voxel belongs to exactly one phase."""
    total = torch.zeros(SHAPE, dtype=torch.int64)
    for phase in torch.cartesian_prod(*[torch.arange(g) for g in grid]).reshape(-1, 3).tolist():
        total += phase_mask(SHAPE, grid, tuple(phase)).long()
    assert torch.all(total == 1)


def test_random_phase_masks_shape_and_seed():
    masks = _masks((3, 3, 3), batch=8)
    assert masks.shape == (8, 1, *SHAPE) and masks.dtype == torch.bool
    assert torch.equal(masks, _masks((3, 3, 3), batch=8))
    # each sample is a single phase: masked voxels are 1/27 of a volume whose sides divide by 3
    # (up to edge effects of the 12 and 15 long axes: all sides here are multiples of 3)
    assert torch.all(masks.flatten(1).sum(1) == (9 // 3) * (12 // 3) * (15 // 3))
    phases = {tuple(torch.nonzero(m[0])[0].tolist()) for m in _masks((3, 3, 3), batch=40)}
    assert len(phases) > 5, "phases should vary between samples"


def test_masks_of_several_phases_are_unions_of_distinct_phases():
    masks = random_phase_masks(40, SHAPE, (3, 3, 3), torch.Generator().manual_seed(2), phases=3)
    one_phase = (9 // 3) * (12 // 3) * (15 // 3)
    assert torch.all(masks.flatten(1).sum(1) == 3 * one_phase)  # three distinct phases, none drawn twice
    for mask in masks[:, 0]:
        coords = torch.nonzero(mask) % 3
        assert len({tuple(c) for c in coords.tolist()}) == 3
    assert len({tuple(m.flatten().nonzero()[:3, 0].tolist()) for m in masks}) > 5, "the phases vary between samples"


@pytest.mark.parametrize("phases", [1, 2])
@pytest.mark.parametrize("fill", ["donut", "neighbour", "random"])
@pytest.mark.parametrize("grid", GRIDS)
def test_fill_does_not_depend_on_masked_voxels(grid, fill, phases):
    """J-invariance of the network input: changing x on the masked voxels changes nothing."""
    x = _random_input()
    mask = _masks(grid, phases=phases)
    changed = torch.where(mask, _random_input(seed=99) * 1000 - 3000, x)
    a = apply_mask(x, mask, fill, generator=torch.Generator().manual_seed(5))
    b = apply_mask(changed, mask, fill, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # and the unmasked voxels pass through untouched
    assert torch.equal(a[~mask], x[~mask])


@pytest.mark.parametrize("fill", ["donut", "neighbour", "random"])
@pytest.mark.parametrize("grid", GRIDS)
def test_no_fill_value_uses_a_masked_voxel(grid, fill):
    x = _random_input()
    mask = _masks(grid)
    poisoned = torch.where(mask, torch.full_like(x, 1e6), x)
    out = apply_mask(poisoned, mask, fill, generator=torch.Generator().manual_seed(3))
    kept = x[~mask]
    fill_values = out[mask]
    assert fill_values.min() >= kept.min() - 1e-4
    assert fill_values.max() <= kept.max() + 1e-4


@pytest.mark.parametrize("grid", GRIDS)
def test_donut_fill_is_the_mean_of_unmasked_neighbours(grid):
    """Checked against a direct loop on a few masked voxels (including ones on the border)."""
    x = _random_input(batch=1)
    mask = _masks(grid, batch=1)
    fill = donut_fill(x, mask)
    coords = torch.nonzero(mask[0, 0])
    for z, y, xx in coords[:: max(1, len(coords) // 25)].tolist() + [coords[-1].tolist()]:
        values = []
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    p = (z + dz, y + dy, xx + dx)
                    if (dz, dy, dx) == (0, 0, 0) or not all(0 <= v < n for v, n in zip(p, SHAPE)):
                        continue
                    if not mask[0, 0][p]:
                        values.append(float(x[0, 0][p]))
        assert values, "every masked voxel of these grids has unmasked neighbours"
        assert float(fill[0, 0, z, y, xx]) == pytest.approx(sum(values) / len(values), rel=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
def test_neighbour_fill_copies_an_unmasked_neighbour_drawn_at_random(grid):
    """Each fill value is one of the voxel's non-masked neighbours, and the draws spread over the
    directions (a fill that always took the first available neighbour would use a few)."""
    x = torch.arange(9 * 12 * 15, dtype=torch.float32).reshape(1, 1, *SHAPE)  # values name their voxel
    mask = _masks(grid, batch=1, phases=2)
    fill = neighbour_fill(x, mask, torch.Generator().manual_seed(4))
    directions = set()
    for z, y, xx in torch.nonzero(mask[0, 0]).tolist():
        source = divmod(int(fill[0, 0, z, y, xx]), 12 * 15)
        source = (source[0], *divmod(source[1], 15))
        offset = (source[0] - z, source[1] - y, source[2] - xx)
        assert max(map(abs, offset)) == 1 and not mask[0, 0][source]
        directions.add(offset)
    assert len(directions) >= 16


def test_naive_donut_would_leak_with_unit_spacing():
    """Why the normalised convolution matters: with a grid spacing of 1 along z, a plain 26-neighbour
    mean reads masked voxels. The masking module must not (see test_no_fill_value_uses_a_masked_voxel)."""
    x = _random_input(batch=1)
    mask = _masks((1, 3, 3), batch=1)
    poisoned = torch.where(mask, torch.full_like(x, 1e6), x)
    kernel = torch.ones((1, 1, 3, 3, 3))
    kernel[0, 0, 1, 1, 1] = 0
    naive = F.conv3d(poisoned, kernel, padding=1) / 26
    assert naive[mask].max() > 1e4  # the naive fill leaks ...
    assert apply_mask(poisoned, mask, "donut")[mask].max() < 100  # ... volden's does not


def test_unknown_fill_raises():
    x = _random_input(batch=1)
    with pytest.raises(ValueError, match="fill"):
        apply_mask(x, _masks((3, 3, 3), batch=1), "median")  # type: ignore[arg-type]


def test_masked_mse_counts_masked_voxels_only():
    target = _random_input()
    prediction = _random_input(seed=7)
    mask = _masks((3, 3, 3))
    loss = masked_mse(prediction, target, mask)
    expected = ((prediction - target)[mask] ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    changed = torch.where(mask, prediction, prediction + 100)
    assert float(masked_mse(changed, target, mask)) == pytest.approx(float(loss), rel=1e-6)
    changed_masked = torch.where(mask, prediction + 1, prediction)
    assert float(masked_mse(changed_masked, target, mask)) != pytest.approx(float(loss), rel=1e-3)


@pytest.mark.parametrize("grid", GRIDS)
def test_mask_hides_the_voxel_from_a_network_that_reads_it(grid):
    """A 'network' whose output at a voxel depends on its input there (identity, or a 3x3x3
    smoothing that weights the centre) fits the noise perfectly without masking; with masking its
    output at masked voxels cannot see the target voxel, so the loss is positive and the output
    there does not change when the target changes."""
    x = _random_input()
    mask = _masks(grid)
    identity = lambda t: t  # noqa: E731
    assert float(masked_mse(identity(x), x, mask)) == 0.0
    assert float(masked_mse(identity(apply_mask(x, mask)), x, mask)) > 0.1

    kernel = torch.rand((1, 1, 3, 3, 3), generator=torch.Generator().manual_seed(0))
    kernel[0, 0, 1, 1, 1] = 5.0
    smooth = lambda t: F.conv3d(t, kernel, padding=1)  # noqa: E731
    other = torch.where(mask, x + 50, x)
    out_x = smooth(apply_mask(x, mask))
    out_other = smooth(apply_mask(other, mask))
    assert torch.allclose(out_x[mask], out_other[mask])
    assert not torch.allclose(smooth(x)[mask], smooth(other)[mask])
