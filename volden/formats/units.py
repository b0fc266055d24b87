"""Lengths as microscopy files spell them, and the OME-Zarr (UDUNITS-2) names volden writes."""

from __future__ import annotations

import math
from typing import Any

# Lengths OME-Zarr names that microscopy uses, as powers of ten of a metre (so that conversions
# are exact where they can be), and how file formats spell them.
METRE_EXPONENTS = {"angstrom": -10, "picometer": -12, "nanometer": -9, "micrometer": -6, "millimeter": -3,
                   "centimeter": -2, "meter": 0}
SPELLINGS = {"å": "angstrom", "pm": "picometer", "nm": "nanometer", "um": "micrometer", "µm": "micrometer",
             "μm": "micrometer", "\\u00b5m": "micrometer", "micron": "micrometer", "microns": "micrometer",
             "mm": "millimeter", "cm": "centimeter", "m": "meter"}


def length_unit(text: str | None) -> str | None:
    """The OME-Zarr name of a length unit as a file's metadata spells it; None for none or 'pixel'."""
    key = (text or "").strip().lower()
    return key if key in METRE_EXPONENTS else SPELLINGS.get(key)


def factor(unit: str | None, target: str | None) -> float:
    """What a length in ``unit`` is multiplied by to be in ``target`` (1 where either is unknown)."""
    return 10.0 ** (METRE_EXPONENTS[unit] - METRE_EXPONENTS[target]) if unit and target else 1.0


def positive(value: Any) -> float | None:
    """``value`` as a finite positive number, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
