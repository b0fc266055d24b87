"""One runner per denoiser: each takes a :class:`Case` and returns a :class:`Run`.

Training time (calibration, training, the noise fit) and prediction time are measured apart,
so the table can put the peers on the same training budget and compare prediction speed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from volden import Model, TrainConfig, denoise, load_model, train
from volden.apply import as_output_dtype
from volden.calibrate import calibrate
from volden.divergence import DivergenceGuard, restarts_note
from volden.errors import VoldenError
from volden.normalisation import estimate_normalisation
from volden.predict import resolve_device
from volden.sampler import augment
from volden.synth import Camera, record
from volden.training import build_network, descend, scheduled_lr, train_step  # volden's schedule and guard: N2T differs only in its loss
from volden.views import DEFAULT_VIEWS

from .volumes import Case

HERE = Path(__file__).resolve().parent
CAREAMICS_PYTHON = HERE / ".venv-careamics" / "bin" / "python"
Box = tuple[slice, slice, slice]


class Skip(Exception):
    """A method that cannot run here (a package or environment missing): the table says why."""


@dataclass(frozen=True)
class Settings:
    """What every runner may need: the budgets and the peers' own settings."""

    minutes: float
    careamics_minutes: float
    careamics_patch: str
    careamics_batch: int
    bm4d_crop: tuple[int, int, int]
    train: tuple[tuple[str, object], ...] = ()  # TrainConfig fields set for volden and Noise2Truth

    def train_config(self) -> TrainConfig:
        return TrainConfig(minutes=self.minutes, **dict(self.train))


@dataclass
class Run:
    """A method's output on ``region`` of the volume (None: all of it) and its timings."""

    denoised: np.ndarray
    train_s: float
    predict_s: float
    region: Box | None = None
    note: str = ""


def timed(function, *args, **kwargs):
    """``function(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def raw(case: Case, settings: Settings, work: Path) -> Run:
    return Run(case.noisy.data.compute().astype(np.float32), 0.0, 0.0)


def gaussian(case: Case, settings: Settings, work: Path) -> Run:
    """The Gaussian that ``volden calibrate`` picks without clean data."""
    volume = case.noisy
    found, calibrate_s = timed(calibrate, volume.data, ("gaussian",), volume.voxel_size)
    denoised, predict_s = timed(found.best, volume.data.compute())
    return Run(denoised, calibrate_s, predict_s, note=str(found.best))


def centre_crop(shape: tuple[int, ...], size: tuple[int, ...]) -> Box:
    starts = [(s - min(c, s)) // 2 for s, c in zip(shape, size)]
    return tuple(slice(a, a + min(c, s)) for a, c, s in zip(starts, size, shape))  # type: ignore[return-value]


def noise_model(image: np.ndarray, bins: int = 20) -> tuple[float, float]:
    """(a, b) of the Poisson-Gaussian variance a * mean + b, fitted to the data alone.

    Second differences along x, over sqrt(6), have the noise's variance where the signal is
    locally linear; their robust variance (MAD) in bins of the local mean gives the line.
    """
    residual = (2 * image[..., 1:-1] - image[..., :-2] - image[..., 2:]) / math.sqrt(6)
    local = ndimage.uniform_filter(image, 3)[..., 1:-1]
    edges = np.quantile(local, np.linspace(0, 1, bins + 1))
    means, variances = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = residual[(local >= lo) & (local < hi)]
        if inside.size > 100:
            means.append(float(local[(local >= lo) & (local < hi)].mean()))
            variances.append(float((1.4826 * np.median(np.abs(inside - np.median(inside)))) ** 2))
    a, b = np.polyfit(means, variances, 1)
    return float(a), float(b)


def bm4d(case: Case, settings: Settings, work: Path) -> Run:
    """BM4D on a centre crop, through the generalised Anscombe transform of a noise model
    fitted to the data (BM4D assumes Gaussian noise of one sigma; shot noise is not)."""
    try:
        import bm4d as bm4d_package
    except ImportError:
        raise Skip("bm4d is not installed (pip install bm4d)") from None
    region = centre_crop(case.noisy.shape, settings.bm4d_crop)
    noisy = case.noisy.data[region].compute().astype(np.float32)
    (a, b), fit_s = timed(noise_model, noisy)
    if a <= 0:
        raise Skip(f"no shot noise found (variance {a:.3g} x mean + {b:.3g}): the transform needs it")
    start = time.perf_counter()
    stabilised = 2 * np.sqrt(np.maximum(noisy / a + b / a**2 + 3 / 8, 0))
    filtered = bm4d_package.bm4d(stabilised, 1.0)
    denoised = a * ((filtered / 2) ** 2 - 1 / 8) - b / a  # the asymptotically unbiased inverse
    crop = "x".join(str(s.stop - s.start) for s in region)
    return Run(denoised.astype(np.float32), fit_s, time.perf_counter() - start, region,
               f"crop {crop}; variance {a:.3g} x mean {b:+.3g}")


def careamics(case: Case, settings: Settings, work: Path) -> Run:
    """CAREamics N2V 3D in its own environment (``careamics_worker.py``), same patch and batch
    as volden's CPU defaults unless told otherwise; the worker times training and prediction
    itself, so its start-up (imports) counts in neither."""
    if not CAREAMICS_PYTHON.exists():
        raise Skip(f"no {CAREAMICS_PYTHON}: run bash benchmarks/quality/setup_careamics.sh")
    folder = work / "careamics"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "noisy.npy", case.noisy.data.compute())
    log = folder / "worker.log"
    with log.open("w") as out:
        done = subprocess.run(
            [str(CAREAMICS_PYTHON), str(HERE / "careamics_worker.py"), str(folder / "noisy.npy"), str(folder / "out"),
             "--minutes", str(settings.careamics_minutes), "--patch", settings.careamics_patch,
             "--batch", str(settings.careamics_batch), "--work-dir", str(folder / "work")],
            stdout=out, stderr=subprocess.STDOUT, cwd=folder,
        )
    if done.returncode:
        raise RuntimeError(f"the CAREamics worker failed (exit {done.returncode}); see {log}")
    timings = json.loads((folder / "out.json").read_text())
    return Run(np.load(folder / "out.npy"), timings["train_s"], timings["predict_s"],
               note=f"{timings['steps']} steps, patch {settings.careamics_patch}, batch {settings.careamics_batch}")


def predict_with(model: Model, case: Case, views: int = DEFAULT_VIEWS) -> tuple[np.ndarray, float]:
    """``volden.denoise`` over the whole volume (blocks, halo and blending at their defaults)."""
    return timed(lambda: denoise(case.noisy.data, model, views=views).compute())


def volden_default(case: Case, settings: Settings, work: Path) -> Run:
    model, train_s = timed(train, case.noisy, work / "volden-model", settings.train_config())
    denoised, predict_s = predict_with(model, case)
    return Run(denoised, train_s, predict_s, note=steps_note(model.training["steps_done"], model.training["restarts"]))


def volden_posterior(case: Case, settings: Settings, work: Path) -> Run:
    """``volden train --posterior`` and ``volden.denoise`` (the posterior mean, one pass per
    masking phase), its other settings volden's; a noise curve its check refuses skips the row."""
    config = dataclasses.replace(settings.train_config(), posterior=True)
    try:
        model, train_s = timed(train, case.noisy, work / "volden-posterior-model", config)
    except VoldenError as refused:
        raise Skip(str(refused)) from None
    denoised, predict_s = predict_with(model, case)
    note = steps_note(model.training["steps_done"], model.training["restarts"])
    return Run(denoised, train_s, predict_s, note=f"{note}, {model.noise_curve}")


def steps_note(steps: int, restarts: int) -> str:
    """A training row's note: its steps, and how often ``DivergenceGuard`` took it back."""
    return f"{steps} steps" + restarts_note(restarts)


TTA_VIEWS = 4


def volden_row_model(work: Path) -> Model:
    """The model the ``volden`` row trained, for the rows that predict with it differently."""
    folder = work / "volden-model"
    if not (folder / "model.json").exists():
        raise Skip("no volden model: run the volden method first")
    return load_model(folder)


def volden_tta(case: Case, settings: Settings, work: Path) -> Run:
    """volden's model from the ``volden`` row, predicting with test-time augmentation (the
    prediction averaged over four symmetries of the yx plane: ``volden apply --tta 4``)."""
    model = volden_row_model(work)
    denoised, predict_s = predict_with(model, case, TTA_VIEWS)
    return Run(denoised, model.training["seconds"], predict_s, note=f"{model.training['steps_done']} steps, {TTA_VIEWS} views")


def volden_rounded(case: Case, settings: Settings, work: Path) -> Run:
    """volden's model from the ``volden`` row, its prediction rounded to the input's integers
    (``volden apply --dtype input``): what storing the output at half the bytes costs."""
    model = volden_row_model(work)
    denoised, predict_s = predict_with(model, case)
    rounded = as_output_dtype(denoised, case.noisy.data.dtype).astype(np.float32)
    return Run(rounded, model.training["seconds"], predict_s, note=f"{model.training['steps_done']} steps, rounded")


def noise2truth(case: Case, settings: Settings, work: Path) -> Run:
    """volden's network, patches and learning-rate schedule, trained supervised: the noisy patch
    in, the MSE to the clean patch on every voxel (no mask). What volden would reach if it had
    clean data, for the same time."""
    return trained_on_clean(case, settings, "n2t")


def noise2truth_masked(case: Case, settings: Settings, work: Path) -> Run:
    """Noise2Truth through volden's masks: the masked and filled patch in, the MSE to the clean
    patch on the masked voxels only. volden with clean targets: the gap from volden to it is
    the noise of volden's targets, the gap from it to ``n2t`` what the mask hides."""
    return trained_on_clean(case, settings, "n2t-masked")


def volden_fresh_noise(case: Case, settings: Settings, work: Path) -> Run:
    """volden's training (masks, fill, the loss against the patch itself) on a new recording of
    the clean patch each time, by the camera that recorded the volume: volden with endless noise
    realisations instead of one. The gap from volden to it is what one realisation costs; from
    it to ``n2t-masked``, what the targets' noise costs within the time."""
    return trained_on_clean(case, settings, "fresh")


def trained_on_clean(case: Case, settings: Settings, kind: str) -> Run:
    """The loop of the three methods above, which draw their patches from the clean volume;
    ``kind`` is the method's name. Prediction is on the noisy volume, as for volden."""
    volume = case.noisy
    device = resolve_device("auto")
    config = settings.train_config().resolve(volume.shape, device)
    start = time.perf_counter()
    normalisation = estimate_normalisation(volume.data, seed=config.seed)
    # fresh records the clean volume anew (in ADU); the others pair it with the noisy one
    sources = (case.clean,) if kind == "fresh" else tuple(
        normalisation.apply(a) for a in (volume.data.compute(), case.clean))
    torch.manual_seed(config.seed)
    network = build_network(config, volume.voxel_size, device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    guard = DivergenceGuard(network, optimizer)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    budget_s, steps = config.minutes * 60, 0
    while (elapsed := time.perf_counter() - start) < budget_s:
        for group in optimizer.param_groups:
            group["lr"] = guard.lr_scale * scheduled_lr(config, steps, elapsed / budget_s)
        patches = aligned_patches(sources, config.patch, config.batch, rng, config.flip_z)
        if kind == "fresh":  # a new recording, its own target (train_step's default)
            x, y = torch.from_numpy(normalisation.apply(record(patches[0], Camera(), rng))).to(device), None
        else:
            x, y = (torch.from_numpy(a).to(device) for a in patches)
        if kind == "n2t":
            loss = descend(network, optimizer, x, y, device)
        else:
            loss = train_step(network, optimizer, x, config, generator, device, target=y)
        guard.diverged(loss.item())
        steps += 1
    train_s = time.perf_counter() - start
    network = network.to("cpu", memory_format=torch.contiguous_format).eval()
    denoised, predict_s = predict_with(Model(network, normalisation, {"supervised": kind}), case)
    return Run(denoised, train_s, predict_s, note=steps_note(steps, guard.restarts))


def aligned_patches(volumes: tuple[np.ndarray, ...], patch: tuple[int, int, int], batch: int,
                    rng: np.random.Generator, flip_z: bool = True) -> tuple[np.ndarray, ...]:
    """``batch`` random patches at the same places of each volume, augmented alike (as volden's
    sampler would, z flips included unless ``flip_z`` is off): one (batch, 1, z, y, x) array per
    volume."""
    stacks = []
    for _ in range(batch):
        start = [int(rng.integers(0, n - p + 1)) for n, p in zip(volumes[0].shape, patch)]
        where = tuple(slice(s, s + p) for s, p in zip(start, patch))
        stacks.append(augment(np.stack([v[where] for v in volumes]), rng, flip_z))
    batched = np.stack(stacks)
    return tuple(batched[:, i : i + 1] for i in range(len(volumes)))


METHODS = {
    "raw": raw,
    "gaussian": gaussian,
    "bm4d": bm4d,
    "careamics": careamics,
    "volden": volden_default,
    "volden-tta": volden_tta,
    "volden-rounded": volden_rounded,
    "volden-posterior": volden_posterior,
    "n2t": noise2truth,
    "n2t-masked": noise2truth_masked,
    "volden-fresh": volden_fresh_noise,
}
