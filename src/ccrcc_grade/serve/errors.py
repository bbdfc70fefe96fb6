"""The workstation's errors and their HTTP statuses; every answer names no server path."""

from __future__ import annotations

import re

from ccrcc_grade.core.errors import CcrccError


class NotFound(CcrccError):
    """A study, series, slice or model that does not exist (HTTP 404)."""


class TooLarge(CcrccError):
    """An upload or a box list over the configured limits (HTTP 413)."""


class Unauthorized(CcrccError):
    """No or a wrong bearer token (HTTP 401)."""


class Unprocessable(CcrccError):
    """A well-formed request the study cannot serve yet (HTTP 422)."""


class Stale(CcrccError):
    """A report or SR asked for after its inputs changed (HTTP 409)."""


STATUS = ((Unauthorized, 401), (NotFound, 404), (Stale, 409), (TooLarge, 413), (Unprocessable, 422))


def status_of(exc: CcrccError) -> int:
    """The HTTP status of an error (400 for any other bad input; the PACS client adds 502)."""
    return next((code for cls, code in STATUS if isinstance(exc, cls)), getattr(exc, "http_status", 400))


PATH = re.compile(r"(?<![\w.])(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def public_text(text: str, private: list[str]) -> str:
    """A message fit for an HTTP answer: no server path (the folders given in ``private``, and
    any absolute path, are cut down to the file's name)."""
    for p in sorted(private, key=len, reverse=True):
        if len(p) > 1:
            text = text.replace(p + "/", "").replace(p, "<server folder>")
    return PATH.sub(r"\1", text)
