"""Taking a training run that has blown up back to its last sound weights, at half the learning rate.

volden's UNet has no normalisation layers (they would make overlapping tiles disagree, see
``unet``), so nothing pulls its activations back once a step has thrown the weights too far, and
training does not find its way back: a depth-3 network at learning rate 4e-3 under bf16 went
from a loss of 0.83 to 2e14 within 50 steps of step 1250, and was still above 1e9 at the end of
its budget, 3500 steps later (BENCHMARKS.md). Ending on the best-validated weights
(``kept_weights``) saves the model from such a run, but not the training time lost after it.

The guard watches the loss of every step. A loss that is not finite, or ``PERSIST`` losses in a
row above ``SPIKE`` times the median of the last ``WINDOW`` normal steps, is a diverged run rather
than noise. Under Poisson noise one batch of bright patches in a dark, sparse volume can spike
alone; a blown-up run stays up. The guard then restores the older of its two snapshots of the
weights and the optimiser's moments (taken ``WINDOW`` steps apart, so it predates whatever led
up to the spike by at least that much) and halves the learning rate for the rest of the run.
Adam restarted from empty moments would move every weight by the full learning rate at once.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque

import torch

SPIKE = 10.0
PERSIST = 3
WINDOW = 100
MIN_LOSSES = 10  # the median of fewer steps says too little about what is normal


class DivergenceGuard:
    """Watches a run's step losses and takes it back when it diverges (see the module's docstring)."""

    def __init__(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict | None = None) -> None:
        state = state or {}
        self.network = network
        self.optimizer = optimizer
        self.lr_scale: float = state.get("lr_scale", 1.0)
        self.restarts: int = state.get("restarts", 0)
        self.recent: deque[float] = deque(state.get("recent", []), maxlen=WINDOW)
        self.spikes: int = state.get("spikes", 0)
        self.snapshots: deque[tuple[dict, dict]] = deque(maxlen=2)  # (weights, optimiser state)
        self._snapshot()
        self._since_snapshot = 0

    @property
    def state(self) -> dict:
        """What a checkpoint needs to resume the guard (the snapshots restart from the resumed weights)."""
        return {"lr_scale": self.lr_scale, "restarts": self.restarts, "recent": list(self.recent), "spikes": self.spikes}

    def diverged(self, loss: float) -> bool:
        """Called after each step with its loss: True if the run had diverged and has been taken back."""
        finite = math.isfinite(loss)
        if not finite or (len(self.recent) >= MIN_LOSSES and loss > SPIKE * statistics.median(self.recent)):
            self.spikes += 1
            if finite and self.spikes < PERSIST:
                return False
            weights, optimizer_state = self.snapshots[0]
            self.network.load_state_dict(weights)
            self.optimizer.load_state_dict(optimizer_state)
            self.snapshots = deque([self.snapshots[0]], maxlen=2)  # the newer one may hold the lead-up
            self.lr_scale /= 2
            self.restarts += 1
            self.spikes = self._since_snapshot = 0
            return True
        self.spikes = 0
        self.recent.append(loss)
        self._since_snapshot += 1
        if self._since_snapshot >= WINDOW:
            self._snapshot()
            self._since_snapshot = 0
        return False

    def _snapshot(self) -> None:
        self.snapshots.append((weights_copy(self.network), copy.deepcopy(self.optimizer.state_dict())))


def weights_copy(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights as they are now: later steps update the live tensors in place."""
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def restarts_note(restarts: int) -> str:
    """How a summary of a run mentions the guard: nothing when it never took the run back."""
    return f", {restarts} restart{'s' * (restarts > 1)} after divergence" if restarts else ""
