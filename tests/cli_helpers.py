"""Helpers shared by the tests that run the real ``volden`` command."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def volden_command(*args: str) -> list[str]:
    """The ``volden`` command line, run with this interpreter."""
    return [sys.executable, "-c", "from volden.cli import main; main()", *args]


def tree_digest(path: Path) -> dict[str, str]:
    """Every file and folder under ``path`` (or ``path`` itself) with the SHA-256 of its bytes."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    digest = {}
    for root, dirs, files in os.walk(path):
        rel = Path(root).relative_to(path)
        digest[f"{rel}/"] = "dir"
        for name in files:
            digest[str(rel / name)] = hashlib.sha256((Path(root) / name).read_bytes()).hexdigest()
    return digest


def run_with_peak_rss(args: list[str], cwd: Path, timeout: float) -> tuple[int, str, int]:
    """Exit status, output and peak RSS (bytes) of a command.

    The peak is the high-water mark of the command's own memory (``VmHWM``, which starts afresh
    at exec and only grows), read until it exits. Not ``ru_maxrss``: Linux carries into it the
    RSS of the process that started the command (pytest, a benchmark). Linux only.
    """
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        status_file, peak, deadline = Path(f"/proc/{proc.pid}/status"), 0, time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            found = re.search(r"^VmHWM:\s+(\d+) kB", status_file.read_text(), re.M)
            peak = max(peak, int(found.group(1)) * 1024 if found else 0)
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        log.seek(0)
        return proc.returncode, log.read(), peak
