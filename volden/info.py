"""``volden info``: what an input volume, a volden output or a model holds, without reading data.

For an output it also says how far its run got (done/total blocks from the run's ledger), so a
store whose run did not finish says so, and where it came from (input, model hash, settings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .ledger import Ledger
from .model import CONFIG_FILE, load_model
from .tiling import Tiling
from .volume import Volume, open_volume


def describe(path: str | Path, array: str | None = None) -> list[str]:
    """Lines describing ``path``: a model folder, a volden output or any 3D zarr volume."""
    path = Path(path)
    if (path / CONFIG_FILE).exists():
        return _describe_model(path)
    run = _volden_attrs(path)
    unfinished = run is not None and run.get("status") != "complete"
    volume = open_volume(path, array or ("0" if unfinished else None))
    lines = _describe_volume(volume)
    if run is not None:
        lines += _describe_run(path, run)
    return lines


def _describe_volume(volume: Volume) -> list[str]:
    voxel = "unknown" if volume.voxel_size is None else " x ".join(f"{v:g}" for v in volume.voxel_size)
    nbytes = volume.data.size * volume.data.dtype.itemsize
    return [
        f"path        {volume.path}" + (f" (array {volume.array_path})" if volume.array_path else ""),
        f"shape       {' x '.join(map(str, volume.shape))} (z, y, x), {volume.data.dtype}, {nbytes / 2**30:.3g} GiB",
        f"chunks      {' x '.join(map(str, volume.chunks))}",
        f"voxel size  {voxel}" + (f" {volume.unit}" if volume.unit and volume.voxel_size else ""),
    ]


def _volden_attrs(path: Path) -> dict | None:
    """The run attributes of a volden apply output (other volden stores, such as synth's, have
    none)."""
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:
        return None
    found = attrs.get("volden")
    return found if isinstance(found, dict) and "model_sha256" in found else None


def _describe_run(path: Path, run: dict) -> list[str]:
    total = int(np.prod(Tiling(tuple(run["shape"]), tuple(run["block"]), tuple(run["halo"])).grid))
    if run.get("status") == "complete":
        progress = f"complete ({total}/{total} blocks)"
    else:
        ledger = Ledger(path)
        done = len(ledger.done()) if ledger.exists() else 0
        progress = f"UNFINISHED: {done}/{total} blocks done; finish it with volden apply ... --resume"
    return [
        f"volden run  {progress}",
        f"made from   {run.get('input')}" + (f" (array {run['array']})" if run.get("array") else ""),
        f"model       {run.get('model')} (sha256 {str(run.get('model_sha256'))[:12]})",
        f"settings    block {run.get('block')}, halo {run.get('halo')}, blend {run.get('blend')}, "
        f"dtype {run.get('dtype')}, volden {run.get('version')}",
    ]


def _describe_model(path: Path) -> list[str]:
    model = load_model(path)
    config, training = model.config, model.training
    norm = model.normalisation
    lines = [
        f"model       {path} (sha256 {model.digest[:12]})",
        f"network     UNet depth {config.depth}, width {config.width}, pools {list(config.pools)}",
        f"normalise   mean {norm.mean:.4g}, std {norm.std:.4g}",
        f"masking     grid {model.masking.get('grid')}, fill {model.masking.get('fill')}",
    ]
    if training:
        lines += [
            f"trained on  {training.get('input')}" + (f" (array {training['array']})" if training.get("array") else ""),
            f"training    {training.get('steps_done')} steps in {training.get('seconds')} s, patch "
            f"{training.get('patch')}, batch {training.get('batch')}, best validation loss {training.get('best_val_loss')}",
        ]
    return lines
