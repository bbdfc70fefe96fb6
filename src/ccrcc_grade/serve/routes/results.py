"""Results: grade a study, its Grad-CAM images, the printable report and the DICOM SR (download
or store to the PACS); a report or SR only while the grade matches the current inputs."""

from __future__ import annotations

import io
import logging

from fastapi import APIRouter, Request, params
from fastapi.responses import FileResponse, HTMLResponse, Response

from ccrcc_grade.serve.errors import NotFound
from ccrcc_grade.serve.report import report_html
from ccrcc_grade.serve.routes.studies import actor
from ccrcc_grade.serve.schemas import PredictIn, SendIn, SignOffIn, StoreSrIn
from ccrcc_grade.serve.workstation import Workstation

log = logging.getLogger("ccrcc_grade.serve")


def router(ws: Workstation, auth: params.Depends) -> APIRouter:
    r = APIRouter(dependencies=[auth])
    store = ws.store

    @r.post("/api/studies/{study_id}/predict")
    def predict(study_id: str, q: PredictIn, request: Request) -> dict:
        return ws.grade(study_id, q.model, q.cam, q.box_k, q.include_proposed, actor(request))

    @r.get("/api/studies/{study_id}/results")
    def results_list(study_id: str, model: str | None = None) -> list[dict]:
        """The DICOM objects of the current grade for the PACS (made when first asked for): the
        SR and the key image, each with its SOP class, SOP instance UID and a URL."""
        return [{k: v for k, v in x.items() if k != "path"} for x in ws.results(study_id, model)]

    @r.get("/api/studies/{study_id}/results/{sop_uid}")
    def result_file(study_id: str, sop_uid: str) -> FileResponse:
        return FileResponse(ws.result_file(study_id, sop_uid), media_type="application/dicom")

    @r.post("/api/studies/{study_id}/send")
    def send(study_id: str, q: SendIn, request: Request) -> dict:
        """The results into the PACS: C-STORE to ``--send``, else STOW-RS to ``--pacs``; a
        destination that is down leaves the job queued for retries (``status``, ``error``)."""
        return ws.send(study_id, q.model, actor(request))

    @r.post("/api/studies/{study_id}/signoff")
    def signoff(study_id: str, q: SignOffIn) -> dict:
        """The radiologist verifies the current grade; the SR made from now on is VERIFIED."""
        return ws.sign_off(study_id, q.model, q.observer)

    @r.get("/api/studies/{study_id}/cam/{model_id}/{name}")
    def cam_png(study_id: str, model_id: str, name: str) -> FileResponse:
        folder = store.prediction_dir(study_id, ws.registry.get(model_id)["id"]) / "cam"
        files = {p.name: p for p in folder.glob("*.png")} if folder.is_dir() else {}
        if name not in files:  # only names the server wrote; never a path from the request
            raise NotFound(f"no Grad-CAM image {name!r} (grade with cam first)")
        return FileResponse(files[name], media_type="image/png")

    @r.get("/api/studies/{study_id}/sr")
    def sr(study_id: str, model: str | None = None) -> Response:
        ds = ws.sr_dataset(study_id, model)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return Response(
            buf.getvalue(),
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="ccrcc-grade-{study_id}.dcm"'},
        )

    @r.post("/api/studies/{study_id}/sr/store")
    def sr_store(study_id: str, q: StoreSrIn) -> dict:
        ds = ws.sr_dataset(study_id, q.model)
        ws.need_pacs().store(ds)
        log.info("study %s: SR stored to the PACS", study_id)
        return {"stored": True, "sop_instance_uid": str(ds.SOPInstanceUID)}

    @r.get("/api/studies/{study_id}/report", response_class=HTMLResponse)
    def report(study_id: str, model: str | None = None) -> str:
        result, m = ws.last_result(study_id, model)
        folder = store.prediction_dir(study_id, m["id"])
        patient = store.summary(study_id)["patient"]
        return report_html(result, m["card"], folder / "cam", patient, ws.signoff(study_id, m))

    return r
