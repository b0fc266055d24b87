"""``volden apply`` at scale: the out-of-core run equals the lazy graph bit for bit, a SIGKILLed run
resumes with only its unfinished blocks, a worker killed mid-run changes nothing, and an
unfinished output never looks complete."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from volden.apply import ApplyConfig, apply_model
from volden.cluster import local_client
from volden.errors import VoldenError
from volden.inference import denoise
from volden.ledger import RUN_DIR, Ledger
from volden.model import load_model, save_model
from volden.normalisation import estimate_normalisation
from volden.synth import synthetic_volume
from volden.tiling import Tiling
from volden import ome
from volden.volume import Image, open_image

from cli_helpers import volden_command
from counting_store import CountingStore
from conftest import make_model

BLOCK = (8, 32, 32)
HALO = (4, 8, 8)
SHAPE = (32, 128, 128)  # a 4 x 4 x 4 grid of blocks


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, Path]:
    """A noisy volume in a zarr store whose chunks do not match the blocks, and a model for it."""
    work = tmp_path_factory.mktemp("apply")
    noisy, _ = synthetic_volume(shape=SHAPE, kind="nuclei", photons=20.0, seed=3, chunks=(16, 48, 48))
    x = noisy.compute()
    array = zarr.create_array(str(work / "in.zarr"), shape=x.shape, chunks=(16, 48, 48), dtype=x.dtype)
    array[:] = x
    model = make_model(normalisation=estimate_normalisation(da.from_array(x)))
    save_model(model, work / "model")
    return work / "in.zarr", work / "model"


def _output(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


@pytest.mark.parametrize("tta", [1, 4])
def test_out_of_core_run_equals_the_lazy_graph(stored, tmp_path, tta):
    source, model_path = stored
    model, volume = load_model(model_path), open_image(source)
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu", tta=tta)
    report = apply_model(model, volume, tmp_path / "out.zarr", config)
    assert (report.blocks, report.blocks_written, report.tiles_predicted) == (64, 64, 64)
    expected = denoise(volume.data, model, block=BLOCK, halo=HALO, device="cpu", views=tta).compute()
    assert np.array_equal(_output(tmp_path / "out.zarr"), expected)
    assert not (tmp_path / "out.zarr" / RUN_DIR).exists()
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs.asdict()
    assert attrs["volden"]["status"] == "complete" and attrs["ome"]["multiscales"]


def _apply(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        volden_command("apply", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, stdin=subprocess.DEVNULL, **kwargs,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_sigkilled_run_resumes_with_only_its_unfinished_blocks(stored, tmp_path):
    source, model_path = stored
    settings = ("--block", ",".join(map(str, BLOCK)), "--halo", ",".join(map(str, HALO)), "--device", "cpu")
    reference = _apply(str(model_path), str(source), str(tmp_path / "reference.zarr"), *settings)
    _finish(reference)

    output = tmp_path / "out.zarr"
    killed = _apply(str(model_path), str(source), str(output), *settings)
    ledger = Ledger(output)
    deadline = time.monotonic() + 240
    while len(ledger.done()) < 16 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    done_at_kill = len(ledger.done())
    assert 16 <= done_at_kill < 64

    attrs = zarr.open_group(str(output), mode="r").attrs.asdict()
    assert attrs["volden"]["status"] == "running" and "ome" not in attrs and "multiscales" not in attrs
    info = subprocess.run(volden_command("info", str(output)), capture_output=True, text=True, timeout=120)
    assert f"UNFINISHED: {done_at_kill}/64 blocks done" in info.stdout, info.stdout + info.stderr

    again = _apply(str(model_path), str(source), str(output), *settings)
    out, err = again.communicate(timeout=300)
    assert again.returncode != 0 and "exists" in err, "a second run without --resume must refuse"

    out = _finish(_apply(str(model_path), str(source), str(output), *settings, "--resume"))
    written = int(re.search(r"wrote \S+: (\d+) of 64 blocks", out).group(1))
    assert written == 64 - done_at_kill, out
    assert f"{done_at_kill} were done before" in out
    assert np.array_equal(_output(output), _output(tmp_path / "reference.zarr"))
    assert not (output / RUN_DIR).exists()


def test_resume_checks_the_plan(stored, tmp_path):
    source, model_path = stored
    volume = open_image(source)
    output = tmp_path / "out.zarr"
    ledger = Ledger(output)
    model = load_model(model_path)
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu")
    calls = []

    def stop_after_two(done: int, total: int) -> None:
        calls.append(done)
        if done >= 2:
            raise RuntimeError("stopped by the test")

    with local_client(1) as client, pytest.raises(RuntimeError, match="stopped by the test"):
        apply_model(model, volume, output, config, client=client, progress=stop_after_two)
    assert ledger.exists() and len(ledger.done()) >= 2
    with pytest.raises(VoldenError, match="started with tta 1, not 2"):
        apply_model(model, volume, output, ApplyConfig(block=BLOCK, halo=HALO, device="cpu", resume=True, tta=2))
    other = make_model(seed=7, normalisation=model.normalisation)
    with pytest.raises(VoldenError, match="started with model_sha256"):
        apply_model(other, volume, output, ApplyConfig(block=BLOCK, halo=HALO, device="cpu", resume=True))

    plan = ledger.plan()  # a run started before test-time augmentation existed predicted one view
    del plan["tta"]
    ledger.plan_file.write_text(json.dumps(plan))
    with pytest.raises(VoldenError, match="started with tta 1, not 4"):
        apply_model(model, volume, output, ApplyConfig(block=BLOCK, halo=HALO, device="cpu", resume=True, tta=4))
    apply_model(model, volume, output, ApplyConfig(block=BLOCK, halo=HALO, device="cpu", resume=True))
    assert zarr.open_group(str(output), mode="r").attrs["volden"]["status"] == "complete"


def test_a_worker_killed_mid_run_changes_nothing(stored, tmp_path):
    source, model_path = stored
    model, volume = load_model(model_path), open_image(source)
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu")
    with local_client(2) as client:
        apply_model(model, volume, tmp_path / "undisturbed.zarr", config, client=client)
        pids = client.run(os.getpid)
        assert len(pids) == 2
        victim = sorted(pids.values())[0]
        killed = []

        def kill_one_worker(done: int, total: int) -> None:
            if done >= 8 and not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(done)

        report = apply_model(model, volume, tmp_path / "disturbed.zarr", config, client=client, progress=kill_one_worker)
        assert killed and killed[0] < 64
        assert report.blocks == 64
        assert victim not in client.run(os.getpid).values()
    assert np.array_equal(_output(tmp_path / "disturbed.zarr"), _output(tmp_path / "undisturbed.zarr"))


def test_each_tile_reads_each_of_its_chunks_once(tmp_path):
    """Tiles read straight from the store: a chunk is read once per tile that overlaps it, and
    never for anything else (no whole-volume pass, no re-reads within a tile)."""
    noisy, _ = synthetic_volume(SHAPE, "nuclei", 20.0, seed=3, chunks=(8, 24, 40))
    zarr.create_array(str(tmp_path / "raw.zarr"), data=noisy.compute(), chunks=(8, 24, 40))
    store = CountingStore(zarr.storage.LocalStore(str(tmp_path / "raw.zarr"), read_only=True))
    array = zarr.open_array(store=store, mode="r")
    volume = Image(da.from_zarr(array), ome.ImageMeta(), str(tmp_path / "raw.zarr"), "", source=array, has_scale=False)
    chunks = tuple(c[0] for c in volume.data.chunks)
    model = make_model()
    apply_model(model, volume, tmp_path / "out.zarr", ApplyConfig(block=BLOCK, halo=HALO, device="cpu"))
    tiling = Tiling(volume.shape, BLOCK, HALO)
    expected = Counter()
    for index in tiling.blocks():
        inside = [(max(a, 0), min(b, n)) for (a, b), n in zip(tiling.tile_range(index), volume.shape)]
        ranges = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(inside, chunks)]
        expected.update("c/" + "/".join(map(str, k)) for k in itertools.product(*ranges))
    assert Counter(store.reads) == expected
