"""Run a model over an in-memory array: normalise, pad to the network's divisor, sub-tile when
the array is larger than the device takes at once, and return the prediction in input units."""

from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np
import psutil
import torch

from .model import Model
from .unet import receptive_radius
from .views import DEFAULT_VIEWS, seen, symmetries, unseen

DEVICES = ("auto", "cpu", "cuda")
CPU_MAX_VOXELS = 2**24  # beyond this a CPU pass gets no faster per voxel, only larger
CPU_BYTES_PER_VOXEL_PER_CHANNEL = 28  # float32 activations alive at once, measured
CUDA_BYTES_PER_VOXEL_PER_CHANNEL = 24  # bf16 activations of the widest full-resolution layers
MEMORY_SHARE = 0.25  # of the memory free now, per forward pass
_forward_locks: dict[str, threading.Lock] = {}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA where available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU, where blocked and whole-volume
    predictions then agree to float32 rounding (bf16 would round them apart by ~0.4%)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def max_voxels_for(device: torch.device, width: int) -> int:
    """Largest array (voxels) one forward pass takes on ``device``, from its free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 2 * MEMORY_SHARE / (width * CUDA_BYTES_PER_VOXEL_PER_CHANNEL))
    free = psutil.virtual_memory().available
    return min(CPU_MAX_VOXELS, int(free * MEMORY_SHARE / (width * CPU_BYTES_PER_VOXEL_PER_CHANNEL)))


def _forward_padded(network: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    divisor = network.config.divisor
    pad = [(0, (-n) % d) for n, d in zip(x.shape, divisor)]
    padded = np.pad(x, pad, mode="reflect") if any(p for _, p in pad) else x
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(device)
    if device.type == "cpu":
        tensor = tensor.contiguous(memory_format=torch.channels_last_3d)
    lock = _forward_locks.setdefault(str(device), threading.Lock())
    with lock, torch.inference_mode(), autocast(device):
        out = network(tensor)
    out = out[0, 0].float().cpu().numpy()
    return out[tuple(slice(0, n) for n in x.shape)]


def _round_up(values, multiples) -> list[int]:
    return [-(-v // m) * m for v, m in zip(values, multiples)]


def predict_normalised(
    model: Model, x: np.ndarray, device: torch.device, max_voxels: int | None = None, views: int = DEFAULT_VIEWS
) -> np.ndarray:
    """Prediction for normalised ``x``, averaged over ``views`` symmetries of the yx plane."""
    _, *others = symmetries(views)  # the first is the identity, so one view needs no sum
    total = _predict_once(model, x, device, max_voxels)
    for symmetry in others:
        total += unseen(_predict_once(model, seen(x, symmetry), device, max_voxels), symmetry)
    if others:
        total /= views
    return total


def _predict_once(model: Model, x: np.ndarray, device: torch.device, max_voxels: int | None) -> np.ndarray:
    """Prediction for normalised ``x``, in sub-tiles (cropped margins) when it is too large.

    Sub-tiles, their margins and starts are multiples of the pooling divisor, so every sub-tile
    pools on the same grid as one whole pass would.
    """
    network = model.network_on(device)
    max_voxels = max_voxels or max_voxels_for(device, model.config.width)
    if x.size <= max_voxels:
        return _forward_padded(network, x, device)
    divisor = model.config.divisor
    margin = _round_up(receptive_radius(model.config), divisor)
    core = _round_up(x.shape, divisor)
    while np.prod([c + 2 * m for c, m in zip(core, margin)]) > max_voxels:
        axis = int(np.argmax([c / d for c, d in zip(core, divisor)]))
        if core[axis] <= divisor[axis]:
            break
        core[axis] = _round_up([core[axis] // 2], [divisor[axis]])[0]
    out = np.empty(x.shape, dtype=np.float32)
    for start in itertools.product(*[range(0, n, c) for n, c in zip(x.shape, core)]):
        stop = [min(s + c, n) for s, c, n in zip(start, core, x.shape)]
        lo = [max(s - m, 0) for s, m in zip(start, margin)]
        hi = [min(e + m, n) for e, m, n in zip(stop, margin, x.shape)]
        pred = _forward_padded(network, x[tuple(slice(a, b) for a, b in zip(lo, hi))], device)
        out[tuple(slice(s, e) for s, e in zip(start, stop))] = pred[
            tuple(slice(s - a, e - a) for s, e, a in zip(start, stop, lo))
        ]
    return out


def default_halo(model: Model) -> tuple[int, int, int]:
    """Half the receptive radius, rounded up to a multiple of 4 (and of the pooling)."""
    radius = receptive_radius(model.config)
    step = [max(4, d) for d in model.config.divisor]
    return tuple(int(-(-(r // 2) // s) * s) for r, s in zip(radius, step))  # type: ignore[return-value]


def predict_array(
    model: Model,
    raw: np.ndarray,
    device: str | torch.device = "auto",
    max_voxels: int | None = None,
    edge: tuple[int, int, int] | None = None,
    views: int = DEFAULT_VIEWS,
) -> np.ndarray:
    """Denoise a whole in-memory 3D array in one pass (float32, input units).

    The array is padded by reflection by ``edge`` voxels (default: the default halo) at the
    volume's edge, as blocked inference does.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    edge = edge if edge is not None else default_halo(model)
    x = np.pad(model.normalisation.apply(raw), [(e, e) for e in edge], mode="reflect")
    out = predict_normalised(model, x, device, max_voxels, views)
    return model.normalisation.invert(out[tuple(slice(e, e + n) for e, n in zip(edge, raw.shape))])
