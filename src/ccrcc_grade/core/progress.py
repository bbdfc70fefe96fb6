"""Progress bars (tqdm) that stay quiet when disabled or when stderr is not a terminal in CI."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    it: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enable: bool = True,
    leave: bool = True,
) -> Iterable[T]:
    """Wrap an iterable in a tqdm bar with ETA; ``CCRCC_NO_PROGRESS=1`` silences all bars."""
    disable = (not enable) or os.environ.get("CCRCC_NO_PROGRESS") == "1"
    return tqdm(it, total=total, desc=desc, unit=unit, disable=disable, leave=leave, dynamic_ncols=True)
