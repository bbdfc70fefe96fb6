"""Axis-aligned boxes in pixel coordinates (x = column, y = row), edges inclusive of x_min/y_min
and exclusive of x_max/y_max after rounding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @classmethod
    def from_corners(cls, x0: float, y0: float, x1: float, y1: float) -> "Box":
        """Normalise two opposite corners given in any order."""
        return cls(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def expand(self, dx: float, dy: float) -> "Box":
        return Box(self.x_min - dx, self.y_min - dy, self.x_max + dx, self.y_max + dy)

    def clip(self, width: int, height: int) -> "Box":
        return Box(max(0.0, self.x_min), max(0.0, self.y_min),
                   min(float(width), self.x_max), min(float(height), self.y_max))

    def inside(self, width: int, height: int) -> bool:
        return self.x_min >= 0 and self.y_min >= 0 and self.x_max <= width and self.y_max <= height

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)
