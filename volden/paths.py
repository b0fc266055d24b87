"""Where volden may write: never into its input, never over an output unless asked."""

from __future__ import annotations

from pathlib import Path

from .errors import VoldenError


def check_output_path(input_path: str | Path, output_path: str | Path, overwrite: bool) -> None:
    """Refuse an output that would overwrite, sit inside, or contain the input."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if target == source or source in target.parents:
        raise VoldenError(f"{output_path} lies inside the input {input_path}; write the output elsewhere")
    if target in source.parents:
        raise VoldenError(f"{output_path} contains the input {input_path}; write the output elsewhere")
    if target.exists() and not overwrite:
        raise VoldenError(f"{output_path} exists; pass --overwrite to replace it")
