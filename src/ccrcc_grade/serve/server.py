"""`ccrcc-grade serve`: check the security defaults, build the app, run uvicorn."""

from __future__ import annotations

import ipaddress
import math
import stat
from collections import Counter
from pathlib import Path

from ccrcc_grade.core.config import ServeOptions
from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.app import create_app
from ccrcc_grade.serve.receiver import DicomNode, Receiver
from ccrcc_grade.serve.security import LOOPBACK_HOSTS
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
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077 and not is_loopback(host):
        raise CcrccError(
            f"{p}: other users can read the token file (mode {mode:o}); chmod 600 {p} before serving "
            "beyond this machine"
        )
    token = p.read_text(encoding="utf-8", errors="replace").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise CcrccError(f"{p}: the token must be one line of at least 16 characters without spaces")
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise CcrccError(
            f"{p}: the token is guessable (about {bits:.0f} bits of entropy, at least {MIN_TOKEN_BITS} needed); "
            'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return token


MIN_TOKEN_BITS = 80


def token_bits(token: str) -> float:
    """A conservative estimate of a token's entropy: the Shannon entropy of its characters times
    the number of characters that do not merely continue a run (``aaaa``, ``abcd``, ``9876``), so
    ``aaaa...``, ``abab...`` and ``0123456789abcdef`` score low, ``secrets.token_urlsafe(32)`` ~ 190."""
    counts = Counter(token)
    per_char = -sum(c / len(token) * math.log2(c / len(token)) for c in counts.values())
    steps = [ord(b) - ord(a) for a, b in zip(token, token[1:])]
    runs = sum(1 for s, t in zip(steps, steps[1:]) if s == t and abs(s) <= 1)
    return per_char * (len(token) - runs)


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
    allowed_hosts: list[str] | None = None,
    roi_model: str | None = None,
    dicom: DicomNode | None = None,
    ohif_port: int | None = None,
    sr_style: str = "standard",
) -> None:
    """``ohif_port``: also serve the OHIF viewer on this port (``ohif``), reading ``pacs``."""
    import threading

    import uvicorn

    if not 1 <= port <= 65535:
        raise CcrccError(f"--port must be 1-65535, got {port}")
    if max_upload_mb < 1 or max_files < 1:
        raise CcrccError("--max-upload-mb and --max-files must be >= 1")
    token = read_token(token_file, host)
    hosts = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::") else [host]), *(allowed_hosts or [])]
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        raise CcrccError(
            f"--host {host} listens on every address: name the ones clients use with --allowed-host "
            "(e.g. --allowed-host grading.hospital.org 10.1.2.3), so a foreign name in the Host header is refused"
        )
    if ohif_port is not None:  # before the models load
        if not pacs:
            raise CcrccError("--ohif shows the studies of the PACS: give --pacs URL (its DICOMweb) too")
        if not 1 <= ohif_port <= 65535 or ohif_port == port:
            raise CcrccError(f"--ohif-port must be 1-65535 and differ from --port, got {ohif_port}")
    app = create_app(
        models,
        data,
        pacs,
        token,
        UploadLimits(max_upload_mb * 1024**2, max_files),
        device,
        hosts=hosts,
        roi_model=roi_model,
        dicom=dicom,
        ohif_port=ohif_port,
        sr_style=sr_style,
    )
    receiver = app.state.receiver
    if ohif_port is not None:
        from ccrcc_grade.serve.ohif import ohif_app

        config = uvicorn.Config(ohif_app(pacs, token, hosts), host=host, port=ohif_port, log_level="warning")
        viewer = uvicorn.Server(config)
        threading.Thread(target=viewer.run, name="ccrcc-ohif", daemon=True).start()
    print(
        f"ccrcc-grade workstation on http://{host}:{port}/ (API documentation: /docs); "
        f"studies in {Path(data).resolve()}"
        + (f"; PACS {pacs}" if pacs else "")
        + (f"; tumour proposals by {roi_model}" if roi_model else "; tumour proposals by interpolation only")
        + ("; bearer token required" if token else "")
        + (
            f"; DICOM receiver {receiver.ae_title} on port {receiver.port} for {receiver.allowed_text()}"
            if receiver
            else ""
        )
        + (f"; results by C-STORE to {dicom.send}" if dicom and dicom.send else "")
        + (f"; OHIF viewer on http://{host}:{ohif_port}/" if ohif_port else ""),
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")


def listen(data: str, dicom: DicomNode) -> None:
    """`ccrcc-grade listen`: the DICOM receiver alone, into the study folder `serve --data` reads
    (the worklist is shared through its SQLite file); runs until interrupted."""
    import logging
    import signal
    import threading

    from ccrcc_grade.serve.store import StudyStore

    if dicom.port is None:
        raise CcrccError("--port: give the DICOM port to listen on")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per association and instance otherwise
    store = StudyStore(Path(data))
    receiver = Receiver(store, dicom.ae_title, dicom.port, dicom.allow, dicom.stable_seconds, dicom.host).start()
    print(
        f"ccrcc-grade DICOM receiver {receiver.ae_title} on {dicom.host}:{receiver.port} "
        f"for {receiver.allowed_text()}; "
        f"a study is complete {dicom.stable_seconds:g} s after its last instance; studies in {Path(data).resolve()}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        receiver.stop()
