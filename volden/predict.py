"""Run a model over an array on its device: the input goes there in its own dtype and is
normalised, padded (reflection to the network's divisor), sub-tiled when it is larger than the
device takes at once, predicted, and optionally weighted there; only the result comes back."""

from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from .model import Model
from .normalisation import Normalisation
from .posterior import posterior_prediction
from .unet import receptive_radius
from .views import DEFAULT_VIEWS, Symmetry, symmetries

DEVICES = ("auto", "cpu", "cuda")
CPU_MAX_VOXELS = 2**24  # beyond this a CPU pass gets no faster per voxel, only larger
CPU_BYTES_PER_VOXEL_PER_CHANNEL = 28  # float32 activations alive at once, measured
CUDA_BYTES_PER_VOXEL_PER_CHANNEL = 24  # bf16 activations of the widest full-resolution layers
MEMORY_SHARE = 0.25  # of the memory free now, per forward pass
DEFAULT_REACH = 0.75  # of the receptive radius: the default halo (benchmarks/halo_reach.py, BENCHMARKS.md "Halo")
Pad = list[tuple[int, int]]
_device_locks: dict[str, threading.Lock] = {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA where available, else the CPU."""
    if isinstance(device, torch.device):
        return device
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


def normalised_on(normalisation: Normalisation, raw: np.ndarray, device: torch.device) -> torch.Tensor:
    """``raw`` (any real dtype) on ``device`` as normalised float32; it travels in its own dtype,
    so a uint16 tile crosses to a GPU at half the bytes, and float32 is made there."""
    x = torch.from_numpy(np.ascontiguousarray(raw)).to(device)
    x = x.to(torch.float32, copy=x.device.type == "cpu")  # never normalise the caller's array in place
    x -= float(np.float32(normalisation.mean))
    x /= float(np.float32(normalisation.std))
    return x


def reflect_pad(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """``x`` (z, y, x) padded by reflection, as ``np.pad(mode='reflect')``. Pads as long as
    the axis (tiny volumes) are made on the host, where numpy reflects repeatedly."""
    if not any(p for pair in pad for p in pair):
        return x
    if any(max(pair) >= n for pair, n in zip(pad, x.shape)):
        return torch.from_numpy(np.pad(x.cpu().numpy(), pad, mode="reflect")).to(x.device)
    flat = [p for pair in reversed(pad) for p in pair]  # F.pad takes the last axis first
    return F.pad(x[None, None], flat, mode="reflect")[0, 0]


def _forward_padded(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One pass of the network over ``x`` (z, y, x), its output channels first (``x`` padded at
    its far ends to the pooling divisor; callers hold inference mode and the device),
    channels-last 3D on every device: oneDNN on the CPU and cuDNN in bf16 on Hopper run their
    fast 3D convolutions in that layout."""
    divisor = network.config.divisor
    padded = reflect_pad(x, [(0, (-n) % d) for n, d in zip(x.shape, divisor)])
    tensor = padded[None, None].contiguous(memory_format=torch.channels_last_3d)
    with autocast(x.device):
        out = network(tensor)
    return out[0, :, : x.shape[0], : x.shape[1], : x.shape[2]].float()


def holding(device: torch.device) -> threading.Lock:
    """The lock that keeps a device to one tile at a time. A worker's other thread reads and
    writes meanwhile; two tiles' tensor work at once would only fight over the same cores
    (OpenMP teams of both threads spinning on a CPU) or the same GPU memory."""
    return _device_locks.setdefault(str(device), threading.Lock())


def _round_up(values, multiples) -> list[int]:
    return [-(-v // m) * m for v, m in zip(values, multiples)]


def seen(x: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """``x`` (z, y, x) as the symmetry shows it."""
    turns, mirrored = symmetry
    x = torch.rot90(x, turns, dims=(1, 2))
    return torch.flip(x, dims=(2,)) if mirrored else x


def unseen(x: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """The inverse of :func:`seen`."""
    turns, mirrored = symmetry
    return torch.rot90(torch.flip(x, dims=(2,)) if mirrored else x, -turns, dims=(1, 2))


@torch.inference_mode()
def predict_normalised(
    model: Model, x: torch.Tensor, max_voxels: int | None = None, views: int = DEFAULT_VIEWS
) -> torch.Tensor:
    """Prediction for normalised ``x`` on its device, averaged over ``views`` symmetries of the
    yx plane."""
    _, *others = symmetries(views)  # the first is the identity, so one view needs no sum
    total = _predict_once(model, x, max_voxels)
    for symmetry in others:
        total += unseen(_predict_once(model, seen(x, symmetry).contiguous(), max_voxels), symmetry)
    if others:
        total /= views
    return total


def _predict_once(model: Model, x: torch.Tensor, max_voxels: int | None) -> torch.Tensor:
    """Prediction for normalised ``x``: the network's output, or for a prior network the
    posterior mean (``posterior``)."""
    network = model.network_on(x.device)
    max_voxels = max_voxels or max_voxels_for(x.device, model.config.width)

    def forward(array: torch.Tensor) -> torch.Tensor:
        return _network_pass(network, array, max_voxels)

    return posterior_prediction(model, x, forward) if model.is_prior else forward(x)[0]


def _network_pass(network: torch.nn.Module, x: torch.Tensor, max_voxels: int) -> torch.Tensor:
    """The network's output channels over ``x``, in sub-tiles (cropped margins) when it is too large.

    Sub-tiles, their margins and starts are multiples of the pooling divisor, so every sub-tile
    pools on the same grid as one whole pass would.
    """
    config = network.config
    if x.numel() <= max_voxels:
        return _forward_padded(network, x)
    divisor = config.divisor
    margin = _round_up(receptive_radius(config), divisor)
    core = _round_up(x.shape, divisor)
    while np.prod([c + 2 * m for c, m in zip(core, margin)]) > max_voxels:
        axis = int(np.argmax([c / d for c, d in zip(core, divisor)]))
        if core[axis] <= divisor[axis]:
            break
        core[axis] = _round_up([core[axis] // 2], [divisor[axis]])[0]
    out = torch.empty((config.outputs, *x.shape), dtype=torch.float32, device=x.device)
    for start in itertools.product(*[range(0, n, c) for n, c in zip(x.shape, core)]):
        stop = [min(s + c, n) for s, c, n in zip(start, core, x.shape)]
        lo = [max(s - m, 0) for s, m in zip(start, margin)]
        hi = [min(e + m, n) for e, m, n in zip(stop, margin, x.shape)]
        pred = _forward_padded(network, x[tuple(slice(a, b) for a, b in zip(lo, hi))].contiguous())
        out[(slice(None), *(slice(s, e) for s, e in zip(start, stop)))] = pred[
            (slice(None), *(slice(s - a, e - a) for s, e, a in zip(start, stop, lo)))
        ]
    return out


def weigh(prediction: torch.Tensor, window: tuple[np.ndarray, np.ndarray, np.ndarray]) -> torch.Tensor:
    """``prediction`` multiplied in place by a separable window, one axis at a time."""
    for axis, weights in enumerate(window):
        shape = [1, 1, 1]
        shape[axis] = weights.size
        prediction *= torch.from_numpy(weights).to(prediction.device).view(shape)
    return prediction


@torch.inference_mode()
def predict_weighted(
    model: Model,
    raw: np.ndarray,
    pad: Pad,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    device: str | torch.device,
    max_voxels: int | None = None,
    views: int = DEFAULT_VIEWS,
) -> np.ndarray:
    """The prediction on a tile weighted by a separable window (z, y and x weights), in
    normalised units on the host: ``raw`` is the tile's part inside the volume, in the input's
    dtype, and ``pad`` what lies beyond it (filled by reflection, as in training). Everything
    between the read and the weighted result runs on the device."""
    device = resolve_device(device)
    with holding(device):
        x = reflect_pad(normalised_on(model.normalisation, raw, device), pad)
        prediction = weigh(predict_normalised(model, x, max_voxels, views), window)
        return prediction.cpu().numpy()


def reach_halo(model: Model, fraction: float) -> tuple[int, int, int]:
    """``fraction`` of the receptive radius, rounded up to a multiple of 4 (and of the pooling)."""
    radius = receptive_radius(model.config)
    step = [max(4, d) for d in model.config.divisor]
    return tuple(int(-(-int(r * fraction) // s) * s) for r, s in zip(radius, step))  # type: ignore[return-value]


def default_halo(model: Model) -> tuple[int, int, int]:
    """The halo blocked inference uses unless told: :data:`DEFAULT_REACH` of the receptive radius."""
    return reach_halo(model, DEFAULT_REACH)


@torch.inference_mode()
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
    device = resolve_device(device)
    edge = edge if edge is not None else default_halo(model)
    with holding(device):
        x = reflect_pad(normalised_on(model.normalisation, raw, device), [(e, e) for e in edge])
        out = predict_normalised(model, x, max_voxels, views).cpu().numpy()
    return model.normalisation.invert(out[tuple(slice(e, e + n) for e, n in zip(edge, raw.shape))])
