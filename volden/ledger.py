"""The durable record of an apply run, kept inside its output store until the run completes.

``OUTPUT/volden-run/`` holds the run's plan (``plan.json``: what a resume must match), one
empty marker per finished block (``done/Z.Y.X``, created only after the block's region is
written) and the weighted tile predictions that neighbouring blocks still need
(``tiles/Z.Y.X/``, one raw ``.npy`` per block the tile reaches: no zip, no checksum pass over
the data; written as ``Z.Y.X.partial/`` and renamed, so a tile folder that exists is whole).
A tile's folder is deleted once every block it contributes to is done, so the folder
holds the frontier of the run, not the volume. An image of several volumes (time points,
channels) keeps one such record per volume under ``parts/T.C/``. It is not a zarr node: zarr
and OME-Zarr readers never see it, and it is removed when the run completes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import VoldenError

RUN_DIR = "volden-run"
Index = tuple[int, int, int]


def _name(index: Iterable[int]) -> str:
    return ".".join(str(int(i)) for i in index)


def _index(name: str) -> Index:
    z, y, x = (int(v) for v in name.split("."))
    return (z, y, x)


class Ledger:
    """Plan, finished blocks and pending tile pieces of one run into ``output``; ``part``
    names one volume of a multi-volume image."""

    def __init__(self, output: str | Path, part: str = "") -> None:
        self.output = Path(output)
        self.root = self.output / RUN_DIR
        work = self.root / "parts" / part if part else self.root
        self.done_dir = work / "done"
        self.tiles_dir = work / "tiles"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    def exists(self) -> bool:
        return self.plan_file.exists()

    def start(self, plan: dict[str, Any]) -> None:
        """Record the run's plan; each volume's record is made by :meth:`part`."""
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.plan_file, json.dumps(plan, indent=1).encode())

    def plan(self) -> dict[str, Any]:
        try:
            plan = json.loads(self.plan_file.read_text())
            if not isinstance(plan, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise _damaged(self.plan_file, err) from None
        return plan

    def check(self, grid: tuple[int, int, int]) -> None:
        """Before a resume writes anything: every record of every volume is whole (a VoldenError
        naming the first that is not). Tile pieces are checked by their ``.npy`` headers and
        sizes, not their bytes: they carry no checksum."""
        for done in [*self.root.glob("done/*"), *self.root.glob("parts/*/done/*")]:
            try:
                index = _index(done.name)
            except ValueError:
                raise _damaged(done, ValueError("not a block marker"), done) from None
            if not all(0 <= i < n for i, n in zip(index, grid)):
                raise _damaged(done, ValueError(f"block {index} is outside the grid {grid}"), done)
        for piece in [*self.root.glob("tiles/*/*.npy"), *self.root.glob("parts/*/tiles/*/*.npy")]:
            if piece.parent.name.endswith(".partial"):
                continue
            try:
                np.load(piece, mmap_mode="r")
            except (OSError, ValueError, EOFError) as err:
                raise _damaged(piece, err, piece.parent) from None

    def part(self, name: str) -> "Ledger":
        """The record of one volume of the run, ready to be written (``""``: a 3D image's only
        volume, kept at the top of the run's folder)."""
        part = Ledger(self.output, name)
        part.done_dir.mkdir(parents=True, exist_ok=True)
        part.tiles_dir.mkdir(parents=True, exist_ok=True)
        return part

    def done_count(self) -> int:
        """Finished blocks of every volume of the run."""
        return sum(1 for _ in self.root.glob("done/*")) + sum(1 for _ in self.root.glob("parts/*/done/*"))

    def mark_done(self, index: Index) -> None:
        (self.done_dir / _name(index)).touch()

    def is_done(self, index: Index) -> bool:
        return (self.done_dir / _name(index)).exists()

    def done(self) -> set[Index]:
        if not self.done_dir.exists():
            return set()
        return {_index(p.name) for p in self.done_dir.iterdir()}

    def tile_dir(self, index: Index) -> Path:
        return self.tiles_dir / _name(index)

    def has_tile(self, index: Index) -> bool:
        return self.tile_dir(index).exists()

    def save_pieces(self, index: Index, pieces: dict[Index, np.ndarray]) -> None:
        """Store a tile's weighted prediction, one piece per block it reaches into."""
        target = self.tile_dir(index)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for n, piece in pieces.items():
            np.save(partial / f"{_name(n)}.npy", np.ascontiguousarray(piece))  # np.save of a view is ~10x slower
        os.replace(partial, target)

    def load_piece(self, index: Index, block: Index) -> np.ndarray:
        return np.load(self.tile_dir(index) / f"{_name(block)}.npy")

    def drop_pieces(self, index: Index) -> None:
        shutil.rmtree(self.tile_dir(index), ignore_errors=True)

    def clear_partial(self) -> None:
        """Remove what a killed run was half-way through writing."""
        for partial in self.tiles_dir.glob("*.partial"):
            shutil.rmtree(partial, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _damaged(path: Path, err: BaseException, remove: Path | None = None) -> VoldenError:
    """The error for a damaged record; deleting ``remove`` and resuming recomputes what it held."""
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    again = f"delete {remove} and resume again to recompute it, or " if remove else ""
    return VoldenError(f"{path} is damaged ({reason}); {again}pass --overwrite to start again")


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
