"""Noise2Self training: masked patches in, loss on the masked voxels, the annealed model kept.

The budget is steps, minutes, or both (whichever ends first); the learning rate rises linearly
over the first ``warmup_steps``, follows a cosine over the budget, and is halved for the rest of
the run each time ``divergence`` takes a blown-up run back. Every ``validate_every`` steps the
self-supervised loss on the held-out patches (fixed phases) is measured, the best weights so far are written aside (see
:func:`kept_weights` for which weights the model gets), and a checkpoint
(weights, optimiser, step, history, sampler state) is written so ``resume`` can continue after a
kill. Batches and masks come from generators keyed by batch and step numbers (see ``streams``),
so a resumed run with a step budget trains on exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .divergence import DivergenceGuard, weights_copy
from .errors import VoldenError
from .masking import FILL_MODES, apply_mask, masked_mse, phases_mask, random_phase_masks
from .model import Model, ModelSet, save_channel_index, save_model
from .noise_curve import fit_noise_curve
from .normalisation import estimate_normalisation
from .paths import check_output_path
from .posterior import PRIOR_MEAN_LOSSES, PRIOR_OUTPUTS, guarded, prior_nll
from .predict import resolve_device
from .sampler import PatchSampler
from .streams import MASKS, torch_stream
from .unet import UNet3D, UNetConfig, plan_pools
from .volume import Image, Volume

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
BEST_FILE = "best.safetensors"
MIN_PATCH = 8
MaskedLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target, mask) -> loss
BASE_LR, BASE_WIDTH = 2e-3, 8  # 2e-3 against 4e-3 at 10 minutes: BENCHMARKS.md, "Where the gap to Noise2Truth comes from"


@dataclass(frozen=True)
class TrainConfig:
    """What ``volden train`` takes; None means the device's default (see :meth:`resolve`)."""

    patch: tuple[int, int, int] | None = None
    batch: int | None = None
    grid: tuple[int, int, int] = (2, 2, 2)
    masked_phases: int = 2  # with grid 2,2,2: 1/4 of the voxels masked per sample (BENCHMARKS.md)
    background_tries: int = 1  # uniform patches (BENCHMARKS.md); more favours foreground
    flip_z: bool = True  # augment with z flips too; off for an asymmetric axial PSF (sampler.augment)
    fill: str = "donut"  # neighbour: +0.25 dB on nuclei-5, -0.14 on neurites-5 (BENCHMARKS.md)
    steps: int | None = None
    minutes: float | None = None
    learning_rate: float | None = None  # BASE_LR scaled to the width (see :meth:`resolve`)
    lr_floor: float = 0.0  # the schedule's last share of learning_rate; 0 against 0.05: BENCHMARKS.md
    warmup_steps: int = 100  # Adam's first steps, before its moments settle, at a rising rate
    depth: int | None = None
    width: int | None = None
    device: str = "auto"
    seed: int = 0
    validate_every: int = 50
    cache_mb: float = 512.0
    posterior: bool = False  # train a prior for the posterior step (``posterior``) instead of a denoiser
    prior_mean: str = "likelihood"  # what fits a prior's mean: the likelihood (Laine et al.) or the squared error
    # a prior's variance at the start, normalised units (None: as the head's bias is drawn, about 1):
    # started at 1 the variance's gradients swamp the shared layers and the prior's mean lags by
    # 3 dB at equal steps (BENCHMARKS.md, "Posterior step (issue 31)")
    prior_variance_start: float | None = 0.01

    def __post_init__(self) -> None:
        if self.fill not in FILL_MODES:
            raise VoldenError(f"fill must be one of {', '.join(FILL_MODES)}, not {self.fill!r}")
        if any(g < 1 for g in self.grid) or np.prod(self.grid) < 2:
            raise VoldenError(f"--grid {self.grid}: each entry >= 1 and at least two phases")
        if not 1 <= self.masked_phases < np.prod(self.grid):
            raise VoldenError(f"--masked-phases must be from 1 to {np.prod(self.grid) - 1} "
                              f"(the grid {self.grid} has {np.prod(self.grid)} phases), not {self.masked_phases}")
        if self.steps is not None and self.steps < 1:
            raise VoldenError("--steps must be at least 1")
        if self.minutes is not None and self.minutes <= 0:
            raise VoldenError("--minutes must be positive")
        if self.background_tries < 1:
            raise VoldenError("--background-tries must be at least 1")
        if self.batch is not None and self.batch < 1:
            raise VoldenError("--batch must be at least 1")
        if self.seed < 0:
            raise VoldenError("--seed must be 0 or more")
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise VoldenError(f"learning_rate must be a positive number, not {self.learning_rate:g}")
        if self.warmup_steps < 0:
            raise VoldenError(f"warmup_steps must be 0 or more, not {self.warmup_steps}")
        if not 0 <= self.lr_floor <= 1:
            raise VoldenError(f"lr_floor must be from 0 to 1, not {self.lr_floor:g}")
        if not 0 < self.cache_mb < math.inf:
            raise VoldenError(f"--cache-mb must be a positive number of megabytes, not {self.cache_mb:g}")
        if self.prior_mean not in PRIOR_MEAN_LOSSES:
            raise VoldenError(f"prior_mean must be one of {', '.join(PRIOR_MEAN_LOSSES)}, not {self.prior_mean!r}")
        if self.posterior and (self.fill != "donut" or max(self.grid) > 2):
            raise VoldenError("--posterior takes --fill donut and --grid entries of 1 or 2 (its prediction masks "
                              f"each phase in turn and reflects at the volume's edge), not --fill {self.fill} --grid "
                              + ",".join(map(str, self.grid)))

    def resolve(self, shape: tuple[int, int, int], device: torch.device) -> "TrainConfig":
        """Fill in the device defaults and check the patch against the volume.

        The learning rate scales as ``BASE_WIDTH / width``: an Adam step moves each weight by about
        the rate, so a layer's output moves in proportion to its fan-in. The GPU's width-32
        network blew up at 4e-3 (and at 1.7e-3 in the warm-up) where the CPU's width 8 trains.
        """
        gpu = device.type == "cuda"
        default_patch = (32, 96, 96) if gpu else (16, 64, 64)
        patch = self.patch
        if patch is None:
            patch = tuple(min(p, s - s % 4 if s >= MIN_PATCH else s) for p, s in zip(default_patch, shape))
        too_big = [a for a, (p, s) in zip("zyx", zip(patch, shape)) if p > s]
        if too_big or min(shape) < MIN_PATCH:
            raise VoldenError(
                f"the volume {tuple(shape)} is smaller than the training patch {tuple(patch)} "
                f"along {', '.join(too_big) or 'one axis'}; pass a smaller --patch (at least {MIN_PATCH} per axis)"
            )
        width = self.width or (32 if gpu else 8)
        steps, minutes = self.steps, self.minutes
        if steps is None and minutes is None:
            minutes = 10.0
        return replace(
            self,
            patch=patch,  # type: ignore[arg-type]
            batch=self.batch or (8 if gpu else 4),
            depth=self.depth if self.depth is not None else (3 if gpu else 2),
            width=width,
            learning_rate=self.learning_rate or BASE_LR * BASE_WIDTH / width,
            steps=steps,
            minutes=minutes,
        )


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated.
    Probed once: every training step asks."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def training_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for training on CUDA and on CPUs with native bf16, float32 elsewhere.

    On the 2-core AVX512-BF16 CPU of BENCHMARKS.md a step of the network takes 116 ms in bf16
    against 175 ms in float32, and 10 minutes of training make 1.5-1.8x the steps; emulated bf16
    would be slower than float32. The weights, the loss and the optimiser stay float32, and
    prediction keeps its own precision (``predict.autocast``).
    """
    if device.type == "cuda" or (device.type == "cpu" and native_cpu_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_factor(progress: float, floor: float) -> float:
    """The learning rate's share at ``progress`` (0 to 1) of the budget: a cosine from 1 to ``floor``."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def scheduled_lr(config: TrainConfig, step: int, progress: float) -> float:
    """The learning rate of step ``step`` (counted from 0) at ``progress`` (0 to 1) of the budget.

    The cosine is ramped up linearly over the first ``warmup_steps``: Adam's first steps, before
    its moments settle, move every weight by the full rate in the direction of its gradient's
    sign. At 4e-3 from step 0, a width-32 network's loss went from 1 to thousands within 4 steps.
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return config.learning_rate * warmup * lr_factor(progress, config.lr_floor)


GIVE_BACK = 0.25


def kept_weights(history: list[dict]) -> str:
    """'last' or 'best': which weights the trained model gets.

    The self-supervised validation loss measures the noise of its targets too. Late in training,
    it rises and falls by more than the model changes, so its minimum is a noisy pick. On the four
    benchmark volumes, the last weights beat the best-validated ones by 0.08 to 0.13 dB
    (BENCHMARKS.md). The last weights are kept unless their validation loss is not finite, or has
    given back more than ``GIVE_BACK`` of what training gained from the first validation to the
    best. That much is a real regression (a diverged run), not noise.
    """
    losses = [h["val_loss"] for h in history]
    if not losses:
        return "last"
    first, last, best = losses[0], losses[-1], min(losses)
    return "last" if math.isfinite(last) and last - best <= GIVE_BACK * (first - best) else "best"


def _optimizer_tensors(optimizer_state: dict) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).contiguous()
    return tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write through a temporary file, so a kill never leaves a half-written file at ``path``."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path) + ".tmp")
    Path(str(path) + ".tmp").replace(path)


def _save_checkpoint(folder: Path, network, optimizer, progress: dict) -> None:
    """Tensors to a file named by the step, then ``state.json`` naming it (the one commit point,
    so a kill at any moment leaves a consistent checkpoint), then older tensor files go."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state-{progress['step']}.safetensors"
    optimizer_state = optimizer.state_dict()
    tensors = {f"network.{k}": v for k, v in network.state_dict().items()}
    _save_tensors({**tensors, **_optimizer_tensors(optimizer_state)}, folder / name)
    progress = {**progress, "tensors": name, "param_groups": optimizer_state["param_groups"]}
    (folder / (STATE_FILE + ".tmp")).write_text(json.dumps(progress))
    (folder / (STATE_FILE + ".tmp")).replace(folder / STATE_FILE)
    for old in folder.glob("state-*"):
        if old.name != name:
            old.unlink()


def _load_checkpoint(folder: Path, network, optimizer) -> dict:
    try:
        progress = json.loads((folder / STATE_FILE).read_text())
        tensors = load_file(str(folder / progress["tensors"]))
    except (OSError, ValueError, KeyError) as err:
        raise VoldenError(f"cannot resume: no readable checkpoint in {folder} ({type(err).__name__})") from None
    network.load_state_dict({k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")})
    _load_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optimizer.")}, progress["param_groups"])
    return progress


def build_network(config: TrainConfig, voxel_size: tuple[float, float, float] | None, device: torch.device) -> UNet3D:
    """The UNet of a resolved ``config``, channels-last 3D (the fastest 3D layout of oneDNN on
    the CPU and of cuDNN's bf16 convolutions on recent GPUs)."""
    unet = UNetConfig(depth=config.depth, width=config.width, pools=plan_pools(config.patch, config.depth, voxel_size),
                      outputs=PRIOR_OUTPUTS if config.posterior else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one patch shape: kernels chosen once
    network = UNet3D(unet)
    if config.posterior and config.prior_variance_start is not None:
        with torch.no_grad():
            network.head.bias[1] = math.log(config.prior_variance_start)
    return network.to(device, memory_format=torch.channels_last_3d)


def descend(network: UNet3D, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, target: torch.Tensor,
            device: torch.device, mask: torch.Tensor | None = None, loss_of: MaskedLoss = masked_mse) -> torch.Tensor:
    """One optimiser step on ``loss_of`` ``network(inputs)`` and ``target`` (the squared error by
    default) over the ``mask``ed voxels, or on the squared error over all of them (the quality
    benchmark's Noise2Truth); returns the loss without waiting for it."""
    inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    with training_autocast(device):
        out = network(inputs).float()
    loss = F.mse_loss(out, target) if mask is None else loss_of(out, target, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_step(network: UNet3D, optimizer: torch.optim.Optimizer, x: torch.Tensor, config: TrainConfig,
               generator: torch.Generator, device: torch.device, target: torch.Tensor | None = None,
               loss_of: MaskedLoss = masked_mse) -> torch.Tensor:
    """One Noise2Self step on the batch ``x`` (on ``device``): random phases masked per patch
    and filled, the loss taken on the masked voxels against ``x`` itself, or against ``target``
    (the quality benchmark's clean patches), by ``loss_of``; returns the loss without waiting for it."""
    mask = random_phase_masks(x.shape[0], config.patch, config.grid, generator, phases=config.masked_phases).to(device)
    inputs = apply_mask(x, mask, config.fill, generator)
    return descend(network, optimizer, inputs, x if target is None else target, device, mask, loss_of)


def validation_loss(network, patches: torch.Tensor, masks: torch.Tensor, fill: str, device,
                    loss_of: MaskedLoss = masked_mse) -> float:
    """Self-supervised loss on fixed patches and phases (deterministic, comparable across runs)."""
    network.eval()
    with torch.inference_mode(), training_autocast(device):
        x = patches.to(device)
        m = masks.to(device)
        out = network(apply_mask(x, m, fill, torch.Generator().manual_seed(0)))
        loss = loss_of(out.float(), x, m).item()
    network.train()
    return loss


def plot_history(history: list[dict], path: Path) -> None:
    """Training and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], label="training (masked MSE)")
    ax.plot(steps, [h["val_loss"] for h in history], label="validation (held out)")
    ax.set_xlabel("step")
    ax.set_ylabel("self-supervised loss")
    ax.set_yscale("log" if min(h["val_loss"] for h in history) > 0 else "linear")  # a prior's likelihood may fall below 0
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(
    volume: Volume,
    output: str | Path,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Model:
    """Train a Noise2Self model on ``volume`` and save it (the weights :func:`kept_weights` picks)
    to ``output``.

    ``progress`` is called after every step with a dict of step, loss, voxels/s and elapsed s.
    ``stop`` is asked after every step; once it returns True the run ends there as if its budget
    were spent (the last step validated, a whole model saved), so a GUI can cancel it.
    """
    output = Path(output)
    check_output_path(volume.path, output, overwrite=True)
    device = resolve_device(config.device)
    config = config.resolve(volume.shape, device)
    torch.manual_seed(config.seed)
    normalisation = estimate_normalisation(volume.data, seed=config.seed)
    noise_curve, loss_of = None, masked_mse
    if config.posterior:
        noise_curve = fit_noise_curve(volume.data, seed=config.seed)
        noise_curve.check()
        loss_of = functools.partial(prior_nll, noise_variance=functools.partial(
            noise_curve.normalised_variance, normalisation=normalisation), mean_by=config.prior_mean)
    network = build_network(config, volume.voxel_size, device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    state = {"step": 0, "elapsed": 0.0, "history": [], "best_val": math.inf}
    best = weights_copy(network)
    if resume:
        state = _load_checkpoint(output / CHECKPOINT_DIR, network, optimizer)
        best_file = output / CHECKPOINT_DIR / BEST_FILE
        source = load_file(str(best_file)) if best_file.exists() else network.state_dict()
        best = {k: v.detach().to(device).clone() for k, v in source.items()}

    guard = DivergenceGuard(network, optimizer, state.get("guard"))
    sampler = PatchSampler(volume.data, config.patch, config.batch, normalisation, seed=config.seed,
                           cache_mb=config.cache_mb, background_tries=config.background_tries, flip_z=config.flip_z,
                           state=state.get("sampler"))
    val_patches = sampler.validation_patches()
    phase_count, per_patch = int(np.prod(config.grid)), config.masked_phases
    val_masks = torch.stack([
        phases_mask(config.patch, config.grid, [(i * per_patch + k) % phase_count for k in range(per_patch)])
        for i in range(len(val_patches))
    ])[:, None]
    voxels_per_step = config.batch * int(np.prod(config.patch))
    budget_s = config.minutes * 60 if config.minutes else math.inf
    start = time.perf_counter() - state["elapsed"]
    losses: list[float] = []
    model = Model(network, normalisation, {"grid": list(config.grid), "fill": config.fill, "phases": config.masked_phases},
                  noise_curve=noise_curve)

    def finished(step: int, elapsed: float) -> bool:
        return (config.steps is not None and step >= config.steps) or elapsed >= budget_s

    first_step, first_elapsed = state["step"], state["elapsed"]
    stopped = False
    try:
        step = state["step"]
        while not stopped and not finished(step, time.perf_counter() - start):
            elapsed = time.perf_counter() - start
            fraction = max(step / config.steps if config.steps else 0.0, elapsed / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = guard.lr_scale * scheduled_lr(config, step, fraction)
            x = sampler.next().to(device)
            loss = train_step(network, optimizer, x, config, torch_stream(config.seed, MASKS, step), device, None, loss_of)
            step += 1
            loss_value = loss.item()
            losses.append(loss_value)
            guard.diverged(guarded(loss_value) if config.posterior else loss_value)
            elapsed = time.perf_counter() - start
            stopped = stop is not None and stop()
            if step % config.validate_every == 0 or stopped or finished(step, elapsed):
                val = validation_loss(network, val_patches, val_masks, config.fill, device, loss_of)
                state["history"].append(
                    {"step": step, "elapsed": round(elapsed, 2), "loss": float(np.mean(losses)), "val_loss": val,
                     "lr": optimizer.param_groups[0]["lr"]}
                )
                losses = []
                if val < state["best_val"]:
                    state["best_val"] = val
                    best = weights_copy(network)
                    (output / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
                    _save_tensors(best, output / CHECKPOINT_DIR / BEST_FILE)
                state.update(step=step, elapsed=elapsed, sampler=sampler.state, guard=guard.state)
                _save_checkpoint(output / CHECKPOINT_DIR, network, optimizer, state)
            if progress:
                rate = voxels_per_step * (step - first_step) / max(elapsed - first_elapsed, 1e-9)
                progress({"step": step, "loss": loss_value, "voxels_per_s": rate, "elapsed": elapsed,
                          "budget_s": budget_s, "steps": config.steps})
    finally:
        sampler.close()

    kept = kept_weights(state["history"])
    if kept == "best":
        network.load_state_dict(best)
    model.network = network.to("cpu", memory_format=torch.contiguous_format).eval()
    model.history = state["history"]
    model.training = {
        **{k: v for k, v in asdict(config).items()},
        "input": volume.path,
        "array": volume.array_path,
        "volume_index": list(volume.index),
        "voxel_size": volume.voxel_size,
        "steps_done": step,
        "seconds": round(time.perf_counter() - start, 1),
        "best_val_loss": state["best_val"],
        "kept": kept,
        "restarts": guard.restarts,
        "validation_held_out": sampler.split.held_out,
    }
    save_model(model, output)
    plot_history(state["history"], output / "loss.png")
    return model


CHANNEL_PREFIX = "channel-"


def channel_folder(channel: int) -> str:
    return f"{CHANNEL_PREFIX}{channel}"


def has_checkpoint(output: str | Path) -> bool:
    """Whether ``output`` holds a checkpoint to resume: its own, or one of a channel's."""
    output = Path(output)
    return (output / CHECKPOINT_DIR).exists() or any(output.glob(f"{CHANNEL_PREFIX}*/{CHECKPOINT_DIR}"))


def train_channels(
    image: Image,
    output: str | Path,
    config: TrainConfig = TrainConfig(),
    timepoint: int = 0,
    resume: bool = False,
    progress: Callable[[dict], None] | None = None,
    announce: Callable[[str], None] = print,
) -> ModelSet:
    """One model per channel of ``image`` (at ``timepoint``), each in ``output/channel-C``.

    Channels differ in structure and brightness, so each gets its own network and
    normalisation; the budget (steps, minutes) is per channel. With ``resume``, a channel with
    a checkpoint continues from it and the others start.
    """
    output = Path(output)
    models: dict[int | None, Model] = {}
    for channel in range(image.channels):
        folder = output / channel_folder(channel)
        announce(f"channel {channel + 1}/{image.channels} -> {folder}")
        again = resume and (folder / CHECKPOINT_DIR).exists()
        models[channel] = train(image.volume(timepoint, channel), folder, config, resume=again, progress=progress)
    save_channel_index(output, {c: channel_folder(c) for c in range(image.channels)})
    return ModelSet(models, str(output))
