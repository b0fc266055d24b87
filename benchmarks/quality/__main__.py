"""volden against CAREamics N2V, BM4D, the calibrated Gaussian and its own Noise2Truth (issue 7).

Every (volume, method) result is saved to ``--out`` as soon as it exists; running the same
command again skips those already there (with the same settings), so a run of hours can be
interrupted and continued.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.report import markdown_table, write_section
from volden import TrainConfig
from volden.metrics import psnr_ssim

from .methods import METHODS, Run, Settings, Skip, centre_crop
from .volumes import REAL, make_case, synth_names

FULL_MINUTES, FULL_CAREAMICS_MINUTES = 10.0, 60.0
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[2]


def triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X, not {text!r}")
    return values  # type: ignore[return-value]


def train_setting(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` of volden's TrainConfig, the value a Python literal (4e-3, (2,2,2))."""
    field, _, value = text.partition("=")
    if field not in TrainConfig.__dataclass_fields__ or field == "minutes":
        raise argparse.ArgumentTypeError(f"{field!r} is not a TrainConfig field to set")
    try:
        return field, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=LITERAL") from None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    parser.add_argument("--minutes", type=float, default=FULL_MINUTES, help="training budget of volden and Noise2Truth")
    parser.add_argument("--careamics-minutes", type=float, default=FULL_CAREAMICS_MINUTES)
    parser.add_argument("--volumes", default=",".join([*synth_names((5, 20)), *REAL]),
                        help="KIND-PHOTONS (volden synth) and/or " + ", ".join(REAL))
    parser.add_argument("--methods", default=",".join(METHODS), help=", ".join(METHODS))
    parser.add_argument("--shape", type=triple, default=(64, 256, 256), help="of the synthetic volumes")
    parser.add_argument("--bm4d-crop", type=triple, default=(32, 128, 128),
                        help="BM4D runs on this centre crop (all methods are scored on it too)")
    parser.add_argument("--careamics-patch", default="16,64,64", help="default: volden's CPU patch")
    parser.add_argument("--careamics-batch", type=int, default=4, help="default: volden's CPU batch")
    parser.add_argument("--train", type=train_setting, action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field for volden and Noise2Truth, off its default (repeatable)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "volden-quality",
                        help="volumes, models and CAREamics' files")
    parser.add_argument("--out", type=Path, help="results JSON (default: one per budget and shape in "
                        "benchmarks/quality/results/, kept in the repository so a long run continues anywhere)")
    parser.add_argument("--redo", default="", help="methods to run again where their saved result comes from another commit")
    parser.add_argument("--section", help="write the tables into BENCHMARKS.md under this title")
    parser.add_argument("--note", default="", help="a paragraph for the section: what the run's numbers need said")
    args = parser.parse_args()
    unknown = (set(args.methods.split(",")) | set(filter(None, args.redo.split(",")))) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {', '.join(sorted(unknown))}; expected some of {', '.join(METHODS)}")
    return args


def score(run: Run, clean: np.ndarray, crop) -> dict:
    """PSNR and SSIM against ``clean`` (peak: its range) on the whole volume, unless the method
    ran on a crop only, and on the crop; plus the timings."""
    peak = float(clean.max() - clean.min())
    whole = (None, None) if run.region else psnr_ssim(run.denoised, clean, peak)
    crop_psnr, crop_ssim = psnr_ssim(run.denoised if run.region else run.denoised[crop], clean[crop], peak)
    return {
        "psnr": whole[0], "ssim": whole[1], "crop_psnr": crop_psnr, "crop_ssim": crop_ssim,
        "train_s": run.train_s, "predict_s": run.predict_s,
        "voxels_per_s": run.denoised.size / run.predict_s if run.predict_s else None, "note": run.note,
    }


def checkout_version() -> str:
    """The commit the code under test comes from, '+changes' when its code (volden's, the
    harness') differs from that commit; results and prose may change freely."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    changed = git("status", "--porcelain", "--", "volden", "benchmarks/quality/*.py", "pyproject.toml")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


def load_results(path: Path, settings: dict) -> dict:
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") != settings:
            raise SystemExit(f"{path} holds results of other settings ({saved.get('settings')}); pass --out elsewhere")
        return saved
    return {"settings": settings, "volumes": {}}


def settings_record(settings: Settings, shape: tuple[int, int, int]) -> dict:
    """The settings as the results file keeps them, through JSON so tuples compare equal to the
    lists a saved file holds; ``train`` only when set, as files written before it had none."""
    record = {**asdict(settings), "shape": shape}
    if settings.train:
        record["train"] = dict(settings.train)
    else:
        del record["train"]
    return json.loads(json.dumps(record))


def run_all(args: argparse.Namespace, settings: Settings, out: Path) -> dict:
    results = load_results(out, settings_record(settings, args.shape))
    version, redo = checkout_version(), set(filter(None, args.redo.split(",")))
    for name in args.volumes.split(","):
        case = make_case(name, args.work, args.shape)
        if case is None:
            continue
        clean = case.clean
        crop = centre_crop(clean.shape, settings.bm4d_crop)
        entry = results["volumes"].setdefault(name, {"about": case.about, "shape": list(clean.shape), "methods": {}})
        for method in args.methods.split(","):
            saved = entry["methods"].get(method)
            if saved is not None and (method not in redo or saved.get("commit") == version):
                continue
            print(f"{name}: {method} ...", flush=True)
            try:
                entry["methods"][method] = score(METHODS[method](case, settings, args.work / name), clean, crop)
            except Skip as reason:
                entry["methods"][method] = {"skipped": str(reason)}
            entry["methods"][method]["commit"] = version
            print(f"{name}: {method}: {entry['methods'][method]}", flush=True)
            out.write_text(json.dumps(results, indent=1))
    return results


def cell(value, form: str) -> str:
    return "-" if value is None else format(value, form)


def result_rows(results: dict) -> list[str]:
    rows = []
    for name, entry in results["volumes"].items():
        for method, r in entry["methods"].items():
            if "skipped" in r:
                rows.append(f"| {name} | {method} |" + " - |" * 7 + f" skipped: {r['skipped']} | {r.get('commit', '-')} |")
                continue
            rows.append(
                f"| {name} | {method} | {cell(r['psnr'], '.2f')} | {cell(r['ssim'], '.4f')} | {r['crop_psnr']:.2f} | "
                f"{r['crop_ssim']:.4f} | {r['train_s']:.0f} | {r['predict_s']:.1f} | {cell(r['voxels_per_s'], '.3g')} | "
                f"{r['note']} | {r.get('commit', '-')} |"
            )
    return rows


# The issue's acceptance, as (label, method, other, column, margin): volden's PSNR minus the
# other's, against the margin it must reach; BM4D is compared on its crop.
ACCEPTANCE = [
    ("volden - Gaussian (>= +3)", "volden", "gaussian", "psnr", 3.0),
    ("volden - BM4D on crop (>= +2)", "volden", "bm4d", "crop_psnr", 2.0),
    ("volden - CAREamics (>= 0)", "volden", "careamics", "psnr", 0.0),
    ("volden - Noise2Truth (>= -0.5)", "volden", "n2t", "psnr", -0.5),
    ("volden --tta 4 - volden (> 0)", "volden-tta", "volden", "psnr", 1e-9),
    ("volden-posterior - volden (> 0)", "volden-posterior", "volden", "psnr", 1e-9),  # issue 31
    ("volden-posterior - Noise2Truth (>= -0.3)", "volden-posterior", "n2t", "psnr", -0.3),
]


def acceptance_rows(results: dict) -> list[str]:
    rows = []
    for name, entry in results["volumes"].items():
        done = {m: r for m, r in entry["methods"].items() if "skipped" not in r}
        cells = []
        for _, method, other, column, margin in ACCEPTANCE:
            if method in done and other in done:
                gap = done[method][column] - done[other][column]
                cells.append(f"{gap:+.2f} {'yes' if gap >= margin else 'no'}")
            else:
                cells.append("-")
        speeds = [done.get(m, {}).get("voxels_per_s") for m in ("volden", "careamics")]
        cells.append(f"{speeds[0] / speeds[1]:.2f}" if all(speeds) else "-")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def report(results: dict) -> str:
    s = results["settings"]
    reduced = s["minutes"] < FULL_MINUTES or s["careamics_minutes"] < FULL_CAREAMICS_MINUTES
    volumes = "; ".join(f"{name}: {entry['about']} ({'x'.join(map(str, entry['shape']))})"
                        for name, entry in results["volumes"].items())
    results_table = markdown_table(
        ["volume", "method", "PSNR dB", "SSIM", "crop PSNR dB", "crop SSIM", "train s", "predict s", "voxels/s", "note", "commit"],
        result_rows(results),
    )
    acceptance_table = markdown_table(
        ["volume", *(label for label, *_ in ACCEPTANCE), "volden / CAREamics voxels/s (>= 1)"], acceptance_rows(results)
    )
    return (
        ("**Reduced budget: not the acceptance run.** The acceptance run (all six volumes at 64x256x256 and the "
         "real ones whole; about 80 minutes a volume on 2 cores, 60 of them CAREamics'; results are saved per "
         "method, so the same command continues an interrupted run): `bash benchmarks/quality/setup_careamics.sh && "
         "pip install -e '.[quality]' && python -m benchmarks.quality "
         f"--minutes {FULL_MINUTES:g} --careamics-minutes {FULL_CAREAMICS_MINUTES:g} "
         "--section 'Quality against peers (issue 7)'`.\n\n"
         if reduced else "")
        + f"volden and Noise2Truth train {s['minutes']:g} min"
        + ("".join(f", {field}={value}" for field, value in s.get("train", {}).items()) or " (volden's defaults)")
        + f", CAREamics N2V 3D {s['careamics_minutes']:g} min "
        f"(patch {s['careamics_patch']}, batch {s['careamics_batch']}), all on this machine's CPU. Volumes: {volumes}. "
        "Methods: raw (the noisy input), "
        "gaussian (sigmas by `volden calibrate`, no clean data), bm4d, careamics, volden (`volden.train` and "
        "`volden.denoise` at their defaults but for the fields named above), volden-tta (that model predicting with "
        "`--tta 4`), volden-posterior (`volden train --posterior`: a prior network and the camera's noise curve fitted "
        "from the volume, the posterior mean of Laine et al. 2019 at one pass per masking phase), n2t (volden's network, patches, schedule and prediction, trained on "
        "noisy-clean pairs: Noise2Truth), n2t-masked (Noise2Truth through volden's masks: the masked and filled patch in, "
        "the loss on the masked voxels against the clean patch), volden-fresh (volden's training on a new "
        "recording of the clean patch each step: endless noise realisations instead of one). PSNR (peak: the clean volume's range) and SSIM against the clean volume; 'crop' columns on the centre crop BM4D runs on "
        f"({'x'.join(map(str, s['bm4d_crop']))} at most). Train s: calibration for the Gaussian, the noise-model fit "
        "for BM4D (which runs through the generalised Anscombe transform). Voxels/s: prediction. Commit: the "
        "volden commit a row was measured at ('+changes': with uncommitted changes).\n\n"
        f"{results_table}\n\nAgainst the issue's acceptance:\n\n{acceptance_table}"
    )


def shown_command(argv: list[str], results: dict) -> str:
    """The command that reproduces the whole table: as typed, less ``--note`` (prose) and
    ``--redo`` (what to rerun now), with the volumes and methods of every row the table holds,
    so a run that added a few rows to a saved file still names what makes all of them."""
    dropped = ("--note", "--redo", "--volumes", "--methods")
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in dropped:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in dropped)):
            kept.append(arg)
    volumes = list(results["volumes"])
    methods = [m for m in METHODS if any(m in entry["methods"] for entry in results["volumes"].values())]
    return shlex.join(["python", "-m", "benchmarks.quality", *kept,
                       "--volumes", ",".join(volumes), "--methods", ",".join(methods)])


def main() -> None:
    args = parse_args()
    settings = Settings(args.minutes, args.careamics_minutes, args.careamics_patch, args.careamics_batch, args.bm4d_crop,
                        tuple(args.train))
    args.work.mkdir(parents=True, exist_ok=True)
    shape = "x".join(map(str, args.shape))
    trained = "".join(f"-{field}={value}".replace(" ", "") for field, value in args.train)
    out = args.out or RESULTS / f"volden-{args.minutes:g}min-careamics-{args.careamics_minutes:g}min-{shape}{trained}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = run_all(args, settings, out)
    body = report(results) + (f"\n\n{args.note}" if args.note else "")
    if args.section:
        write_section(args.section, body, command=shown_command(sys.argv[1:], results))
    else:
        print(body)


if __name__ == "__main__":
    main()
