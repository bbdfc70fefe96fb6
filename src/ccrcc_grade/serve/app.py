"""The HTTP layer of the workstation (FastAPI): thin routes over the study store, the model
registry, `predict`'s grading path, the SR writer and the PACS client. Every failure of the
user's input is a JSON ``{"detail": "<one line>"}`` with a 4xx status (502 for the PACS)."""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import io
import json
import logging
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ccrcc_grade.core.errors import CannotWrite, CcrccError
from ccrcc_grade.core.fileio import atomic_write_json
from ccrcc_grade.core.threshold import decision_digits
from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.ingest.preprocess import window_to_uint8
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.model.card import DISCLAIMER
from ccrcc_grade.model.predict import grade_rois
from ccrcc_grade.serve.models import ModelRegistry
from ccrcc_grade.serve.pacs import Pacs, PacsError
from ccrcc_grade.serve.security import LOOPBACK_HOSTS, Guard
from ccrcc_grade.serve.store import NotFound, StudyStore, TooLarge, UploadLimits

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("ccrcc_grade.serve")


class BoxIn(BaseModel):
    sop_instance_uid: str = Field(min_length=1, max_length=64)
    x_min: float = Field(allow_inf_nan=False)
    y_min: float = Field(allow_inf_nan=False)
    x_max: float = Field(allow_inf_nan=False)
    y_max: float = Field(allow_inf_nan=False)


class PredictIn(BaseModel):
    model: str | None = None
    cam: bool = False


class PacsLoadIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)


class PacsSearchIn(BaseModel):
    patient_id: str = Field(default="", max_length=64)
    name: str = Field(default="", max_length=64)
    date: str = Field(default="", max_length=17)


class StoreSrIn(BaseModel):
    model: str | None = None


def create_app(
    models: list[str | Path],
    data: str | Path,
    pacs_url: str | None = None,
    token: str | None = None,
    limits: UploadLimits | None = None,
    device: str = "auto",
    hosts: list[str] | None = None,
) -> FastAPI:
    """The workstation. ``hosts``: the names the server answers to in the Host header (loopback
    names by default; `serve` adds the address it listens on and --allowed-host)."""
    registry = ModelRegistry(models, device)
    store = StudyStore(Path(data), limits)
    pacs = Pacs(pacs_url) if pacs_url else None
    app = FastAPI(
        title="ccrcc-grade workstation",
        version="1",
        description=f"Grade clear cell RCC (WHO/ISUP low I-II / high III-IV) from boxed CT slices. "
        f"{DISCLAIMER[0].upper() + DISCLAIMER[1:]}.",
        docs_url=None,  # served below from local files: the stock page loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.add_middleware(
        Guard,
        hosts=list(hosts or LOOPBACK_HOSTS),
        max_body=store.limits.max_bytes,
        max_uploads=store.limits.max_uploads,
    )
    private = [str(store.root.resolve()), str(Path.home())]  # never named in an answer
    private += [str(Path(m["path"]).parent) for m in registry.models.values()]

    def auth(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("a bearer token is required (Authorization: Bearer <token>)")

    api = [Depends(auth)]

    @app.exception_handler(CcrccError)
    async def _errors(request: Request, exc: CcrccError):
        if isinstance(exc, CannotWrite):
            log.error("cannot write: %s", exc)
            return JSONResponse({"detail": f"the server cannot write ({exc.reason}); nothing was saved"}, 507)
        status = (
            401
            if isinstance(exc, Unauthorized)
            else 404
            if isinstance(exc, NotFound)
            else 413
            if isinstance(exc, TooLarge)
            else 502
            if isinstance(exc, PacsError)
            else 422
            if isinstance(exc, Unprocessable)
            else 409
            if isinstance(exc, Stale)
            else 400
        )
        return JSONResponse({"detail": public_text(str(exc).splitlines()[0], private)}, status_code=status)

    @app.exception_handler(OSError)
    async def _os_errors(request: Request, exc: OSError):  # a write outside atomic_write: a full disk
        log.error("%s %s: %s", request.method, request.url.path, exc)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return JSONResponse(
            {"detail": f"the server cannot {'write' if full else 'read or write'} ({exc.strerror or 'error'})"},
            507 if full else 500,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"detail": f"{where}: {first['msg']}" if where else first["msg"]}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        if not (STATIC / "vendor" / "swagger-ui" / "swagger-ui-bundle.js").is_file():
            raise NotFound("the API documentation page needs Swagger UI in static/vendor (`make vendor`)")
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/config", dependencies=api)
    def config() -> dict:
        return {"pacs": pacs is not None, "disclaimer": DISCLAIMER}

    @app.get("/api/models", dependencies=api)
    def list_models() -> list[dict]:
        return registry.listing()

    @app.post("/api/studies", dependencies=api)
    async def upload(files: list[UploadFile] = File(...)) -> dict:
        # the parts arrive spooled to temporary files (bounded by the Guard's Content-Length check);
        # they are read from there one by one, never all into memory at once
        blobs = [(f.filename or "upload", f.file) for f in files]
        summary = await run_in_threadpool(store.add_upload, blobs)  # parsing and writing off the event loop
        log.info("study %s uploaded: %d series", summary["study_id"], len(summary["series"]))
        return summary

    @app.post("/api/pacs/search", dependencies=api)
    def pacs_search(q: PacsSearchIn) -> list[dict]:
        return need_pacs().search(q.patient_id, q.name, q.date)

    @app.post("/api/studies/pacs", dependencies=api)
    def pacs_load(q: PacsLoadIn) -> dict:
        datasets = need_pacs().retrieve(q.study_uid)
        summary = store.add_datasets([(f"PACS instance {n + 1}", ds) for n, ds in enumerate(datasets)])
        log.info("study %s loaded from the PACS: %d series", summary["study_id"], len(summary["series"]))
        return summary

    def need_pacs() -> Pacs:
        if pacs is None:
            raise Unprocessable("no PACS configured (start serve with --pacs URL)")
        return pacs

    @app.get("/api/studies/{study_id}", dependencies=api)
    def study(study_id: str) -> dict:
        s = store.summary(study_id)
        raw = store.raw(study_id)
        for pub, x in zip(s["series"], raw["series"]):
            pub["flip"] = x["flip"]
            pub["sop_instance_uids"] = x["sop_instance_uids"]
            pub["positions"] = x["positions"]
        return s

    @app.put("/api/studies/{study_id}/phases", dependencies=api)
    def phases(study_id: str, assignment: dict[str, str | None], allow_derived: bool = False) -> dict:
        return store.set_phases(study_id, assignment, allow_derived)

    @lru_cache(maxsize=96)
    def hu(study_id: str, series_uid: str, k: int) -> np.ndarray:
        return store.slice_hu(study_id, series_uid, k)

    @app.get("/api/studies/{study_id}/series/{series_uid}/slices/{k}.png", dependencies=api)
    def slice_png(study_id: str, series_uid: str, k: int, level: float = 40.0, width: float = 290.0) -> Response:
        if not (np.isfinite(level) and np.isfinite(width) and width > 0 and abs(level) < 1e5 and width < 1e5):
            raise Unprocessable(f"window level {level} / width {width}: the width must be positive and both finite")
        store.slice_path(study_id, series_uid, k)  # 404 before the cache sees it
        img = window_to_uint8(hu(study_id, series_uid, k), level, width)  # stored orientation: boxes live there
        return Response(_png(img), media_type="image/png")

    @app.get("/api/studies/{study_id}/boxes", dependencies=api)
    def get_boxes(study_id: str) -> list[dict]:
        return store.boxes(study_id)

    @app.put("/api/studies/{study_id}/boxes", dependencies=api)
    def put_boxes(study_id: str, boxes: list[BoxIn]) -> list[dict]:
        return store.set_boxes(study_id, [b.model_dump() for b in boxes])

    def rois_for(study_id: str, phase: str, notes: list[str]) -> tuple[list[Roi], dict]:
        raw = store.raw(study_id)
        series = [x for x in raw["series"] if x["phase"] == phase]
        if not series:
            assigned = ", ".join(
                f"{x['description'] or x['series_uid']}: {x['phase'] or 'unassigned'}" for x in raw["series"]
            )
            raise Unprocessable(
                f"the model was trained on the {phase} phase and no series of this study is assigned to it ({assigned})"
            )
        s = series[0]
        folder = store.folder(study_id) / "series" / s["folder"]
        rois, where = [], {}
        if s.get("override"):
            notes.append(
                f"graded on a series the model was not made for ({s['problem']}): assigned to the {phase} "
                "phase by the user's override"
            )
        for b in store.boxes(study_id):
            if b["sop_instance_uid"] not in s["sop_instance_uids"]:
                continue
            k = s["sop_instance_uids"].index(b["sop_instance_uid"])
            box = Box(b["x_min"], b["y_min"], b["x_max"], b["y_max"])
            rois.append(
                Roi(
                    study_id,
                    phase,
                    f"{s['folder']}/{k}.dcm",
                    box,
                    "dicom",
                    folder / f"{k}.dcm",
                    spacing=tuple(s["pixel_spacing"]),
                    flip=tuple(s["flip"]),
                )
            )
            where[len(rois) - 1] = (s["series_uid"], k, b["sop_instance_uid"])
        if not rois:
            raise Unprocessable(f"no boxes on the {phase} series; draw the tumour's box on its slices first")
        order = sorted(range(len(rois)), key=lambda i: (where[i][1], rois[i].box.as_tuple()))
        return [rois[i] for i in order], {n: where[i] for n, i in enumerate(order)}

    def grade(study_id: str, model_id: str | None, cam: bool) -> dict:
        m = registry.get(model_id)
        phase = m["card"]["phase"]
        if phase == "combined":
            raise Unprocessable("a combined-phase model needs a phase; serve per-phase models")
        notes: list[str] = []
        inputs = inputs_digest(study_id, m)
        rois, where = rois_for(study_id, phase, notes)
        out = store.prediction_dir(study_id, m["id"])
        result = grade_rois(m["predictor"], rois, study_id, phase, notes, out / "cam" if cam else None)
        for i, s in enumerate(result["slices"]):
            series_uid, k, sop = where[i]
            s.update(series_uid=series_uid, slice_index=k, sop_instance_uid=sop)
            s["source"] = f"slice {k + 1}"
            if cam:
                name = Path(s.pop("cam")).name
                s["cam_url"] = f"/api/studies/{study_id}/cam/{m['id']}/{name}"
                s["heat_url"] = f"/api/studies/{study_id}/cam/{m['id']}/{name[:-4]}_heat.png"
        result["model"].update(id=m["id"], path=m["id"])  # no server paths in the answer
        result["patient_id"] = study_id
        result["inputs_sha256"] = inputs  # what the grade was computed from: checked before a report or SR
        atomic_write_json(out / "result.json", result)
        log.info("study %s graded with %s: %s", study_id, m["id"], result["grade"])
        return result

    @app.post("/api/studies/{study_id}/predict", dependencies=api)
    def predict(study_id: str, q: PredictIn) -> dict:
        return grade(study_id, q.model, q.cam)

    @app.get("/api/studies/{study_id}/cam/{model_id}/{name}", dependencies=api)
    def cam_png(study_id: str, model_id: str, name: str) -> FileResponse:
        folder = store.prediction_dir(study_id, registry.get(model_id)["id"]) / "cam"
        files = {p.name: p for p in folder.glob("*.png")} if folder.is_dir() else {}
        if name not in files:  # only names the server wrote; never a path from the request
            raise NotFound(f"no Grad-CAM image {name!r} (grade with cam first)")
        return FileResponse(files[name], media_type="image/png")

    def inputs_digest(study_id: str, m: dict) -> str:
        """A digest of everything a grade depends on: the model's weights, the phase assignment
        and the boxes. A report or SR is only made while it is unchanged."""
        raw = store.raw(study_id)
        phases = sorted((x["series_uid"], x["phase"] or "", bool(x.get("override"))) for x in raw["series"])
        state = {"model": m["predictor"].weights_sha256, "phases": phases, "boxes": store.boxes(study_id)}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def last_result(study_id: str, model_id: str | None) -> tuple[dict, dict]:
        m = registry.get(model_id)
        f = store.prediction_dir(study_id, m["id"]) / "result.json"
        if not f.is_file():
            raise Unprocessable(f"study {study_id} has not been graded with {m['id']} yet")
        result = json.loads(f.read_text())
        if result.get("inputs_sha256") != inputs_digest(study_id, m):
            raise Stale(
                f"the boxes, the phases or the model changed since study {study_id} was graded with {m['id']}; "
                "grade it again before a report or SR is made"
            )
        return result, m

    def sr_dataset(study_id: str, model_id: str | None):
        import pydicom

        from ccrcc_grade.serve.sr import build_sr

        result, m = last_result(study_id, model_id)
        sources = {}
        for s in result["slices"]:
            path = store.slice_path(study_id, s["series_uid"], s["slice_index"])
            sources[s["sop_instance_uid"]] = pydicom.dcmread(path, stop_before_pixels=True)
        return build_sr(result, sources, m["id"])

    @app.get("/api/studies/{study_id}/sr", dependencies=api)
    def sr(study_id: str, model: str | None = None) -> Response:
        ds = sr_dataset(study_id, model)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return Response(
            buf.getvalue(),
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="ccrcc-grade-{study_id}.dcm"'},
        )

    @app.post("/api/studies/{study_id}/sr/store", dependencies=api)
    def sr_store(study_id: str, q: StoreSrIn) -> dict:
        ds = sr_dataset(study_id, q.model)
        need_pacs().store(ds)
        log.info("study %s: SR stored to the PACS", study_id)
        return {"stored": True, "sop_instance_uid": str(ds.SOPInstanceUID)}

    @app.get("/api/studies/{study_id}/report", dependencies=api, response_class=HTMLResponse)
    def report(study_id: str, model: str | None = None) -> str:
        result, m = last_result(study_id, model)
        return report_html(result, m["card"], store.prediction_dir(study_id, m["id"]) / "cam")

    @app.get("/api/studies/{study_id}/export", dependencies=api)
    def export(study_id: str, identifiable: bool = False) -> Response:
        """The study as a research cohort: de-identified (pseudonym, PS3.15 basic profile) unless
        ``identifiable=true`` is asked for explicitly."""
        return Response(
            store.export_cohort(study_id, identifiable),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="cohort-{study_id}.zip"'},
        )

    return app


class Unauthorized(CcrccError):
    """No or a wrong bearer token (HTTP 401)."""


class Unprocessable(CcrccError):
    """A well-formed request the study cannot serve yet (HTTP 422)."""


class Stale(CcrccError):
    """A report or SR asked for after its inputs changed (HTTP 409)."""


PATH = re.compile(r"(?<![\w.])(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def public_text(text: str, private: list[str]) -> str:
    """A message fit for an HTTP answer: no server path (the folders given in ``private``, and
    any absolute path, are cut down to the file's name)."""
    for p in sorted(private, key=len, reverse=True):
        if len(p) > 1:
            text = text.replace(p + "/", "").replace(p, "<server folder>")
    return PATH.sub(r"\1", text)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def report_html(result: dict, card: dict, cam_dir: Path) -> str:
    """A printable one-page report (the browser prints it to PDF)."""
    e = html.escape
    rows = []
    for s in result["slices"]:
        img = ""
        cam = cam_dir / Path(s.get("cam_url", "")).name if s.get("cam_url") else None
        if cam is not None and cam.is_file():
            img = f"<img src='data:image/png;base64,{base64.b64encode(cam.read_bytes()).decode()}' width='220'>"
        rows.append(
            f"<tr><td>{e(s['source'])}</td><td>{', '.join(f'{v:.0f}' for v in s['box'])}</td>"
            f"<td>{s['prob_high']:.3f}</td><td>{img}</td></tr>"
        )
    test = card.get("test") or {}
    auc = (
        f"{test['auc']:.3f} (95% CI {test['ci95'][0]:.3f}-{test['ci95'][1]:.3f}, n={test['n']})"
        if test.get("auc") is not None
        else "not evaluated"
    )
    css = (
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}"
        ".grade{font-size:1.4em;font-weight:600;margin:.6em 0}.warn{background:#fff4d6;padding:.5em;"
        "border-left:4px solid #e0a000}@media print{.print{display:none}}"
    )
    title = f"ccrcc-grade report {e(result['patient_id'])}"
    digits = max(3, decision_digits(result["prob_high"], result["threshold"]))  # never contradicts the decision
    b = result.get("box_robustness")
    robust = (
        f"<p id='robustness'>{e(b['text'])}: how much the grade depends on where "
        f"exactly the boxes were drawn ({e(b['method'])}).</p>"
        if b
        else ""
    )
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>
<style>{css}</style></head><body>
<h1>Predicted WHO/ISUP grade of clear cell RCC</h1>
<p class='warn'><b>{e(card["disclaimer"][0].upper() + card["disclaimer"][1:])}.</b> The result is unverified until
a clinician confirms it. {e(card["intended_use"])}</p>
<p>Study {e(result["patient_id"])} - phase {e(result["phase"])} - {len(result["slices"])} boxed slices</p>
<p class='grade'>{e(result["decision"])}</p>
<p>Patient probability of high grade (III-IV): {result["prob_high"]:.{digits}f} (mean of the slices).
Threshold: {e(result["threshold_policy"]["source"])} ({result["threshold"]:.{digits}f}).</p>
{robust}
<h2>Slices</h2><table><tr><th>Slice</th><th>Box (x0, y0, x1, y1)</th><th>P(high)</th><th>Grad-CAM</th></tr>
{"".join(rows)}</table>
<h2>Model</h2><p>{e(str(card["architecture"]))} on the {e(str(card["phase"]))} phase, trained {e(str(card["trained"]))};
{card["data"]["train_patients"]} training, {card["data"]["validation_patients"]} validation and
{card["data"]["test_patients"]} test patients; test patient AUC {e(auc)}.</p>
<p class='print'>Print or save as PDF with the browser's print command (Ctrl+P / Cmd+P).</p>
</body></html>"""
