"""Random generators keyed by (seed, stream, number), so any draw can be redone on its own.

Training resumes draw for draw after a kill: each sampler region, each batch and each step's
masks takes a fresh generator made from its own number, never one carried along from the draws
before it, so nothing but those numbers has to be saved.
"""

from __future__ import annotations

import numpy as np
import torch

REGIONS, BATCHES, MASKS = 0, 1, 2


def numpy_stream(seed: int, stream: int, number: int) -> np.random.Generator:
    """The NumPy generator of draw ``number`` of ``stream``."""
    return np.random.default_rng([seed, stream, number])


def torch_stream(seed: int, stream: int, number: int) -> torch.Generator:
    """The torch (CPU) generator of draw ``number`` of ``stream``."""
    key = np.random.SeedSequence([seed, stream, number]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key))
