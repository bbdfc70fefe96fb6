"""The page, the API documentation, the configuration, the models and the PACS search."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, params
from fastapi.responses import FileResponse

from ccrcc_grade.model.card import DISCLAIMER, trust_statement
from ccrcc_grade.serve.errors import NotFound
from ccrcc_grade.serve.schemas import PacsSearchIn
from ccrcc_grade.serve.workstation import Workstation

STATIC = Path(__file__).parent.parent / "static"


def router(ws: Workstation, auth: params.Depends) -> APIRouter:
    r = APIRouter()
    api = [auth]

    @r.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @r.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        if not (STATIC / "vendor" / "swagger-ui" / "swagger-ui-bundle.js").is_file():
            raise NotFound("the API documentation page needs Swagger UI in static/vendor (`make vendor`)")
        return FileResponse(STATIC / "docs.html")

    @r.get("/api/config", dependencies=api)
    def config() -> dict:
        return {
            "pacs": ws.pacs is not None,
            "send": ws.send_to is not None,
            "ohif_port": ws.ohif_port,  # the OHIF viewer on this host (serve --ohif), or null
            "disclaimer": DISCLAIMER,
        }

    @r.get("/api/models", dependencies=api)
    def list_models() -> list[dict]:
        # every model with its trust statement (the page's red banner when its test AUC CI includes 0.5)
        return [m | {"trust": trust_statement(m["card"])} for m in ws.registry.listing()]

    @r.post("/api/pacs/search", dependencies=api)
    def pacs_search(q: PacsSearchIn) -> list[dict]:
        return ws.need_pacs().search(q.patient_id, q.name, q.date)

    return r
