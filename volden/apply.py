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
is in.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dask
import dask.array as da
import dask.threaded
import numpy as np
import zarr
from distributed import Client, as_completed

from . import ome
from ._version import __version__
from .errors import VoldenError
from .inference import blend_block, plan_blocks, predict_tile, tile_geometry
from .ledger import Index, Ledger
from .model import Model
from .paths import check_output_path
from .predict import max_voxels_for, resolve_device
from .tiling import BLENDS, Blend, Tiling, intersect
from .volume import Volume

OUTPUT_DTYPES = ("float32", "input")
PLAN_KEYS = ("input", "array", "shape", "model_sha256", "block", "halo", "blend", "dtype", "ome_version")


@dataclass(frozen=True)
class ApplyConfig:
    """What ``volden apply`` takes besides the paths."""

    block: tuple[int, int, int] | None = None
    halo: tuple[int, int, int] | None = None
    blend: Blend = "gaussian"
    device: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    resume: bool = False
    ome_version: str = "0.5"

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise VoldenError(f"--blend must be one of {', '.join(BLENDS)}")
        if self.dtype not in OUTPUT_DTYPES:
            raise VoldenError(f"--dtype must be one of {', '.join(OUTPUT_DTYPES)}")
        if self.ome_version not in ome.OME_VERSIONS:
            raise VoldenError(f"--ome-version must be one of {', '.join(ome.OME_VERSIONS)}")
        if self.block and min(self.block) < 1:
            raise VoldenError(f"--block {self.block}: every size must be positive")
        if self.halo and min(self.halo) < 0:
            raise VoldenError(f"--halo {self.halo}: sizes cannot be negative")
        if self.overwrite and self.resume:
            raise VoldenError("--overwrite and --resume exclude each other: replace OUTPUT or finish it")


@dataclass(frozen=True)
class ApplyReport:
    """What one call of :func:`apply_model` did."""

    output: Path
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
        self, model: Model, source: Any, target: zarr.Array, tiling: Tiling, blend: Blend, device: str,
        max_voxels: int, ledger: Ledger,
    ) -> None:
        self.model, self.source, self.target = model, source, target
        self.tiling, self.blend, self.device, self.ledger = tiling, blend, device, ledger
        self.max_voxels = max_voxels

    def reaches(self, index: Index) -> list[Index]:
        """The blocks a tile's prediction falls into, in neighbour order."""
        tile = self.tiling.tile_range(index)
        return [n for n in self.tiling.neighbours(index) if intersect(tile, self.tiling.block_range(n))]

    def predict(self, index: Index) -> int:
        """Predict one tile and save its pieces; 1 if the network ran, 0 if nothing was left to do."""
        reaches = self.reaches(index)
        if self.ledger.tile_file(index).exists() or all(self.ledger.is_done(n) for n in reaches):
            return 0
        inside, pad, block_shape = tile_geometry(self.tiling, index)
        region = _read(self.source, inside)
        weighted = predict_tile(self.model, region, pad, block_shape, self.tiling.halo, self.blend, self.device, self.max_voxels)
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
        dtype = self.target.dtype
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        self.target[tuple(slice(a, b) for a, b in block_range)] = values.astype(dtype)
        self.ledger.mark_done(index)
        return 1


def _read(source: Any, box: list[tuple[int, int]]) -> np.ndarray:
    """A region of the input, each stored chunk read once."""
    region = source[tuple(slice(a, b) for a, b in box)]
    return region.compute(scheduler="synchronous") if isinstance(region, da.Array) else np.asarray(region)


def _predict_task(run: BlockRun, index: Index) -> int:
    return run.predict(index)


def _assemble_task(run: BlockRun, index: Index, *tiles_ready: int) -> int:
    return run.assemble(index)


def _drop_task(run: BlockRun, index: Index, *blocks_written: int) -> None:
    run.ledger.drop_pieces(index)


def _graph(run: BlockRun, todo: list[Index]) -> tuple[dict, list, list, list]:
    """Tasks for the blocks in ``todo``: tile keys, block keys, drop keys."""
    token = dask.base.tokenize(str(run.ledger.root), run.tiling, todo)
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
    budgets = client.run(_worker_budget, device, width)
    return min(budgets.values()) if budgets else _worker_budget(device, width)


def _plan(model: Model, volume: Volume, config: ApplyConfig, block, halo, max_voxels: int) -> dict[str, Any]:
    """What a resume must match (``PLAN_KEYS``), and the forward-pass size every tile keeps to,
    so that a tile gives the same bytes on any worker and in any run."""
    dtype = str(volume.data.dtype) if config.dtype == "input" else "float32"
    return {
        "input": str(Path(volume.path).resolve()),
        "array": volume.array_path,
        "shape": list(volume.shape),
        "model_sha256": model.digest,
        "block": list(block),
        "halo": list(halo),
        "blend": config.blend,
        "dtype": dtype,
        "ome_version": config.ome_version,
        "max_voxels": max_voxels,
    }


def resumable_plan(output: Path, ledger: Ledger) -> dict[str, Any] | None:
    """The plan of an unfinished run in ``output``; None when there is nothing to resume."""
    if not output.exists():
        return None
    status = _status(output)
    if status == "complete":
        raise VoldenError(f"{output} is already complete; nothing to resume")
    if status != "running" or not ledger.exists():
        raise VoldenError(f"{output} exists but is not an unfinished volden run; pass --overwrite to replace it")
    return ledger.plan()


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


def apply_model(
    model: Model,
    volume: Volume,
    output: str | Path,
    config: ApplyConfig = ApplyConfig(),
    client: Client | None = None,
    progress: Callable[[int, int], None] | None = None,
    tile_resources: dict[str, float] | None = None,
) -> ApplyReport:
    """Denoise ``volume`` into the OME-Zarr ``output``; ``progress(done, total)`` per block.

    With ``config.resume`` an unfinished run in ``output`` is continued (its block and halo are
    kept) and a missing ``output`` is started. ``tile_resources`` (e.g. ``{"GPU": 1}``) is what
    each tile task holds on its worker, so one network pass at a time uses a device. A run that fails or is killed leaves ``output``
    marked ``running`` with its ledger, ready to resume.
    """
    start = time.perf_counter()
    output = Path(output)
    ledger = Ledger(output)
    check_output_path(volume.path, output, config.overwrite or config.resume)
    previous = resumable_plan(output, ledger) if config.resume else None
    block, halo = config.block, config.halo
    if previous is not None:
        block = block or tuple(previous["block"])
        halo = halo or tuple(previous["halo"])
        budget = int(previous["max_voxels"])
    else:
        budget = _block_budget(client, config.device, model.config.width)
    block, halo = plan_blocks(model, volume.shape, block, halo, budget)
    plan = _plan(model, volume, config, block, halo, budget)
    tiling = Tiling(volume.shape, block, halo)
    if previous is not None:
        _check_same_run(previous, plan, output, config)
        target = zarr.open_array(str(output / "0"), mode="r+")
        ledger.clear_partial()
    else:
        if config.overwrite and output.exists():
            shutil.rmtree(output)
        attrs = {"version": __version__, **plan, "input": str(volume.path), "model": model.path}
        target = ome.create_image(output, volume.shape, block, np.dtype(plan["dtype"]), attrs, config.ome_version)
        ledger.start(plan)
    done = ledger.done()
    todo = [index for index in tiling.blocks() if index not in done]
    total = int(np.prod(tiling.grid))
    source = volume.source if volume.source is not None else volume.data
    run = BlockRun(model, source, target, tiling, config.blend, config.device, budget, ledger)
    graph, tile_keys, block_keys, drop_keys = _graph(run, todo)
    results = _run(graph, tile_keys, block_keys, drop_keys, client, len(done), total, progress, tile_resources)
    ome.finalize_image(output, volume.voxel_size, volume.unit, Path(volume.path).name + " (denoised)", config.ome_version)
    ledger.remove()
    return ApplyReport(
        output=output, blocks=total, blocks_done_before=len(done), blocks_written=sum(results["block"]),
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
        if progress:
            progress(count, total)
    client.gather(drop_futures)
    return {"tile": client.gather(tile_futures), "block": blocks}
