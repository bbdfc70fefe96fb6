"""`ccrcc-grade serve`: check the security defaults, build the app, run uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ccrcc_grade.core.config import ServeOptions
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.app import create_app
from ccrcc_grade.serve.store import UploadLimits

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None, host: str) -> str | None:
    """The bearer token, required whenever the server listens beyond this machine."""
    if path is None:
        if not is_loopback(host):
            raise CcrccError(
                f"--host {host} makes the workstation reachable from other machines: give --token-file "
                "with a secret token (every API call then needs it)"
            )
        return None
    p = Path(path)
    if not p.is_file():
        raise CcrccError(f"{p}: token file not found")
    token = p.read_text(encoding="utf-8", errors="replace").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise CcrccError(f"{p}: the token must be one line of at least 16 characters without spaces")
    return token


def serve(
    models: list[str],
    host: str = ServeOptions.host,
    port: int = ServeOptions.port,
    data: str = ServeOptions.data,
    pacs: str | None = None,
    token_file: str | None = None,
    max_upload_mb: int = ServeOptions.max_upload_mb,
    max_files: int = ServeOptions.max_files,
    device: str = "auto",
) -> None:
    import uvicorn

    if not 1 <= port <= 65535:
        raise CcrccError(f"--port must be 1-65535, got {port}")
    if max_upload_mb < 1 or max_files < 1:
        raise CcrccError("--max-upload-mb and --max-files must be >= 1")
    token = read_token(token_file, host)
    app = create_app(models, data, pacs, token, UploadLimits(max_upload_mb * 1024**2, max_files), device)
    print(
        f"ccrcc-grade workstation on http://{host}:{port}/ (API documentation: /docs); "
        f"studies in {Path(data).resolve()}"
        + (f"; PACS {pacs}" if pacs else "")
        + ("; bearer token required" if token else ""),
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
