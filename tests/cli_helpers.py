"""Helpers shared by the tests that run the real ``volden`` command."""

from __future__ import annotations

import hashlib
import os
import sys
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
