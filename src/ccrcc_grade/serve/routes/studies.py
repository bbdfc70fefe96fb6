"""Studies: upload or PACS load, the summary and phase assignment, windowed slices, boxes, and
the research-cohort export."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
from fastapi import APIRouter, File, Header, Request, UploadFile, params
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ccrcc_grade.ingest.preprocess import window_to_uint8
from ccrcc_grade.serve.errors import Unprocessable
from ccrcc_grade.serve.schemas import BoxIn, PacsLoadIn, ProposeIn
from ccrcc_grade.serve.workstation import Workstation

log = logging.getLogger("ccrcc_grade.serve")


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


ACTOR = re.compile(r"^[^\x00-\x1f\\^=<>]{2,64}$")


def actor(request: Request) -> str:
    """Who did it, for the audit log: the page's user name (header ``X-User``), else "workstation"."""
    name = request.headers.get("x-user", "").strip()
    return f"workstation user {name}" if ACTOR.match(name) else "workstation"


def router(ws: Workstation, auth: params.Depends) -> APIRouter:
    r = APIRouter(dependencies=[auth])
    store = ws.store

    @r.post("/api/studies")
    async def upload(request: Request, files: list[UploadFile] = File(...)) -> dict:
        # the parts arrive spooled to temporary files (bounded by the Guard's Content-Length check);
        # they are read from there one by one, never all into memory at once; parsing and writing
        # run off the event loop
        blobs = [(f.filename or "upload", f.file) for f in files]
        summary = await run_in_threadpool(store.add_upload, blobs, actor(request))
        log.info("study %s uploaded: %d series", summary["study_id"], len(summary["series"]))
        return summary

    @r.post("/api/studies/pacs")
    def pacs_load(q: PacsLoadIn, request: Request) -> dict:
        datasets = ws.need_pacs().retrieve(q.study_uid)
        named = [(f"PACS instance {n + 1}", ds) for n, ds in enumerate(datasets)]
        summary = store.add_datasets(named, "pacs", actor(request))
        log.info("study %s loaded from the PACS: %d series", summary["study_id"], len(summary["series"]))
        return summary

    @r.get("/api/studies")
    def worklist(study_uid: str | None = None) -> list[dict]:
        """The worklist: every study with its status (receiving, complete, boxed, graded, sent,
        failed with its error), source (dicom, upload, pacs), series and phases, newest first;
        ``study_uid`` picks the stored studies of one StudyInstanceUID (the page opened by URL)."""
        return store.listing(study_uid)

    @r.get("/api/studies/{study_id}/history")
    def history(study_id: str) -> dict:
        """Who did what and when (the audit log), and the send jobs with their attempts."""
        store.worklist.study(study_id)
        jobs = [
            {k: j[k] for k in ("id", "model", "destination", "status", "attempts", "error", "created", "updated")}
            for j in store.worklist.jobs(study_id)
        ]
        return {"events": store.worklist.events(study_id), "jobs": jobs}

    @r.get("/api/studies/{study_id}")
    def study(study_id: str) -> dict:
        s = store.summary(study_id)
        raw = store.raw(study_id)
        for pub, x in zip(s["series"], raw["series"]):
            pub["flip"] = x["flip"]
            pub["sop_instance_uids"] = x["sop_instance_uids"]
            pub["positions"] = x["positions"]
        return s

    @r.put("/api/studies/{study_id}/phases")
    def phases(study_id: str, assignment: dict[str, str | None], allow_derived: bool = False) -> dict:
        return store.set_phases(study_id, assignment, allow_derived)

    @r.get("/api/studies/{study_id}/series/{series_uid}/slices/{k}.png")
    def slice_png(study_id: str, series_uid: str, k: int, level: float = 40.0, width: float = 290.0) -> Response:
        if not (np.isfinite(level) and np.isfinite(width) and width > 0 and abs(level) < 1e5 and width < 1e5):
            raise Unprocessable(f"window level {level} / width {width}: the width must be positive and both finite")
        store.slice_path(study_id, series_uid, k)  # 404 before the cache sees it
        img = window_to_uint8(ws.hu(study_id, series_uid, k), level, width)  # stored orientation: boxes live there
        return Response(png(img), media_type="image/png")

    @r.get("/api/studies/{study_id}/series/{series_uid}/slices/{k}.hu")
    def slice_hu(study_id: str, series_uid: str, k: int) -> Response:
        """The slice in HU as little-endian int16 (rows x columns, stored orientation): the page
        windows it itself (W/L by drag), reads HU under the cursor and box statistics from it."""
        store.slice_path(study_id, series_uid, k)
        hu = np.clip(np.rint(ws.hu(study_id, series_uid, k)), -32768, 32767).astype("<i2")
        return Response(hu.tobytes(), media_type="application/octet-stream", headers={"X-Rows": str(hu.shape[0])})

    @r.get("/api/studies/{study_id}/boxes")
    def get_boxes(study_id: str) -> JSONResponse:
        """The boxes; their version in the ETag header (send it back as If-Match when saving)."""
        store.folder(study_id)
        boxes, version = store.worklist.boxes(study_id)
        return JSONResponse(boxes, headers={"ETag": f'"{version}"'})

    @r.put("/api/studies/{study_id}/boxes")
    def put_boxes(
        study_id: str, boxes: list[BoxIn], request: Request, if_match: str | None = Header(default=None)
    ) -> JSONResponse:
        """Replace the boxes. With ``If-Match: "<version>"`` (the page always sends it) a save
        based on an older version - another tab changed the boxes meanwhile - is refused with 409
        and nothing changes; the answer's ETag is the new version."""
        expected = None
        if if_match is not None:
            try:
                expected = int(if_match.strip().removeprefix("W/").strip('"'))
            except ValueError:
                raise Unprocessable(f"If-Match {if_match[:40]!r}: give the ETag of GET .../boxes") from None
        saved = store.set_boxes(study_id, [b.model_dump() for b in boxes], expected, actor(request))
        return JSONResponse(saved, headers={"ETag": f'"{store.boxes_version(study_id)}"'})

    @r.post("/api/studies/{study_id}/propose")
    def propose(study_id: str, q: ProposeIn, request: Request) -> JSONResponse:
        """Proposed boxes from the confirmed ones (unconfirmed until the clinician confirms them):
        the proposal model's walk from one box (``serve --roi-model``) or the interpolation between
        key boxes, and with ``propagate`` the other assigned phases. Answers every box of the study,
        their new version in the ETag."""
        out = ws.propose(study_id, q.phase, q.method, q.propagate, actor(request))
        return JSONResponse(out, headers={"ETag": f'"{store.boxes_version(study_id)}"'})

    @r.get("/api/studies/{study_id}/export")
    def export(study_id: str, identifiable: bool = False) -> Response:
        """The study as a research cohort: de-identified (pseudonym, PS3.15 basic profile) unless
        ``identifiable=true`` is asked for explicitly."""
        return Response(
            store.export_cohort(study_id, identifiable),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="cohort-{study_id}.zip"'},
        )

    return r
