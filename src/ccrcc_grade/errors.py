"""The project's one exception type.

Every expected failure (bad input, impossible request) raises :class:`CcrccError` with a
message that names the file and the problem; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations


class CcrccError(Exception):
    """An error caused by the user's input or request, reported as one line (exit code 2)."""
