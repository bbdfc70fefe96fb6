"""The four CT phases of the study and the folder-name aliases accepted for them."""

from __future__ import annotations

from ccrcc_grade.core.errors import CcrccError

PHASES: tuple[str, ...] = ("plain", "corticomedullary", "parenchymal", "excretory")
COMBINED = "combined"
KITS_PHASE = "corticomedullary"  # KiTS scans are late arterial / corticomedullary
CLASSES: tuple[str, str] = ("low", "high")  # label 0 = WHO/ISUP I-II, label 1 = III-IV

# Case-insensitive aliases (spaces, '-' and '_' are ignored when matching).
ALIASES: dict[str, str] = {
    **{a: "plain" for a in ("plain", "nc", "noncontrast", "unenhanced", "native", "precontrast", "plainscan", "pre")},
    **{a: "corticomedullary" for a in ("corticomedullary", "cmp", "cm", "arterial", "art", "latearterial", "cortical")},
    **{
        a: "parenchymal"
        for a in ("parenchymal", "np", "nephrographic", "venous", "portal", "portalvenous", "pv", "nephrogenic")
    },
    **{a: "excretory" for a in ("excretory", "ep", "delayed", "urographic", "pyelographic")},
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def canonical_phase(name: str) -> str | None:
    """Return the canonical phase for a folder name or alias, or None when it is not a phase."""
    return ALIASES.get(_key(name))


def check_phase(name: str, allow_combined: bool = False) -> str:
    """Canonical phase name, or a :class:`CcrccError` listing the valid names."""
    if allow_combined and _key(name) == COMBINED:
        return COMBINED
    phase = canonical_phase(name)
    if phase is None:
        valid = ", ".join(PHASES + ((COMBINED,) if allow_combined else ()))
        raise CcrccError(f"unknown phase {name!r}; expected one of: {valid} (or an alias)")
    return phase
