"""``volden preview`` through the real command: the picture's layout, one contrast for every row,
and bad input refused in one line with nothing written.

The cases run together in subprocesses (see ``runs``); each test checks one of them.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import zarr

import volden
from volden import ome
from cli_helpers import volden_command
from volden.preview import PERCENTILES, read_slices, slice_point
from volden.synth import write_synthetic

SHAPE = (16, 48, 64)
CASES = {
    "pair": ("in.zarr", "twice.zarr", "-o", "pair.png"),
    "single": ("in.zarr", "-o", "single.png", "--at", "2,3,4"),
    "channel": ("channels.zarr", "-o", "channel.png", "--channel", "1"),
    "made_from": ("channels.zarr", "one_channel.zarr", "-o", "made_from.png", "--channel", "1"),
    "mismatch": ("in.zarr", "cropped.zarr", "-o", "mismatch.png"),
    "no_channel": ("channels.zarr", "-o", "no_channel.png"),
    "outside": ("in.zarr", "-o", "outside.png", "--at", "16,0,0"),
    "exists": ("in.zarr", "-o", "exists.png"),
    "not_made_from": ("channels.zarr", "one_channel.zarr", "-o", "not_made_from.png", "--channel", "0"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Inputs: a synthetic volume, a copy at twice its intensity, one cropped in x, two channels,
    and an output as ``volden apply --channel 1`` of those makes it (channel 1 alone)."""
    work = tmp_path_factory.mktemp("preview")
    write_synthetic(work / "in.zarr", shape=SHAPE, chunks=(8, 24, 32))
    data = volden.open_volume(work / "in.zarr").data.compute().astype(np.float32)
    zarr.create_array(str(work / "twice.zarr"), data=2 * data, chunks=(8, 24, 32))
    zarr.create_array(str(work / "cropped.zarr"), data=data[..., :40])
    zarr.create_array(str(work / "channels.zarr"), data=np.stack([data, 3 * data]))
    axes = ("c", "z", "y", "x")
    made = ome.create_image(work / "one_channel.zarr", (1, *SHAPE), (1, *SHAPE), np.float32, {"channels": [1]},
                            axes=axes)
    made[:] = 3 * data[None]
    ome.finalize_image(work / "one_channel.zarr", ome.ImageMeta(axes, (1.0,) * 4, (None,) * 4))
    (work / "exists.png").write_bytes(b"kept")
    with ThreadPoolExecutor(3) as pool:
        procs = dict(zip(CASES, pool.map(
            lambda args: subprocess.run(volden_command("preview", *args), cwd=work, capture_output=True,
                                        text=True, timeout=120),
            CASES.values(),
        )))
    return {"work": work, "procs": procs, "data": data}


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _printed_range(stdout: str) -> tuple[float, float]:
    words = stdout.split()
    start = words.index("range") + 1
    return float(words[start]), float(words[start + 2])


def test_two_rows_of_three_panels(runs) -> None:
    _ok(runs["procs"]["pair"])
    _ok(runs["procs"]["single"])
    pair = matplotlib.image.imread(runs["work"] / "pair.png")
    single = matplotlib.image.imread(runs["work"] / "single.png")
    assert pair.shape[1] == single.shape[1] > single.shape[0]  # three panels side by side
    assert pair.shape[0] == pytest.approx(2 * single.shape[0], rel=0.02)  # one row per volume


def test_one_display_range_from_the_denoised_slices(runs) -> None:
    """The range printed is the percentiles of the denoised planes, and the input row is drawn
    in it: at half the denoised intensity, it is darker than the denoised row."""
    stdout = _ok(runs["procs"]["pair"])
    planes = read_slices(volden.open_volume(runs["work"] / "twice.zarr"), slice_point(SHAPE))
    expected = np.percentile(np.concatenate([p.ravel() for p in planes.values()]), PERCENTILES)
    assert _printed_range(stdout) == pytest.approx(tuple(expected), rel=1e-5)
    assert "twice.zarr" in stdout
    picture = matplotlib.image.imread(runs["work"] / "pair.png")[..., :3].mean(axis=-1)
    top, bottom = np.array_split(picture, 2)
    assert top.mean() < bottom.mean() - 0.05


def test_a_channel_of_a_multichannel_image(runs) -> None:
    stdout = _ok(runs["procs"]["channel"])
    low, high = _printed_range(stdout)
    assert low >= 3 * runs["data"].min() - 1e-3 and high <= 3 * runs["data"].max() + 1e-3  # channel 1's values
    assert (runs["work"] / "channel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_denoised_channel_is_the_one_it_was_made_from(runs) -> None:
    """An output of channel 1 alone holds it at index 0; the range comes from it (3 x the data)."""
    low, high = _printed_range(_ok(runs["procs"]["made_from"]))
    assert (low, high) == pytest.approx(_printed_range(_ok(runs["procs"]["channel"])), rel=1e-5)


@pytest.mark.parametrize("case, words", [
    ("mismatch", ("cropped.zarr", "same shape")),
    ("no_channel", ("2 channels", "--channel")),
    ("outside", ("--at 16,0,0", "outside")),
    ("exists", ("exists.png", "--overwrite")),
    ("not_made_from", ("one_channel.zarr", "channels [1]", "not channel 0")),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, case, words) -> None:
    proc = runs["procs"][case]
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volden: error: "), proc.stderr
    for word in words:
        assert word in lines[0]
    output = runs["work"] / CASES[case][CASES[case].index("-o") + 1]
    if case == "exists":
        assert output.read_bytes() == b"kept"
    else:
        assert not output.exists()
