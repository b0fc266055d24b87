"""Run the lightsheet workflow of a config file: TIFF slices -> ingest -> train -> apply -> preview.

    python pipelines/lightsheet/run.py [CONFIG] [--slurm] [--make-example] [--dry-run]

Each step is a ``volden`` command, printed before it runs. Running the workflow again picks up
where it stopped: an ingested image or a denoised output that is complete is kept, a trained
model is kept and an interrupted training resumes from its checkpoint, an interrupted apply
does only the blocks not yet written, and the preview is drawn again. Delete a step's output to
redo it. With ``--slurm``, training is a batch job (``cluster/train.sbatch``, waited for) and
apply sends its blocks to SLURM worker jobs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import zarr

from volden import ome
from volden.model import CHANNELS_FILE, CONFIG_FILE
from volden.training import has_checkpoint
from volden.volume import open_volume

HERE = Path(__file__).resolve().parent
TRAIN_SBATCH = HERE.parent.parent / "cluster" / "train.sbatch"
# [slurm] key -> the sbatch option that asks the same of the training job
SBATCH_OPTIONS = {
    "partition": "--partition={}", "account": "--account={}", "walltime": "--time={}",
    "gpus-per-job": "--gres=gpu:{}", "cores": "--cpus-per-task={}", "memory": "--mem={}",
}


def options(table: dict[str, Any]) -> list[str]:
    """A config table as command-line options: ``key = value`` is ``--key value``, ``true`` a
    bare flag, a list the option repeated."""
    found: list[str] = []
    for key, value in table.items():
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                found.append(f"--{key}")
            elif item is not False:
                found += [f"--{key}", str(item)]
    return found


def finished_image(path: Path) -> bool:
    """Whether ``path`` is a complete OME-Zarr image: volden declares what it writes an image
    (``multiscales``) only when the run that writes it has finished."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except FileNotFoundError:  # absent, or killed before its group was made
        return False
    return ome.multiscales(group) is not None and group.attrs.get("volden", {}).get("status") == "complete"


def trained(model: Path) -> bool:
    """Training writes its model's description last: one model's, or the index of one per channel."""
    return (model / CONFIG_FILE).is_file() or (model / CHANNELS_FILE).is_file()


class Workflow:
    """The steps of one config, run (or with ``dry_run`` only printed) in order."""

    def __init__(self, config: dict[str, Any], slurm: bool, dry_run: bool) -> None:
        self.config, self.slurm, self.dry_run = config, slurm, dry_run
        self.tiffs = Path(config["paths"]["tiffs"])
        work = Path(config["paths"]["work"])
        self.image, self.model = work / "image.ome.zarr", work / "model"
        self.denoised, self.preview_png = work / "denoised.ome.zarr", work / "preview.png"

    def run(self, command: list[str]) -> None:
        print("$", shlex.join(command), flush=True)
        if self.dry_run:
            return
        done = subprocess.run(command)
        if done.returncode:
            sys.exit(f"run.py: {command[0]} {command[1]} failed (exit {done.returncode}); "
                     "fix it and run again: finished steps are kept")

    def skip(self, step: str, why: str) -> None:
        print(f"# {step}: {why}; skipped", flush=True)

    def make_example(self) -> None:
        """A synthetic acquisition (``volden synth``), written as 2D TIFF slices."""
        if self.tiffs.exists() and any(self.tiffs.iterdir()):
            return self.skip("example", f"{self.tiffs} is not empty")
        with tempfile.TemporaryDirectory() as scratch:
            synthetic = Path(scratch) / "synthetic.zarr"
            self.run(["volden", "synth", str(synthetic), *options(self.config.get("example", {}))])
            print(f"# writing {synthetic.name} as 2D TIFF slices into {self.tiffs}", flush=True)
            if not self.dry_run:
                write_slices(synthetic, self.tiffs)

    def ingest(self) -> None:
        if finished_image(self.image):
            return self.skip("ingest", f"{self.image} is complete")
        again = ["--overwrite"] if self.image.exists() else []  # an unfinished ingest starts over
        self.run(["volden", "ingest", str(self.tiffs), str(self.image), *options(self.config.get("ingest", {})), *again])

    def train(self) -> None:
        if trained(self.model):
            return self.skip("train", f"{self.model} is trained")
        # a checkpoint is resumed; a model folder without one (killed early) starts over
        restart = ["--overwrite"] if self.model.exists() and not has_checkpoint(self.model) else []
        settings = dict(self.config.get("train", {}))
        if not self.slurm:
            resume = ["--resume"] if has_checkpoint(self.model) else []
            return self.run(["volden", "train", str(self.image), "-o", str(self.model), *options(settings),
                             *resume, *restart])
        if "minutes" not in settings:
            sys.exit("run.py: [train] needs minutes with --slurm (cluster/train.sbatch budgets in minutes)")
        minutes = settings.pop("minutes")
        slurm = self.config.get("slurm", {})
        batch = [SBATCH_OPTIONS[key].format(sbatch_value(key, value)) for key, value in slurm.items()
                 if key in SBATCH_OPTIONS]
        # train.sbatch passes --resume itself when the model folder holds a checkpoint
        self.run(["sbatch", "--wait", *batch, str(TRAIN_SBATCH), str(self.image), str(self.model), str(minutes),
                  *options(settings), *restart])

    def apply(self) -> None:
        if finished_image(self.denoised):
            return self.skip("apply", f"{self.denoised} is complete")
        where = ["--cluster", "slurm", *options(self.config.get("slurm", {}))] if self.slurm else []
        self.run(["volden", "apply", str(self.model), str(self.image), str(self.denoised),
                  *options(self.config.get("apply", {})), *where, "--resume"])

    def preview(self) -> None:
        self.run(["volden", "preview", str(self.image), str(self.denoised), "-o", str(self.preview_png),
                  *options(self.config.get("preview", {})), "--overwrite"])


def sbatch_value(key: str, value: Any) -> str:
    """Dask-style memory ("32GB") as SLURM writes it ("32G"); everything else as it is."""
    return str(value).removesuffix("B") if key == "memory" else str(value)


def write_slices(volume_path: Path, folder: Path) -> None:
    """Every z plane of a volume as one 2D TIFF, named by its index (as microscopes write them)."""
    import tifffile

    data = open_volume(volume_path).data
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(data.shape[0]):
        tifffile.imwrite(folder / f"slice_{z:04d}.tif", data[z].compute())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=HERE / "lightsheet.toml")
    parser.add_argument("--slurm", action="store_true", help="train as a batch job, apply on SLURM worker jobs")
    parser.add_argument("--make-example", action="store_true",
                        help="first write a synthetic acquisition into paths.tiffs (when that is empty)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = parser.parse_args(argv)
    workflow = Workflow(tomllib.loads(args.config.read_text()), args.slurm, args.dry_run)
    if args.make_example:
        workflow.make_example()
    workflow.ingest()
    workflow.train()
    workflow.apply()
    workflow.preview()
    if not args.dry_run:
        print(f"# done: {workflow.denoised} (preview: {workflow.preview_png})")


if __name__ == "__main__":
    main()
