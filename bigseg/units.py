"""Lengths and volumes in voxels or physical units, converted per axis with an image's voxel size.

A user writes a length as a number of voxels (``12``) or with a unit (``8um``, ``0.5 um``, ``2 µm``,
``500nm``), and a volume as a number of voxels (``200``) or with a unit (``20um^3``, ``20 µm³``; ``um^2``
for areas in 2D). :class:`VoxelSize` turns them into voxels along each axis, so an anisotropic light-sheet
volume (z spacing 4x the xy spacing) gets the right per-axis smoothing, halo and seed spacing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Metres per unit, by the names users write and the NGFF axis units.
_METRES = {
    "angstrom": 1e-10, "å": 1e-10, "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6,
    "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3, "cm": 1e-2, "centimeter": 1e-2,
    "m": 1.0, "meter": 1.0, "metre": 1.0,
}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([^\s\d^³²]*)\s*(\^?[23]|³|²)?\s*$")
EXAMPLE_LENGTH = "a number of voxels or a length with a unit, e.g. 12 or 8um"
EXAMPLE_VOLUME = "a number of voxels or a volume with a unit, e.g. 200 or 20um^3"


@dataclass(frozen=True)
class Quantity:
    """A parsed length (``power`` 1) or volume/area (``power`` 3/2); ``unit`` None = voxels."""

    value: float
    unit: str | None = None
    power: int = 1

    @property
    def metres(self) -> float:
        return self.value * _METRES[self.unit] ** self.power


def parse(value, power: int = 1) -> Quantity:
    """``12`` / ``"12"`` (voxels) or ``"8um"``, 0 or more; raises ``ValueError`` with a sentence users
    understand."""
    q = _quantity(value, power)
    if not math.isfinite(q.value) or q.value < 0:
        raise ValueError("must be 0 or more")
    return q


def _quantity(value, power: int) -> Quantity:
    """The number and unit of ``value``, whatever its sign."""
    if isinstance(value, bool):
        raise ValueError(f"expected {EXAMPLE_LENGTH if power == 1 else EXAMPLE_VOLUME}, not {value}")
    if isinstance(value, (int, float)):
        return Quantity(float(value), None, power)
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"'{value}' is not {EXAMPLE_LENGTH if power == 1 else EXAMPLE_VOLUME}")
    number, unit, exponent = m.groups()
    unit = unit.lower() or None
    if unit in ("px", "vx", "voxel", "voxels", "pixel", "pixels"):
        unit = None
    if unit is not None and unit not in _METRES:
        raise ValueError(f"unknown unit '{unit}' in '{value}'; use nm, um (µm) or mm")
    given = {None: 1, "^2": 2, "2": 2, "²": 2, "^3": 3, "3": 3, "³": 3}[exponent]
    if unit is not None and given == 1 and power > 1:
        raise ValueError(f"'{value}' is a length, not a volume; write e.g. 20um^3 (or a number of voxels)")
    if given > 1 and power == 1:
        raise ValueError(f"'{value}' is not a length; write e.g. 8um (or a number of voxels)")
    return Quantity(float(number), unit, given if unit else power)


def check_length(value):
    """Pydantic validator: a length or a list of per-axis lengths; returns the value as given."""
    for v in value if isinstance(value, (list, tuple)) else (value,):
        parse(v)
    return value


def check_positive_length(value):
    q = _quantity(value, 1)
    if not (math.isfinite(q.value) and q.value > 0):
        raise ValueError("must be positive")
    return value


def check_volume(value):
    parse(value, power=3)
    return value


@dataclass(frozen=True)
class VoxelSize:
    """The physical size of a voxel along each axis (z, y, x or y, x) and the axes' units (NGFF names)."""

    spacing: tuple[float, ...]
    units: tuple[str | None, ...]

    @classmethod
    def isotropic(cls, ndim: int) -> "VoxelSize":
        return cls((1.0,) * ndim, (None,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def _axis_metres(self, axis: int) -> float:
        unit = (self.units[axis] or "").lower()
        if unit not in _METRES:
            raise ValueError(f"a length in physical units, but axis {axis} of the image has "
                             f"{'unit ' + repr(unit) if unit else 'no unit'}; give it in voxels")
        return self.spacing[axis] * _METRES[unit]

    def voxels(self, value) -> tuple[float, ...]:
        """A length (or per-axis lengths) in voxels along each axis."""
        values = list(value) if isinstance(value, (list, tuple)) else [value] * self.ndim
        if len(values) != self.ndim:
            raise ValueError(f"has {len(values)} values but the image is {self.ndim}D; "
                             f"give 1 value or {self.ndim} (one per axis)")
        out = []
        for axis, v in enumerate(values):
            q = parse(v)
            out.append(q.value if q.unit is None else _round(q.metres / self._axis_metres(axis)))
        return tuple(out)

    def volume_voxels(self, value) -> float:
        """A volume (an area in 2D) in voxels."""
        q = parse(value, power=self.ndim)
        if q.unit is None:
            return q.value
        if q.power != self.ndim:
            raise ValueError(f"'{value}' is {'an area' if q.power == 2 else 'a volume'} but the image is "
                             f"{self.ndim}D; write it with ^{self.ndim}")
        return _round(q.metres / math.prod(self._axis_metres(a) for a in range(self.ndim)))

    def anisotropy(self) -> float:
        """z spacing over x spacing (1 in 2D)."""
        return self.spacing[0] / self.spacing[-1] if self.ndim == 3 else 1.0


def _round(voxels: float) -> float:
    """Unit conversions in binary floating point are off by ~1e-16: 8000nm is 4 voxels of 2um, not 4.000000001."""
    return round(voxels, 9)
