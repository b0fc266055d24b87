"""Write a benchmark's table into its own section of BENCHMARKS.md (replacing an older one)."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import date
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {device}, Python {platform.python_version()}, torch {torch.__version__}"


def markdown_table(header: list[str], rows: list[str]) -> str:
    """A Markdown table from its column names and already formatted ``| ... |`` rows."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])


def write_section(title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) the section ``## title`` with ``body``, the command (by default the
    script's own, as run) and the machine."""
    command = command or " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    section = (
        f"## {title}\n\n{body.strip()}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}; measured {date.today().isoformat()}.\n"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEach section is written by the script named in it.\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text)
    print(section)
