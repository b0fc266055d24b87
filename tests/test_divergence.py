"""The divergence guard: noise and a lone spike pass; spikes in a row or a non-finite loss take the
run back to a snapshot of weights and optimiser at least a window old, at half the learning rate."""

from __future__ import annotations

import math

import numpy as np
import torch

from volden.divergence import PERSIST, SPIKE, WINDOW, DivergenceGuard, restarts_note


def _run(steps: int, seed: int = 0):
    """A small network trained on a toy problem, with the guard watching it."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    guard = DivergenceGuard(network, optimizer)
    weights = []
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = torch.nn.functional.mse_loss(network(x), x.sum(1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        weights.append({k: v.clone() for k, v in network.state_dict().items()})
        assert not guard.diverged(loss.item())
    return network, optimizer, guard, weights


def _spike(guard: DivergenceGuard) -> float:
    return SPIKE * 1.01 * float(np.median(guard.recent))


def test_noise_and_lone_spikes_pass():
    _, _, guard, _ = _run(3 * WINDOW)
    rng = np.random.default_rng(0)
    level = float(np.median(guard.recent))
    for factor in rng.uniform(0.3, 0.9 * SPIKE, 500):
        assert not guard.diverged(level * factor)
        for _ in range(PERSIST - 1):  # a run of bright batches, one short of a divergence
            assert not guard.diverged(_spike(guard))
    assert guard.restarts == 0 and guard.lr_scale == 1.0


def test_spikes_in_a_row_restore_weights_and_adam_a_window_old_and_halve_the_rate():
    steps = 2 * WINDOW + 30
    network, optimizer, guard, weights = _run(steps)
    assert not any(guard.diverged(_spike(guard)) for _ in range(PERSIST - 1))
    assert guard.diverged(_spike(guard))
    restored = network.state_dict()
    # snapshots were taken after steps WINDOW and 2 * WINDOW; the older one comes back, Adam's moments too
    for name, tensor in weights[WINDOW - 1].items():
        torch.testing.assert_close(restored[name], tensor, rtol=0, atol=0)
    assert not any(torch.equal(restored[name], t) for name, t in weights[-1].items())
    assert {float(state["step"]) for state in optimizer.state.values()} == {WINDOW}
    assert guard.restarts == 1 and guard.lr_scale == 0.5


def test_a_non_finite_loss_is_a_divergence_from_the_first_step():
    torch.manual_seed(0)
    network = torch.nn.Linear(3, 1)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    guard = DivergenceGuard(network, torch.optim.Adam(network.parameters()))
    with torch.no_grad():
        network.weight.fill_(math.inf)
    assert guard.diverged(math.nan)
    torch.testing.assert_close(network.state_dict(), start, rtol=0, atol=0)


def test_the_guard_resumes_from_its_state():
    _, _, guard, _ = _run(WINDOW)
    guard.diverged(math.inf)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    resumed = DivergenceGuard(network, torch.optim.Adam(network.parameters()), guard.state)
    assert (resumed.lr_scale, resumed.restarts, list(resumed.recent)) == (0.5, 1, list(guard.recent))
    assert [resumed.diverged(_spike(guard)) for _ in range(PERSIST)] == [False] * (PERSIST - 1) + [True]


def test_summaries_name_restarts_only_when_there_were_some():
    assert restarts_note(0) == ""
    assert restarts_note(1) == ", 1 restart after divergence"
    assert restarts_note(3) == ", 3 restarts after divergence"
