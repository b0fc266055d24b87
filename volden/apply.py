"""``volden apply``: denoise a volume into a new OME-Zarr, block by block, resumably.

Memory stays bounded by a few tiles whatever the volume size, because blocks exchange their
overlaps through disk, not through the cluster's memory: a *tile task* reads one haloed tile
straight from the input store, predicts it and saves its weighted prediction, cut into the
pieces each neighbouring block needs, to the run's ledger; a *block task* sums the pieces of
the tiles around its block, normalises, writes the block's region of the output (aligned to its
chunks, so writes never collide) and records the block as done; a *drop task* deletes a tile's
pieces once every block it reaches is done. Dask moves only tiny tokens between tasks.

Every step is idempotent and recorded, so a worker lost mid-run has its tasks redone elsewhere
and a killed run resumes (``resume=True``) with only the blocks that were not recorded. The
output is created with ``status: running`` and declared an OME-Zarr image only when every block
(and the pyramid, if asked for) is in.

An image with time points or channels is denoised one 3D volume at a time, each with its
channel's model, but all volumes' tasks go into one graph so a cluster works on them together.
The output keeps the input's axes, scale, units and channels.

One run at a time writes an output: the run holds the output's lock (:mod:`volden.runlock`)
from before its first write until it is complete, and a second run is refused naming the
holder. An input chunk that cannot be read stops the run with its name (:mod:`volden.damage`);
a run that had just started removes what it wrote, since no resume can help.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import dask
import dask.threaded
import numpy as np
import zarr
from distributed import Client, as_completed

from . import ome
from ._version import __version__
from .errors import VoldenError
from .damage import DamagedInput, read_box
from .finite import NONFINITE, check_finite, fill_nonfinite
from .inference import blend_block, plan_blocks, predict_tile, tile_geometry
from .ledger import Index, Ledger
from .layout import chunks_within
from .model import Model, ModelSet
from .paths import check_output_path
from .predict import default_halo, max_voxels_for, resolve_device
from .pyramid import write_pyramid
from .runlock import RunLock, clear_folder, is_vacant
from .tiling import BLENDS, Blend, Tiling, intersect
from .views import DEFAULT_VIEWS, VIEWS
from .volume import Image, Volume, VolumeView

OUTPUT_DTYPES = ("float32", "input")
PLAN_KEYS = ("input", "array", "shape", "channels", "timepoints", "model_sha256", "block", "halo", "blend", "tta",
             "dtype", "ome_version", "pyramid", "nonfinite")
PLAN_BEFORE = {"tta": DEFAULT_VIEWS, "nonfinite": "refuse"}  # what runs did before their plans recorded these keys


@dataclass(frozen=True)
class ApplyConfig:
    """What ``volden apply`` takes besides the paths."""

    block: tuple[int, int, int] | None = None
    halo: tuple[int, int, int] | None = None
    blend: Blend = "gaussian"
    tta: int = DEFAULT_VIEWS  # test-time augmentation: views (symmetries of the yx plane) averaged
    device: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    resume: bool = False
    ome_version: str = "0.5"
    channels: tuple[int, ...] | None = None  # None: all
    timepoints: tuple[int, ...] | None = None  # None: all
    pyramid: int = 0  # downsampled levels below level 0
    nonfinite: str = "refuse"  # NaN/Inf input voxels: refuse the input, or fill them (volden.finite)

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise VoldenError(f"--blend must be one of {', '.join(BLENDS)}")
        if self.tta not in VIEWS:
            raise VoldenError(f"--tta must be one of {', '.join(map(str, VIEWS))}")
        if self.dtype not in OUTPUT_DTYPES:
            raise VoldenError(f"--dtype must be one of {', '.join(OUTPUT_DTYPES)}")
        if self.ome_version not in ome.OME_VERSIONS:
            raise VoldenError(f"--ome-version must be one of {', '.join(ome.OME_VERSIONS)}")
        if self.block and min(self.block) < 1:
            raise VoldenError(f"--block {self.block}: every size must be positive")
        if self.halo and min(self.halo) < 0:
            raise VoldenError(f"--halo {self.halo}: sizes cannot be negative")
        if self.pyramid < 0:
            raise VoldenError(f"--pyramid {self.pyramid}: the number of levels cannot be negative")
        if self.nonfinite not in NONFINITE:
            raise VoldenError(f"--nonfinite must be one of {', '.join(NONFINITE)}")
        if self.overwrite and self.resume:
            raise VoldenError("--overwrite and --resume exclude each other: replace OUTPUT or finish it")


@dataclass(frozen=True)
class ApplyReport:
    """What one call of :func:`apply_model` did."""

    output: Path
    volumes: int
    blocks: int
    blocks_done_before: int
    blocks_written: int
    tiles_predicted: int
    block: tuple[int, int, int]
    halo: tuple[int, int, int]
    seconds: float


class BlockRun:
    """Everything a worker needs for the tasks of one run; one graph key, shipped once."""

    def __init__(
        self, model: Model, source: Any, where: str, target: zarr.Array, tiling: Tiling, blend: Blend, views: int,
        device: str, max_voxels: int, ledger: Ledger, fill: float | None,
    ) -> None:
        self.model, self.source, self.where, self.target = model, source, where, target
        self.tiling, self.blend, self.views, self.device, self.ledger = tiling, blend, views, device, ledger
        self.max_voxels, self.fill = max_voxels, fill

    def reaches(self, index: Index) -> list[Index]:
        """The blocks a tile's prediction falls into, in neighbour order."""
        tile = self.tiling.tile_range(index)
        return [n for n in self.tiling.neighbours(index) if intersect(tile, self.tiling.block_range(n))]

    def predict(self, index: Index) -> int:
        """Predict one tile and save its pieces; 1 if the network ran, 0 if nothing was left to do."""
        reaches = self.reaches(index)
        if self.ledger.has_tile(index) or all(self.ledger.is_done(n) for n in reaches):
            return 0
        inside, pad, block_shape = tile_geometry(self.tiling, index)
        region = read_box(self.source, inside, self.where)
        if self.fill is not None:
            region = fill_nonfinite(region, self.fill)
        weighted = predict_tile(self.model, region, pad, block_shape, self.tiling.halo, self.blend, self.device,
                                self.max_voxels, self.views)
        tile = self.tiling.tile_range(index)
        pieces = {n: weighted[intersect(tile, self.tiling.block_range(n))[0]] for n in reaches}
        self.ledger.save_pieces(index, pieces)
        return 1

    def assemble(self, index: Index) -> int:
        """Blend, write and record one block; 1 if written now, 0 if it was already done."""
        if self.ledger.is_done(index):
            return 0
        block_range = self.tiling.block_range(index)
        pieces, placements = [], []
        for n in self.tiling.neighbours(index):
            overlap = intersect(self.tiling.tile_range(n), block_range)
            if overlap is not None:
                pieces.append(self.ledger.load_piece(n, index))
                placements.append(overlap[1])
        values = blend_block(self.model, pieces, placements, self.tiling, index, self.blend)
        self.target[tuple(slice(a, b) for a, b in block_range)] = as_output_dtype(values, self.target.dtype)
        self.ledger.mark_done(index)
        return 1


def as_output_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float32 output values in the output's dtype: integers rounded and clipped to its range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


# A damaged input chunk is passed on as a value, not raised: the blocks it reaches are not
# written, the run ends with its one-line error, and workers log no traceback for it.


def _failed(results: tuple) -> DamagedInput | None:
    return next((r for r in results if isinstance(r, DamagedInput)), None)


def _predict_task(run: BlockRun, index: Index) -> int | DamagedInput:
    try:
        return run.predict(index)
    except DamagedInput as err:
        return err


def _assemble_task(run: BlockRun, index: Index, *tiles_ready: int | DamagedInput) -> int | DamagedInput:
    return _failed(tiles_ready) or run.assemble(index)


def _drop_task(run: BlockRun, index: Index, *blocks_written: int | DamagedInput) -> None:
    if not _failed(blocks_written):
        run.ledger.drop_pieces(index)


def _graph(run: BlockRun, todo: list[Index]) -> tuple[dict, list, list, list]:
    """Tasks for the blocks in ``todo``: tile keys, block keys, drop keys."""
    token = dask.base.tokenize(str(run.ledger.done_dir), run.tiling, todo)
    run_key = f"volden-run-{token}"
    tiles = sorted({n for index in todo for n in run.tiling.neighbours(index)})
    graph: dict = {run_key: run}
    for index in tiles:
        graph[("volden-tile", token, *index)] = (_predict_task, run_key, index)
    for index in todo:
        ready = [("volden-tile", token, *n) for n in run.tiling.neighbours(index)]
        graph[("volden-block", token, *index)] = (_assemble_task, run_key, index, *ready)
    pending = set(todo)
    for index in tiles:
        written = [("volden-block", token, *n) for n in run.reaches(index) if n in pending]
        graph[("volden-drop", token, *index)] = (_drop_task, run_key, index, *written)
    keys = [[("volden-" + kind, token, *i) for i in group] for kind, group in (("tile", tiles), ("block", todo), ("drop", tiles))]
    return graph, keys[0], keys[1], keys[2]


def _worker_budget(device: str, width: int) -> int:
    return max_voxels_for(resolve_device(device), width)


def _block_budget(client: Client | None, device: str, width: int) -> int:
    """Voxels one forward pass takes on the smallest device that will run it."""
    if client is None:
        return _worker_budget(device, width)
    budgets = client.run(_worker_budget, device, width, on_error="ignore")  # a worker lost meanwhile has no say
    return min(budgets.values()) if budgets else _worker_budget(device, width)


def _plan(
    image: Image, config: ApplyConfig, selection: tuple[list[int], list[int]], digest: str | dict[str, str], block,
    halo, max_voxels: int,
) -> dict[str, Any]:
    """What a resume must match (``PLAN_KEYS``), and the forward-pass size every tile keeps to,
    so that a tile gives the same bytes on any worker and in any run."""
    channels, timepoints = selection
    dtype = str(image.data.dtype) if config.dtype == "input" else "float32"
    return {
        "input": str(Path(image.path).resolve()),
        "array": image.array_path,
        "shape": list(image.shape),
        "channels": channels,
        "timepoints": timepoints,
        "model_sha256": digest,
        "block": list(block),
        "halo": list(halo),
        "blend": config.blend,
        "tta": config.tta,
        "dtype": dtype,
        "ome_version": config.ome_version,
        "pyramid": config.pyramid,
        "nonfinite": config.nonfinite,
        "max_voxels": max_voxels,
    }


def resumable_plan(output: Path, ledger: Ledger) -> dict[str, Any] | None:
    """The plan of an unfinished run in ``output``; None when there is nothing to resume."""
    if not output.exists() or is_vacant(output):
        return None
    status = _status(output)
    if status == "complete":
        raise VoldenError(f"{output} is already complete; nothing to resume")
    if status != "running" or not ledger.exists():
        raise VoldenError(f"{output} exists but is not an unfinished volden run; pass --overwrite to replace it")
    return {**PLAN_BEFORE, **ledger.plan()}


def _status(output: Path) -> str | None:
    try:
        return zarr.open_group(str(output), mode="r").attrs.get("volden", {}).get("status")
    except Exception:
        return None


def _check_same_run(previous: dict[str, Any], wanted: dict[str, Any], output: Path, config: ApplyConfig) -> None:
    explicit = {"block": config.block is not None, "halo": config.halo is not None}
    for key in PLAN_KEYS:
        if key in explicit and not explicit[key]:
            continue
        if previous.get(key) != wanted[key]:
            raise VoldenError(
                f"cannot resume {output}: it was started with {key} {previous.get(key)}, not {wanted[key]}; "
                "resume with the same input, model and settings, or pass --overwrite to start again"
            )


def _plan_blocks(
    models: list[Model], shape: tuple[int, int, int], block, halo, budget: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One block and halo for every volume: the widest reach of the channels' networks."""
    if halo is None:
        reach = [default_halo(m) for m in models]
        halo = tuple(max(h[a] for h in reach) for a in range(3))
    block, halo = plan_blocks(models[0], shape, block, halo, budget)
    for model in models[1:]:
        plan_blocks(model, shape, block, halo)
    return block, halo


def output_shape(image: Image, selection: tuple[list[int], list[int]]) -> tuple[int, ...]:
    """The input's shape with only the selected channels and time points."""
    channels, timepoints = selection
    sizes = {"t": len(timepoints), "c": len(channels)}
    return tuple(sizes.get(axis, n) for axis, n in zip(image.meta.axes, image.shape))


def apply_model(
    model: Model | ModelSet,
    image: Image,
    output: str | Path,
    config: ApplyConfig = ApplyConfig(),
    client: Client | None = None,
    progress: Callable[[int, int], None] | None = None,
    tile_resources: dict[str, float] | None = None,
    lock: RunLock | None = None,
) -> ApplyReport:
    """Denoise ``image`` into the OME-Zarr ``output``; ``progress(done, total)`` per block.

    Every selected time point and channel (``config.channels``/``timepoints``, default all) is
    denoised with its channel's model. With ``config.resume`` an unfinished run in ``output``
    is continued (its block and halo are kept) and a missing ``output`` is started.
    ``tile_resources`` (e.g. ``{"GPU": 1}``) is what each tile task holds on its worker, so one
    network pass at a time uses a device. A run that fails or is killed leaves ``output``
    marked ``running`` with its ledger, ready to resume; one that finds its input damaged
    removes what it wrote, unless it was resuming. ``config.nonfinite`` says what NaN and Inf
    input voxels do (:mod:`volden.finite`). ``lock`` is ``output``'s lock when the caller holds
    it already (the command takes it before it starts a cluster, so a refused run starts none).
    """
    start = time.perf_counter()
    models, output = ModelSet.of(model), Path(output)
    if lock is None:  # a caller holding the lock checked the path before taking it (which made the folder)
        check_output_path(image.path, output, config.overwrite or config.resume)
    selection = image.select(config.channels, config.timepoints)
    volumes = [image.volume(t, c) for t in selection[1] for c in selection[0]]
    volume_models = [models.for_channel(v.channel) for v in volumes]
    filled = check_finite(volumes, image.where, config.nonfinite)
    with nullcontext(lock) if lock else RunLock(output, "apply") as lock:
        previous = resumable_plan(output, Ledger(output)) if config.resume else None
        if previous is None and not config.overwrite and not is_vacant(output):
            raise VoldenError(f"{output} exists; pass --overwrite to replace it")
        try:
            return _apply_locked(models, image, output, config, selection, volumes, volume_models, previous, filled,
                                 client, progress, tile_resources, lock, start)
        except DamagedInput as err:
            if previous is None:
                clear_folder(output)
            kept = "nothing was written" if previous is None else f"{output} keeps the blocks finished before"
            raise DamagedInput(f"{err} ({kept})") from None


def _apply_locked(
    models: ModelSet, image: Image, output: Path, config: ApplyConfig, selection: tuple[list[int], list[int]],
    volumes: list[Volume], volume_models: list[Model], previous: dict[str, Any] | None, filled: int,
    client: Client | None,
    progress: Callable[[int, int], None] | None, tile_resources: dict[str, float] | None, lock: RunLock, start: float,
) -> ApplyReport:
    """:func:`apply_model` once ``output`` is locked for this run; ``previous`` is the plan of
    the run it resumes (None: a new run), ``filled`` the non-finite voxels it fills."""
    ledger = Ledger(output)
    channels, timepoints = selection
    placed = [image.volume_index(t, c) for t in range(len(timepoints)) for c in range(len(channels))]
    block, halo = config.block, config.halo
    if previous is not None:
        block = block or tuple(previous["block"])
        halo = halo or tuple(previous["halo"])
        budget = int(previous["max_voxels"])
    else:
        budget = _block_budget(client, config.device, max(m.config.width for m in volume_models))
    shape = volumes[0].shape
    block, halo = _plan_blocks(volume_models, shape, block, halo, budget)
    digest = models.digest(list(dict.fromkeys(v.channel for v in volumes)))
    plan = _plan(image, config, selection, digest, block, halo, budget)
    tiling = Tiling(shape, block, halo)
    lead = image.data.ndim - 3
    if previous is not None:
        _check_same_run(previous, plan, output, config)
        ledger.check(tiling.grid)
        target = zarr.open_array(str(output / "0"), mode="r+")
    else:
        clear_folder(output)
        attrs = {"version": __version__, **plan, "input": str(image.path), "model": models.path,
                 "nonfinite_filled": filled}
        target = ome.create_image(
            output, output_shape(image, selection), (1,) * lead + chunks_within(block), np.dtype(plan["dtype"]),
            attrs, config.ome_version, axes=image.meta.axes, shards=(1,) * lead + tuple(block),
        )
        ledger.start(plan)
    fill = config.nonfinite == "fill"
    runs = [
        BlockRun(volume_model, volume.source, image.where, VolumeView(target, index), tiling, config.blend, config.tta,
                 config.device, budget, ledger.part(".".join(map(str, volume.index))),
                 volume_model.normalisation.mean if fill else None)
        for volume, volume_model, index in zip(volumes, volume_models, placed)
    ]
    graphs, done = [], 0
    for run in runs:
        run.ledger.clear_partial()
        finished = run.ledger.done()
        done += len(finished)
        graphs.append(_graph(run, [i for i in tiling.blocks() if i not in finished]))
    total = int(np.prod(tiling.grid)) * len(runs)
    graph = {key: task for g in graphs for key, task in g[0].items()}
    keys = [[key for g in graphs for key in g[k]] for k in (1, 2, 3)]
    results = _run(graph, *keys, client, done, total, progress, tile_resources)
    lock.check()
    meta = replace(image.meta.select_channels(channels), name=Path(image.path).name + " (denoised)")
    levels = write_pyramid(output, meta, config.pyramid, client)
    lock.check()
    ome.finalize_image(output, meta, config.ome_version, levels)
    ledger.remove()
    return ApplyReport(
        output=output, volumes=len(runs), blocks=total, blocks_done_before=done, blocks_written=sum(results["block"]),
        tiles_predicted=sum(results["tile"]), block=block, halo=halo, seconds=time.perf_counter() - start,
    )


def _run(
    graph: dict, tile_keys: list, block_keys: list, drop_keys: list, client: Client | None,
    done: int, total: int, progress: Callable[[int, int], None] | None, tile_resources: dict[str, float] | None,
) -> dict[str, list[int]]:
    """Compute the graph; report each finished block."""
    if progress:
        progress(done, total)
    if client is None:
        tiles, blocks, _ = dask.threaded.get(graph, [tile_keys, block_keys, drop_keys])
        if failed := _failed(blocks):
            raise failed
        if progress:
            progress(total, total)
        return {"tile": list(tiles), "block": list(blocks)}
    resources = {key: tile_resources for key in tile_keys} if tile_resources else None
    tile_futures, block_futures, drop_futures = client.get(
        graph, [tile_keys, block_keys, drop_keys], sync=False, resources=resources
    )
    blocks = []
    for count, future in enumerate(as_completed(block_futures), done + 1):
        blocks.append(future.result())
        if failed := _failed(blocks[-1:]):
            client.cancel(tile_futures + block_futures + drop_futures)
            raise failed
        if progress:
            progress(count, total)
    client.gather(drop_futures)
    return {"tile": client.gather(tile_futures), "block": blocks}
