"""The HTTP layer of the workstation (FastAPI): the app factory puts the front door (``security``),
the token check and the error answers around the routers of ``routes`` (one per resource), which
are thin routes over the ``Workstation`` services. Every failure of the user's input is a JSON
``{"detail": "<one line>"}`` with a 4xx status (502 for the PACS, 507 for a full disk) naming no
server path."""

from __future__ import annotations

import errno
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ccrcc_grade.core.errors import CannotWrite, CcrccError
from ccrcc_grade.model.card import DISCLAIMER
from ccrcc_grade.roi.net import load_roi_model
from ccrcc_grade.serve.errors import Unauthorized, public_text, status_of
from ccrcc_grade.serve.models import ModelRegistry
from ccrcc_grade.serve.pacs import Pacs
from ccrcc_grade.serve.receiver import DicomNode, Receiver, parse_ae_title
from ccrcc_grade.serve.routes import meta, results, studies
from ccrcc_grade.serve.security import LOOPBACK_HOSTS, Guard
from ccrcc_grade.serve.sender import Destination, Retrier
from ccrcc_grade.serve.store import StudyStore, UploadLimits
from ccrcc_grade.serve.workstation import Workstation

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("ccrcc_grade.serve")


def create_app(
    models: list[str | Path],
    data: str | Path,
    pacs_url: str | None = None,
    token: str | None = None,
    limits: UploadLimits | None = None,
    device: str = "auto",
    hosts: list[str] | None = None,
    roi_model: str | Path | None = None,
    dicom: DicomNode | None = None,
    ohif_port: int | None = None,
    sr_style: str = "standard",
) -> FastAPI:
    """The workstation. ``hosts``: the names the server answers to in the Host header (loopback
    names by default; `serve` adds the address it listens on and --allowed-host); ``dicom``: the
    DICOM receiver (started and stopped with the app) and the C-STORE destination of results;
    ``ohif_port``: where `serve --ohif` serves the OHIF viewer (the page links studies to it);
    ``sr_style``: "ohif" writes the boxes as rectangles OHIF can edit (``sr``)."""
    dicom = dicom or DicomNode()
    # the DICOM flags are checked before the models load (seconds): a typo is refused at once
    send_to = Destination.parse(dicom.send) if dicom.send else None
    ae_title = parse_ae_title(dicom.ae_title)
    store = StudyStore(Path(data), limits)
    receiver = None
    if dicom.port is not None:  # checked now (allow-list, port), started with the app
        receiver = Receiver(store, ae_title, dicom.port, dicom.allow, dicom.stable_seconds, dicom.host)
    ws = Workstation(
        ModelRegistry(models, device),
        store,
        Pacs(pacs_url) if pacs_url else None,
        load_roi_model(Path(roi_model)) if roi_model else None,
        send_to,
        ae_title,
        ohif_port,
        sr_style,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        retrier = Retrier(ws.run_job).start(ws.store.worklist.due_jobs)
        if receiver is not None:
            receiver.start()
        try:
            yield
        finally:
            if receiver is not None:
                receiver.stop()
            retrier.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="ccrcc-grade workstation",
        version="1",
        description=f"Grade clear cell RCC (WHO/ISUP low I-II / high III-IV) from boxed CT slices. "
        f"{DISCLAIMER[0].upper() + DISCLAIMER[1:]}.",
        docs_url=None,  # served by routes.meta from local files: the stock page loads Swagger UI from a CDN
        redoc_url=None,
    )
    limits = ws.store.limits
    app.add_middleware(
        Guard, hosts=list(hosts or LOOPBACK_HOSTS), max_body=limits.max_bytes, max_uploads=limits.max_uploads
    )
    add_error_answers(app, ws.private_paths())
    auth = Depends(bearer(token))
    app.include_router(meta.router(ws, auth))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(studies.router(ws, auth))
    app.include_router(results.router(ws, auth))
    app.state.ws, app.state.receiver = ws, receiver
    return app


def bearer(token: str | None) -> Callable[[Request], None]:
    """The dependency every API route carries: nothing without a token, else the bearer token."""

    def auth(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")

    return auth


def add_error_answers(app: FastAPI, private: list[str]) -> None:
    """One-line JSON answers for every expected failure; no server path in any of them."""

    @app.exception_handler(CcrccError)
    async def _errors(request: Request, exc: CcrccError) -> JSONResponse:
        if isinstance(exc, CannotWrite):
            log.error("cannot write: %s", exc)
            return JSONResponse({"detail": f"the server cannot write ({exc.reason}); nothing was saved"}, 507)
        return JSONResponse({"detail": public_text(str(exc).splitlines()[0], private)}, status_code=status_of(exc))

    @app.exception_handler(OSError)
    async def _os_errors(request: Request, exc: OSError) -> JSONResponse:  # a write outside atomic_write
        log.error("%s %s: %s", request.method, request.url.path, exc)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return JSONResponse(
            {"detail": f"the server cannot {'write' if full else 'read or write'} ({exc.strerror or 'error'})"},
            507 if full else 500,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"detail": f"{where}: {first['msg']}" if where else first["msg"]}, status_code=422)
