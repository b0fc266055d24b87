"""``volden info``: what an input volume, a volden output or a model holds, without reading data.

For an output it also says how far its run got (done/total blocks from the run's ledger), so a
store whose run did not finish says so, and where it came from (input, model hash, settings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .divergence import restarts_note
from .ledger import Ledger
from .runlock import describe as describe_holder, read_lock
from .model import Model, is_model_folder, load_models
from .tiling import Tiling
from .volume import Image, open_image


def describe(path: str | Path, array: str | None = None) -> list[str]:
    """Lines describing ``path``: a model folder, a volden output or any zarr image."""
    path = Path(path)
    if is_model_folder(path):
        return [line for model in load_models(path).models.values() for line in _describe_model(model)]
    run = _volden_attrs(path)
    unfinished = run is not None and run.get("status") != "complete"
    image = open_image(path, array or ("0" if unfinished else None))
    lines = _describe_image(image)
    if run is not None:
        lines += _describe_run(path, run)
    return lines


def _describe_image(image: Image) -> list[str]:
    meta = image.meta
    voxel = " x ".join(f"{v:g}" for v in meta.voxel_size) + (f" {meta.unit}" if meta.unit else "")
    nbytes = image.data.size * image.data.dtype.itemsize
    lines = [
        f"path        {image.path}" + (f" (array {image.array_path})" if image.array_path else ""),
        f"shape       {' x '.join(map(str, image.shape))} ({', '.join(meta.axes)}), {image.data.dtype}, {nbytes / 2**30:.3g} GiB",
        f"chunks      {' x '.join(str(c[0]) for c in image.data.chunks)}",
        f"voxel size  {voxel if image.has_scale else 'unknown'}",
    ]
    if meta.channels:
        lines.append("channels    " + ", ".join(str(c.get("label", i)) for i, c in enumerate(meta.channels)))
    if image.levels > 1:
        lines.append(f"pyramid     {image.levels} levels")
    return lines


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
    volumes = len(run.get("channels", [0])) * len(run.get("timepoints", [0]))
    total = volumes * int(np.prod(Tiling(tuple(run["shape"][-3:]), tuple(run["block"]), tuple(run["halo"])).grid))
    if run.get("status") == "complete":
        progress = f"complete ({total}/{total} blocks)"
    else:
        ledger = Ledger(path)
        done = ledger.done_count() if ledger.exists() else 0
        progress = f"UNFINISHED: {done}/{total} blocks done; finish it with volden apply ... --resume"
        if (lock := read_lock(Path(path))) is not None:
            progress += f" (locked by {describe_holder(lock)}; a run that is gone is taken over)"
    return [
        f"volden run  {progress}",
        f"made from   {run.get('input')}" + (f" (array {run['array']})" if run.get("array") else ""),
        f"model       {run.get('model')} ({_digests(run.get('model_sha256'))})",
        f"settings    block {run.get('block')}, halo {run.get('halo')}, blend {run.get('blend')}, "
        f"tta {run.get('tta', 1)}, dtype {run.get('dtype')}, volden {run.get('version')}",
    ]


def _digests(found: str | dict[str, str] | None) -> str:
    """The model's sha256, or each channel's, shortened."""
    if isinstance(found, dict):
        return ", ".join(f"channel {c} sha256 {d[:12]}" for c, d in found.items())
    return f"sha256 {str(found)[:12]}"


def _describe_model(model: Model) -> list[str]:
    path = model.path
    config, training = model.config, model.training
    norm = model.normalisation
    lines = [
        f"model       {path} (sha256 {model.digest[:12]})",
        f"network     UNet depth {config.depth}, width {config.width}, pools {list(config.pools)}",
        f"normalise   mean {norm.mean:.4g}, std {norm.std:.4g}",
        f"masking     grid {model.masking.get('grid')}, {model.masking.get('phases', 1)} phases masked, fill {model.masking.get('fill')}",
    ]
    if model.noise_curve is not None:
        curve = model.noise_curve
        lines.append(f"posterior   prior network; noise curve a = {curve.a:.4g}, b = {curve.b:.4g} ({curve}, input units, "
                     f"fitted over means {curve.low:.4g} to {curve.high:.4g})")
    if training:
        lines += [
            f"trained on  {training.get('input')}" + (f" (array {training['array']})" if training.get("array") else ""),
            f"training    {training.get('steps_done')} steps in {training.get('seconds')} s, patch "
            f"{training.get('patch')}, batch {training.get('batch')}, best validation loss {training.get('best_val_loss')}"
            + restarts_note(training.get("restarts", 0)),
        ]
    return lines
