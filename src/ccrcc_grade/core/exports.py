"""Public names of a sub-package, imported on first use (PEP 562), so importing the sub-package
stays cheap: ``import ccrcc_grade.model`` does not load torch until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module of ``package``) on first
    use of ``name`` and returns that module's ``name``."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
