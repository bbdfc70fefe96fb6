"""Atomic file writes: write to a temporary file in the same folder, then rename.

An interrupted run therefore never leaves a half-written artefact under its final name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import matplotlib.figure

from ccrcc_grade.core.errors import CannotWrite, CcrccError


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


UMASK = _umask()  # read once at import: setting the umask per write would race between threads


def normal_mode(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private 0600/0700) the mode an ordinary
    ``open``/``mkdir`` would give it under the user's umask, so colleagues and a web server can
    read the outputs as they read any other file of the user's."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file beside ``path`` and rename it into place."""
    path = Path(path)
    if path.is_dir():
        raise CcrccError(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # read-only disk, no permission, a file where a folder should be
        raise CannotWrite(f"{path}: cannot write here ({exc.strerror or exc})", exc.strerror or "error") from None
    try:
        normal_mode(Path(tmp))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: the old file (if any) stays as it was
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CannotWrite(
            f"{path}: cannot write ({exc.strerror or exc}); nothing was replaced", exc.strerror or "error"
        ) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def refuse_overwriting_inputs(outputs: list[tuple[str, Path | str | None]], inputs: list[Path | str | None]) -> None:
    """Refuse, before anything is computed, an output that would replace an input: the same file,
    or an existing file inside an input folder (e.g. `predict --json RUN/best.pt`). ``outputs``
    pairs the flag with the file it writes; None entries are skipped."""
    srcs = [Path(i).resolve() for i in inputs if i is not None]
    for flag, out in outputs:
        if out is None:
            continue
        o = Path(out).resolve()
        for src in srcs:
            if o == src or (src.is_dir() and o.is_relative_to(src) and o.exists()):
                what = "is the input" if o == src else f"is a file inside the input {src}"
                raise CcrccError(f"{flag} {out}: {what}; it would be replaced - write the output elsewhere")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_csv(path: Path, columns: list[str], rows: Iterable[dict]) -> None:
    """A CSV table (header, then one line per row; keys not in ``columns`` left out), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_write_json(path: Path, data: Any) -> None:
    """Strict JSON (RFC 8259: no NaN or Infinity literals, which most parsers outside Python
    refuse): a non-finite number is written as null, and a top-level object says where and why
    under ``null_reasons``."""
    clean, nulls = finite_only(data)
    if nulls and isinstance(clean, dict):
        clean["null_reasons"] = {**clean.get("null_reasons", {}), **nulls}
    atomic_write_text(path, json.dumps(clean, indent=2, default=_json_default, allow_nan=False) + "\n")


def finite_only(data: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """``data`` with every NaN or infinite float (numpy's too) replaced by None, and
    {JSON path: reason} for each, e.g. {"runs.a.test.auc": "NaN: not defined for these data"}."""
    import math

    import numpy as np

    if isinstance(data, (float, np.floating)):
        f = float(data)
        if math.isfinite(f):
            return f, {}
        return None, {where or "$": "NaN: not defined for these data" if f != f else f"{f}: not a finite number"}
    if isinstance(data, dict):
        out, nulls = {}, {}
        for k, v in data.items():
            out[k], sub = finite_only(v, f"{where}.{k}" if where else str(k))
            nulls |= sub
        return out, nulls
    if isinstance(data, (list, tuple)):
        items, nulls = [], {}
        for i, v in enumerate(data):
            item, sub = finite_only(v, f"{where}[{i}]")
            items.append(item)
            nulls |= sub
        return items, nulls
    if isinstance(data, np.ndarray):
        return finite_only(data.tolist(), where)
    return data, {}


def atomic_save_figure(fig: matplotlib.figure.Figure, path: Path, **kwargs: object) -> None:
    """Save a matplotlib figure atomically (format taken from the suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **kwargs))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
