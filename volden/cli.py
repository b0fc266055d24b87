"""The ``volden`` command: a thin layer over the Python API.

Bad input ends in one line on stderr (``volden: error: ...``) and exit status 1.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click
from tqdm import tqdm

from ._version import __version__
from .errors import VoldenError
from .finite import NONFINITE
from .views import DEFAULT_VIEWS, VIEWS

Triple = tuple[int, int, int]


class TripleType(click.ParamType):
    """'Z,Y,X' as three integers (or three of another ``number`` type)."""

    name = "Z,Y,X"

    def __init__(self, number: type = int, noun: str = "integers") -> None:
        self.number, self.noun = number, noun

    def convert(self, value, param, ctx) -> Triple:
        if isinstance(value, tuple):
            return value
        try:
            parts = tuple(self.number(v) for v in str(value).split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3:
            self.fail(f"{value!r} is not three {self.noun} Z,Y,X", param, ctx)
        return parts  # type: ignore[return-value]


TRIPLE = TripleType()
FLOAT_TRIPLE = TripleType(float, "numbers")


class PairType(click.ParamType):
    """'MIN:MAX' as two integers."""

    name = "MIN:MAX"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            low, high = (int(v) for v in str(value).split(":"))
        except ValueError:
            self.fail(f"{value!r} is not two integers MIN:MAX", param, ctx)
        return (low, high)


PAIR = PairType()
DEVICE = click.Choice(["auto", "cpu", "cuda"])


@contextmanager
def training_bar() -> Iterator[Callable[[dict], None]]:
    """A progress callback for training that draws its bar on the first step (so an error
    raised before training starts stays one line) and closes it however training ends."""
    bars: list[tqdm] = []

    def show(state: dict) -> None:
        if bars and state["step"] < bars[-1].n:  # the next model of a multichannel run
            bars[-1].close()
        if not bars or bars[-1].disable:
            bars.append(tqdm(total=state["steps"], unit="step", dynamic_ncols=True, file=sys.stderr))
        bar = bars[-1]
        bar.n = state["step"]
        bar.set_postfix(loss=f"{state['loss']:.4f}", vox_s=f"{state['voxels_per_s']:.3g}",
                        elapsed=f"{state['elapsed']:.0f}s", refresh=False)
        bar.refresh()

    try:
        yield show
    finally:
        for bar in bars:
            bar.close()


@contextmanager
def block_bar(unit: str = "block") -> Iterator[Callable[[int, int], None]]:
    """A progress callback counting blocks (or ``unit``s), drawn when the first one is done
    (so an error before that, such as a damaged input, stays one line)."""
    bars: list[tqdm] = []
    first: list[int] = []

    def show(done: int, total: int) -> None:
        if not first:
            first.append(done)
        if not bars and done > first[0]:
            bars.append(tqdm(total=total, initial=first[0], unit=unit, dynamic_ncols=True, file=sys.stderr))
        if bars:
            bars[0].update(done - bars[0].n)

    try:
        yield show
    finally:
        for bar in bars:
            bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="volden")
def cli() -> None:
    """Self-supervised (Noise2Self) denoising of large 3D microscopy volumes."""


@cli.command()
@click.argument("output", type=click.Path())
@click.option("--kind", type=click.Choice(["nuclei", "neurites", "mixed"]), default="nuclei", show_default=True)
@click.option("--shape", type=TRIPLE, default="64,256,256", show_default=True)
@click.option("--photons", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Expected photons at the brightest structures.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--chunks", type=TRIPLE, default="32,128,128", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def synth(output, kind, shape, photons, seed, chunks, overwrite) -> None:
    """Write a synthetic camera-like volume (image 'noisy') and its clean expectation ('clean')."""
    from .synth import write_synthetic

    write_synthetic(output, shape=shape, kind=kind, photons=photons, seed=seed, chunks=chunks, overwrite=overwrite)
    click.echo(f"wrote {output}: arrays 'noisy' (uint16, the OME-Zarr image) and 'clean' (float32), shape {shape}")


@cli.command()
@click.argument("input", type=click.Path())
@click.option("-o", "--output", "model_path", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--array", default=None, help="Array (or image group) inside INPUT.")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Train on this channel only (default: one model per channel).")
@click.option("--timepoint", type=click.IntRange(min=0), default=0, show_default=True,
              help="The time point to train on.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this much time (default 10 when --steps is not given).")
@click.option("--patch", type=TRIPLE, default=None, help="Training patch (default: 16,64,64 on CPU, 32,96,96 on GPU).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Patches per step (default 4 CPU, 8 GPU).")
@click.option("--grid", type=TRIPLE, default="2,2,2", show_default=True, help="J-partition grid.")
@click.option("--masked-phases", type=int, default=2, show_default=True,
              help="Phases of the grid masked together in each patch.")
@click.option("--fill", type=click.Choice(["donut", "neighbour", "random"]), default="donut", show_default=True,
              help="What the masked voxels get: their non-masked neighbours' mean, one such neighbour's value, or any voxel's.")
@click.option("--background-tries", type=int, default=1, show_default=True,
              help="Draws per patch, the first bright enough (or the brightest) kept: above 1 favours foreground.")
@click.option("--flip-z/--no-flip-z", default=True, show_default=True,
              help="Augment with flips along z too; turn off when the axial PSF is not symmetric.")
@click.option("--depth", type=click.IntRange(min=0), default=None, help="UNet depth (default 2 CPU, 3 GPU).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="UNet base width (default 8 CPU, 32 GPU).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-mb", type=float, default=512.0, show_default=True,
              help="Memory for the regions the patches are drawn from.")
@click.option("--nonfinite", type=click.Choice(NONFINITE), default="refuse", show_default=True,
              help="NaN or Inf input voxels: refuse the input, or fill them with the mean of the others.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the model folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder.")
@click.option("--posterior", is_flag=True,
              help="Train a prior (mean and variance) with the camera's noise curve fitted from INPUT; apply then "
                   "outputs the posterior mean, at one pass per masking phase (Laine et al. 2019).")
def train(input, model_path, array, channel, timepoint, steps, minutes, patch, batch, grid, masked_phases, fill,
          background_tries, flip_z, depth, width, device, seed, cache_mb, nonfinite, resume, overwrite,
          posterior) -> None:
    """Train a Noise2Self denoiser on INPUT (no clean data needed).

    A multichannel INPUT gets one model per channel (MODEL/channel-C, the budget per channel)
    unless --channel picks one.
    """
    from .finite import check_finite, filled_volume
    from .model import is_model_folder
    from .paths import check_output_path
    from .runlock import RunLock, clear_folder, is_vacant
    from .training import TrainConfig, has_checkpoint, train_channels
    from .training import train as run_training
    from .volume import open_image

    config = TrainConfig(patch=patch, batch=batch, grid=grid, masked_phases=masked_phases, fill=fill,
                         background_tries=background_tries, flip_z=flip_z, steps=steps, minutes=minutes,
                         depth=depth, width=width, device=device, seed=seed, cache_mb=cache_mb,
                         posterior=posterior)
    image = open_image(input, array)
    each_channel = channel is None and image.channels > 1
    volume = image.volume(timepoint, channel or 0)
    target = Path(model_path)
    check_output_path(input, target, overwrite=True)

    def check_target() -> None:
        if resume and not has_checkpoint(target):
            raise VoldenError(f"{model_path} has no checkpoint to resume from")
        if not resume and target.exists() and not is_vacant(target):
            if not overwrite:
                raise VoldenError(f"{model_path} exists; pass --overwrite to replace it or --resume to continue it")
            if not (is_model_folder(target) or has_checkpoint(target)):
                raise VoldenError(f"{model_path} exists and is not a volden model folder; choose another path")

    check_target()
    if nonfinite == "refuse":
        check_finite([image.volume(timepoint, c) for c in range(image.channels)] if each_channel else [volume],
                     image.where)
    elif not each_channel:
        volume, count = filled_volume(volume, image.where)
        if count:
            click.echo(f"filled {count} NaN or Inf voxels of {image.where} with the mean of the others", err=True)
    elif image.data.dtype.kind in "fc":
        raise VoldenError("--nonfinite fill trains one channel at a time: pick it with --channel")
    with RunLock(target, "train"), training_bar() as show:
        check_target()
        if not resume and target.exists():
            clear_folder(target)
        if each_channel:
            announce = lambda line: click.echo(line, err=True)  # noqa: E731
            trained = list(train_channels(image, target, config, timepoint, resume, show, announce).models.values())
        else:
            trained = [run_training(volume, target, config, resume=resume, progress=show)]
    for model in trained:
        last = model.history[-1] if model.history else {}
        click.echo(f"saved {model.path} ({model.training['kept']} weights of {last.get('step', 0)} steps kept; validation "
                   f"loss last {last.get('val_loss', math.nan):.5f}, best {model.training['best_val_loss']:.5f}; "
                   f"loss curve in {Path(str(model.path)) / 'loss.png'})")
        if restarts := model.training["restarts"]:
            click.echo(f"training diverged {restarts} time{'s' * (restarts > 1)} and went back to earlier weights "
                       "at half the learning rate each time")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--array", default=None, help="Array (or image group) inside INPUT.")
@click.option("--block", type=TRIPLE, default=None, help="Output block (default: the largest tile the device takes).")
@click.option("--halo", type=TRIPLE, default=None, help="Halo around each block (default from the network).")
@click.option("--blend", type=click.Choice(["gaussian", "linear", "crop"]), default="gaussian", show_default=True)
@click.option("--tta", type=click.Choice([str(v) for v in VIEWS]), default=str(DEFAULT_VIEWS), show_default=True,
              help="Test-time augmentation: average over this many symmetries of the yx plane (that many times the compute).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "input"]), default="float32", show_default=True,
              help="'input' rounds to the input's integers: half the bytes for uint16, but a denoised "
                   "dim volume loses detail finer than one unit (4.4 dB at 5 photons per voxel).")
@click.option("--ome-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True)
@click.option("--channel", "channels", type=click.IntRange(min=0), multiple=True,
              help="Denoise only this channel (repeatable; default all).")
@click.option("--timepoint", "timepoints", type=click.IntRange(min=0), multiple=True,
              help="Denoise only this time point (repeatable; default all).")
@click.option("--pyramid", type=click.IntRange(min=0), default=0, show_default=True,
              help="Downsampled levels to add for viewers (y and x halved each level; z once no coarser).")
@click.option("--nonfinite", type=click.Choice(NONFINITE), default="refuse", show_default=True,
              help="NaN or Inf input voxels: refuse the input, or fill them with the model's mean intensity "
                   "(the count goes into OUTPUT's provenance).")
@click.option("--resume", is_flag=True, help="Finish an interrupted run into OUTPUT (or start it).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--cluster", default="local", show_default=True, help="local, slurm, or a scheduler address tcp://HOST:PORT.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes.")
@click.option("--jobs", type=int, default=None, help="SLURM: worker jobs (one worker each; default 1).")
@click.option("--adapt", type=PAIR, default=None, help="SLURM: MIN:MAX worker jobs, scaled to the work.")
@click.option("--partition", default=None, help="SLURM partition (default: jobqueue.slurm.queue).")
@click.option("--account", default=None, help="SLURM account (default: jobqueue.slurm.account).")
@click.option("--walltime", default=None, help="SLURM job time limit, [D-]HH:MM:SS; workers retire before it.")
@click.option("--gpus-per-job", type=click.IntRange(min=0), default=None, help="SLURM: GPUs per worker job.")
@click.option("--gpu-flag", type=click.Choice(["gres", "gpus"]), default="gres", show_default=True,
              help="SLURM: ask for GPUs as --gres=gpu:N or --gpus=N.")
@click.option("--cores", type=click.IntRange(min=1), default=None, help="SLURM: cores per worker job.")
@click.option("--memory", default=None, help="SLURM: memory per worker job, e.g. 32GB.")
@click.option("--job-extra", multiple=True, help="SLURM: an extra #SBATCH directive (repeatable).")
@click.option("--no-tls", is_flag=True, help="SLURM: plain TCP instead of TLS (only on a trusted network).")
def apply(model_path, input, output, array, block, halo, blend, tta, device, dtype, ome_version, channels, timepoints,
          pyramid, nonfinite, resume, overwrite, cluster, workers, jobs, adapt, partition, account, walltime, gpus_per_job,
          gpu_flag, cores, memory, job_extra, no_tls) -> None:
    """Denoise INPUT with MODEL into the OME-Zarr OUTPUT, block by block on a local Dask cluster.

    An image with time points or channels is denoised one 3D volume at a time, each channel
    with its own model when MODEL holds one per channel. Finished blocks are recorded in OUTPUT
    as they are written; after a kill, the same command with --resume computes only the rest.
    """
    from .apply import ApplyConfig, apply_model, resumable_plan
    from .cluster import ClusterConfig, open_client
    from .ledger import Ledger
    from .inference import plan_blocks
    from .model import load_models
    from .paths import check_output_path
    from .runlock import RunLock
    from .volume import open_image

    config = ApplyConfig(block=block, halo=halo, blend=blend, tta=int(tta), device=device, dtype=dtype,
                         overwrite=overwrite, resume=resume, ome_version=ome_version,
                         channels=channels or None, timepoints=timepoints or None, pyramid=pyramid,
                         nonfinite=nonfinite)
    where = ClusterConfig(cluster=cluster, workers=workers, jobs=jobs, adapt=adapt, partition=partition,
                          account=account, walltime=walltime, gpus_per_job=gpus_per_job, gpu_flag=gpu_flag,
                          cores=cores, memory=memory, job_extra=tuple(job_extra), tls=not no_tls)
    models = load_models(model_path)
    image = open_image(input, array)
    picked, picked_timepoints = image.select(config.channels, config.timepoints)
    volumes = [image.volume(picked_timepoints[0], channel) for channel in picked]
    for volume in volumes:
        model = models.for_channel(volume.channel)
        if block:
            plan_blocks(model, volume.shape, block, halo)
    check_output_path(input, output, overwrite or resume)
    if resume:
        resumable_plan(Path(output), Ledger(output))
    tile_resources = {"GPU": 1} if gpus_per_job else None
    with RunLock(output, "apply") as lock, open_client(where) as client, block_bar() as show:
        if cluster != "local":
            click.echo(f"scheduler {client.scheduler.address}; dashboard {client.dashboard_link}", err=True)
        try:
            report = apply_model(models, image, output, config, client=client, progress=show,
                                 tile_resources=tile_resources, lock=lock)
        except VoldenError:
            raise
        except Exception as err:
            ledger = Ledger(output)
            if not ledger.exists():
                raise
            raise VoldenError(
                f"{type(err).__name__}: {err}; {output} is unfinished ({ledger.done_count()} blocks done): "
                "run the same command with --resume to finish it"
            ) from err
    resumed = f", {report.blocks_done_before} were done before" if report.blocks_done_before else ""
    voxels = volumes[0].data.size * report.volumes * report.blocks_written / report.blocks
    several = f" in {report.volumes} volumes" if report.volumes > 1 else ""
    click.echo(
        f"wrote {output}: {report.blocks_written} of {report.blocks} blocks{several} of {','.join(map(str, report.block))} "
        f"(halo {','.join(map(str, report.halo))}){resumed}; {voxels / report.seconds:.3g} voxels/s ({report.seconds:.1f} s)"
    )


@cli.command()
@click.argument("input", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--voxel-size", type=FLOAT_TRIPLE, default=None, help="Voxel size Z,Y,X (default: from the file's metadata).")
@click.option("--unit", default=None, help="Unit of the voxel size, e.g. micrometer (default: the metadata's).")
@click.option("--ome-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def ingest(input, output, voxel_size, unit, ome_version, overwrite) -> None:
    """Convert a TIFF / OME-TIFF stack, a folder of 2D TIFF slices, a BigDataViewer dataset (its
    XML, with HDF5 or N5), an N5 dataset or a CZI file into an OME-Zarr image, a plane or a slab
    at a time (never the whole image in memory)."""
    from .ingest import ingest_image

    with block_bar("plane") as show:
        done = ingest_image(input, output, voxel_size=voxel_size, unit=unit, ome_version=ome_version,
                            overwrite=overwrite, progress=show)
    source, meta = done.source, done.meta
    shards = f" in shards of {','.join(map(str, done.shards))}" if done.shards else ""
    click.echo(
        f"wrote {output}: {'x'.join(map(str, source.shape))} ({','.join(source.axes)}) {source.dtype}, voxel size "
        f"{','.join(f'{v:g}' for v in meta.voxel_size)}{' ' + meta.unit if meta.unit else ''} ({done.voxel_note}), "
        f"chunks {','.join(map(str, done.chunks))}{shards}; {source.planes} planes from {source.origin()} in "
        f"{done.seconds:.1f} s ({source.nbytes / 1e6 / done.seconds:.3g} MB/s)"
    )


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--array", default=None, help="Array (or image group) inside PATH.")
def info(path, array) -> None:
    """Shape, dtype, chunks and voxel size of a volume; progress and provenance of a volden
    output; the training summary of a model."""
    from .info import describe

    for line in describe(path, array):
        click.echo(line)


@cli.command()
@click.argument("input", type=click.Path())
@click.argument("denoised", type=click.Path(), required=False)
@click.option("-o", "--output", required=True, type=click.Path(), help="Image to write (e.g. view.png).")
@click.option("--at", type=TRIPLE, default=None, help="Point the slices go through (default: the centre).")
@click.option("--array", default=None, help="Array (or image group) inside INPUT.")
@click.option("--channel", type=click.IntRange(min=0), default=None, help="Channel of a multichannel image.")
@click.option("--timepoint", type=click.IntRange(min=0), default=None, help="Time point of a time series.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def preview(input, denoised, output, at, array, channel, timepoint, overwrite) -> None:
    """Orthogonal slices (xy, xz, yz) of INPUT and, below them, of DENOISED, in one contrast."""
    from .preview import PERCENTILES, save_preview

    shown = save_preview(input, output, denoised, array=array, channel=channel, timepoint=timepoint, at=at,
                         overwrite=overwrite)
    low, high = shown.display_range
    click.echo(f"display range {low:.6g} to {high:.6g} for every row "
               f"(the {PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentiles of the slices of {shown.range_from})")
    click.echo(f"wrote {output}: xy, xz, yz through z,y,x = {','.join(map(str, shown.at))}")


@cli.command()
@click.argument("folder", type=click.Path(), default="volden-demo")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True)
@click.option("--kind", type=click.Choice(["nuclei", "neurites", "mixed"]), default="nuclei", show_default=True)
@click.option("--shape", type=TRIPLE, default="64,256,256", show_default=True)
@click.option("--photons", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
def demo(folder, minutes, kind, shape, photons) -> None:
    """synth -> train -> apply on a local cluster -> PSNR before and after, and a PNG."""
    from .demo import run_demo

    with training_bar() as show:
        run_demo(Path(folder), minutes=minutes, kind=kind, shape=shape, photons=photons, echo=click.echo, progress=show)


def sampling_options(command: Callable) -> Callable:
    """The options saying where the self-supervised loss is measured (calibrate and eval)."""
    for option in reversed([
        click.option("--blocks", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Blocks measured, drawn at random."),
        click.option("--block", type=TRIPLE, default="32,64,64", show_default=True, help="Largest block measured."),
        click.option("--phases", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Masking phases per block (27: every voxel of the block)."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]):
        command = option(command)
    return command


@cli.command()
@click.argument("input", type=click.Path())
@click.option("--method", type=click.Choice(["gaussian", "median", "all"]), default="gaussian", show_default=True)
@click.option("-o", "--report", type=click.Path(), default=None, metavar="REPORT",
              help="Folder for calibration.json (every loss) and calibration.png (loss against parameter).")
@click.option("--apply", "denoised", type=click.Path(), default=None, metavar="OUT.zarr",
              help="Write the best denoiser's output (float32 OME-Zarr) here, block by block.")
@click.option("--array", default=None, help="Array (or image group) inside INPUT.")
@click.option("--channel", type=click.IntRange(min=0), default=None, help="Channel of a multichannel image.")
@click.option("--timepoint", type=click.IntRange(min=0), default=None, help="Time point of a time series.")
@sampling_options
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows of the ranking shown.")
@click.option("--ome-version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the --apply output and the report's files.")
def calibrate(input, method, report, denoised, array, channel, timepoint, blocks, block, phases, seed, top,
              ome_version, overwrite) -> None:
    """Choose a classic denoiser's parameters for INPUT without clean data.

    Every Gaussian (sigma along z and laterally) or median (ball radius) of a grid is made
    J-invariant by masking and scored by its self-supervised loss on a random sample of blocks,
    next to the raw input's: the ranking the clean volume would give. The loss is the one
    `volden eval` reports for models, so the best filter can be compared with them there.
    """
    from .calibrate import calibrate as run_calibration
    from .calibrate import check_outputs, write_denoised, write_report
    from .jinvariant import Identity, ranking_lines
    from .volume import open_volume

    volume = open_volume(input, array, channel=channel, timepoint=timepoint)
    check_outputs(input, report, denoised, overwrite)
    methods = ("gaussian", "median") if method == "all" else (method,)
    found = run_calibration(volume.data, methods, volume.voxel_size, blocks, block, phases, seed=seed)
    named = [(str(c), loss) for c, loss in found.ranked[:top]] + [(str(Identity()), found.input_loss)]
    for line in ranking_lines(named, found.voxels, len(found.blocks), input):
        click.echo(line)
    click.echo(f"best: {found.best}; beside a model: volden eval MODEL --input {input} --classic {found.best}")
    if report:
        about = {"input": input, "array": volume.array_path, "voxel_size": volume.voxel_size, "methods": list(methods),
                 "phases_per_block": phases, "seed": seed}
        click.echo(f"wrote {', '.join(map(str, write_report(found, report, about)))}")
    if denoised:
        write_denoised(volume, found.best, denoised, overwrite, ome_version)
        click.echo(f"wrote {denoised}: {found.best} of {input}")


@cli.command("eval")
@click.argument("denoised", nargs=-1, type=click.Path(), metavar="[DENOISED]...")
@click.option("--input", "noisy", type=click.Path(), default=None,
              help="The noisy volume: what models and --classic filters denoise and, without --reference, "
                   "what they are scored on.")
@click.option("--reference", type=click.Path(), default=None, help="A clean volume: score PSNR and SSIM against it.")
@click.option("--classic", multiple=True, metavar="METHOD:SIZE",
              help="A classic filter of --input, scored too: gaussian:SIGMA or median:RADIUS (lateral voxels, z "
                   "scaled by the voxel size), or METHOD:Z,Y,X; repeatable.")
@click.option("--channel", type=click.IntRange(min=0), default=None, help="Channel of multichannel images.")
@click.option("--timepoint", type=click.IntRange(min=0), default=None, help="Time point of time series.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@sampling_options
def evaluate(denoised, noisy, reference, classic, channel, timepoint, device, blocks, block, phases, seed) -> None:
    """Rank denoisers: DENOISED volumes or model folders, --classic filters and the raw --input.

    \b
    volden eval denoised.zarr --reference vol.zarr/clean --input vol.zarr
    volden eval model other-model --input vol.zarr --classic gaussian:1.25 --classic median:2

    With --reference CLEAN: PSNR and SSIM of each against it, block by block (models and
    filters denoise --input lazily for this). Without: the self-supervised loss on --input,
    lower is better. Each model and filter is made J-invariant by masking and scored on noisy
    voxels it did not see, in the region the models held out in training; the ranking is the
    one the clean volume would give, on the scale of `volden calibrate`. A denoised volume has
    no such loss: score the model that made it. A path inside a zarr group names an array in
    it (vol.zarr/clean). The options on blocks and phases apply without --reference.
    """
    from .evaluate import run_eval

    for line in run_eval(denoised, noisy, reference, classic, channel, timepoint, device, blocks, block, phases, seed):
        click.echo(line)


@cli.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.argument("output", metavar="OUT.zip", type=click.Path())
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Channel whose model to export, from a model per channel (MODEL/channel-C).")
@click.option("--overwrite", is_flag=True, help="Replace OUT.zip if it exists.")
def export(model_path, output, channel, overwrite) -> None:
    """Write MODEL as a bioimage.io model package (spec 0.5) for the BioImage Model Zoo,
    deepImageJ, ilastik and bioimageio.core; needs the extra volden[bioimageio]."""
    from .export import export_bioimageio

    done = export_bioimageio(model_path, output, channel=channel, overwrite=overwrite)
    zyx = ",".join
    click.echo(f"wrote {output}: bioimage.io model (spec 0.5, pytorch_state_dict and torchscript weights); input "
               f"z,y,x at least {zyx(map(str, done.min_shape))} in steps of {zyx(map(str, done.step))}; tile with a "
               f"halo of {zyx(map(str, done.halo))} voxels per side")


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit status 1."""
    try:
        cli.main(standalone_mode=False)
    except VoldenError as err:
        click.echo(f"volden: error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("volden: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
