"""Fault soak: a 64-block ``volden apply`` on a 2-worker local cluster while a worker is
SIGKILLed at random every few seconds and the whole command is SIGKILLed twice and resumed;
its output must be bit-identical to an undisturbed run's.

Prints the figures BENCHMARKS.md quotes: worker kills survived, command kills, blocks done at
each command kill, and the time lost against the undisturbed run (restarts included).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cli_helpers import tree_digest, volden_command  # noqa: E402

from untrained import untrained_model  # noqa: E402
from volden.ledger import Ledger  # noqa: E402
from volden.synth import write_synthetic  # noqa: E402
from volden.volume import open_volume  # noqa: E402

SHAPE = (64, 256, 256)
BLOCK = (16, 64, 64)  # a 4 x 4 x 4 grid
SETTINGS = ("--block", ",".join(map(str, BLOCK)), "--halo", "8,16,16", "--workers", "2", "--device", "cpu", "--tta", "2")


def workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The dask worker processes a local ``volden apply`` started (spawned children, not helpers)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in line and "resource_tracker" not in line:
            found.append(child)
    return found


def image_digest(output: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(output).items() if k != "./zarr.json"}


def start(model: Path, source: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(volden_command("apply", str(model), str(source), str(output), *SETTINGS, *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN_S", "MAX_S"),
                        help="seconds between worker kills, drawn uniformly")
    parser.add_argument("--command-kills", type=int, nargs="*", default=[20, 40],
                        help="SIGKILL the whole command once this many blocks are done")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = write_synthetic(work / "in.zarr", shape=SHAPE, kind="mixed", seed=3)
        untrained_model(open_volume(source), folder=work / "model")
        began = time.perf_counter()
        reference = start(work / "model", source, work / "reference.zarr")
        out, err = reference.communicate()
        assert reference.returncode == 0, err[-2000:]
        undisturbed_s = time.perf_counter() - began
        print(f"undisturbed: {undisturbed_s:.1f} s; {out.strip()}", flush=True)

        output, ledger = work / "soaked.zarr", Ledger(work / "soaked.zarr")
        worker_kills, at_command_kills, runs = 0, [], 0
        began = time.perf_counter()
        pending = list(args.command_kills)
        while True:
            runs += 1
            proc = start(work / "model", source, output, "--resume")
            next_kill = time.monotonic() + rng.uniform(*args.every)
            while proc.poll() is None:
                time.sleep(0.05)
                done = ledger.done_count() if ledger.root.exists() else 0
                if pending and done >= pending[0]:
                    os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, as SLURM ends a job
                    proc.wait()
                    at_command_kills.append(done)
                    pending.pop(0)
                    print(f"command SIGKILLed at {done} blocks done", flush=True)
                    break
                if time.monotonic() >= next_kill:
                    victims = workers_of(proc)
                    if victims:
                        rng.choice(victims).kill()
                        worker_kills += 1
                    next_kill = time.monotonic() + rng.uniform(*args.every)
            else:
                out, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"run {runs} failed: {err[-2000:]}")
                print(f"run {runs} finished: {out.strip()}", flush=True)
                break
        disturbed_s = time.perf_counter() - began
        identical = image_digest(output) == image_digest(work / "reference.zarr")
    figures = {"blocks": 64, "worker_kills": worker_kills, "command_kills": len(at_command_kills),
               "blocks_done_at_command_kills": at_command_kills, "runs": runs, "undisturbed_s": round(undisturbed_s, 1),
               "disturbed_s": round(disturbed_s, 1), "time_lost_s": round(disturbed_s - undisturbed_s, 1),
               "bit_identical": identical}
    print(json.dumps(figures), flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
    if not identical:
        raise SystemExit("the soaked output differs from the undisturbed run's")


if __name__ == "__main__":
    main()
