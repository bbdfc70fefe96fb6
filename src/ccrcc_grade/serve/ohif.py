"""`serve --ohif`: the OHIF Viewer 3.13 (npm's ``@ohif/app``, prebuilt in its ``dist/``, fetched by
``make vendor``) on its own port, reading the PACS (``--pacs``) through a read-only DICOMweb proxy
of this server, so the viewer, our results in the PACS and the workstation share one origin
policy and one token.

Why a port of its own: the package is built for the root path (``PUBLIC_URL="/"`` is compiled
into its bundles), where the workstation's page already lives. Why a proxy: the browser then
talks to one server, which checks the Host (DNS rebinding) and, when the workstation has a
token, the token - sent as the ``ccrcc_token`` cookie, which the workstation's page sets when
it opens a study in OHIF (cookies are per host, not per port). Only GET reaches the PACS.

OHIF's configuration (``app-config.js``) is generated here: one DICOMweb data source at
``/dicom-web`` (QIDO-RS, WADO-RS), no study upload, no other data sources.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.security import Guard

OHIF_DIST = Path(__file__).parent / "static" / "vendor" / "ohif"
OHIF_VERSION = "3.13.2"
log = logging.getLogger("ccrcc_grade.serve")

# the request and answer headers the proxy passes on (nothing else of the browser reaches the PACS)
PASS_REQUEST = ("accept", "range")
# (not the length or encoding: the body is passed on decoded, in chunks)
PASS_ANSWER = ("content-type", "content-range", "etag", "last-modified")

CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval' blob:; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self' blob: data:; "
    "font-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)


def app_config(title: str = "ccrcc-grade PACS") -> str:
    """OHIF's ``window.config``: the proxied DICOMweb source and nothing else."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "pacs",
        "configuration": {
            "friendlyName": title,
            "name": "pacs",
            "wadoUriRoot": "/dicom-web",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "pacs",
        "investigationalUseDialog": {"option": "never"},
        # no onboarding tour over the first study a radiologist opens from the worklist
        "customizationService": {"ohif.tours": {"$set": []}},
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


def ohif_app(pacs_url: str, token: str | None, hosts: list[str], dist: Path = OHIF_DIST) -> object:
    """The ASGI app serving OHIF and the DICOMweb proxy (behind the same front door as the
    workstation: Host check, no caching of patient data, no framing)."""
    import requests
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    if not (dist / "index.html").is_file():
        raise CcrccError(
            f"--ohif: the OHIF viewer is not installed ({dist} has no index.html); run `make vendor` "
            f"(npm pack @ohif/app@{OHIF_VERSION})"
        )
    base = pacs_url.rstrip("/")
    session = requests.Session()
    root = dist.resolve()

    def allowed(request: Request) -> bool:
        if token is None:
            return True
        got = request.cookies.get("ccrcc_token", "")
        return hmac.compare_digest(got.encode(), token.encode())

    def refuse() -> JSONResponse:
        return JSONResponse(
            {"detail": "open OHIF from the workstation's page (it passes the access token)"}, status_code=401
        )

    async def config(request: Request) -> Response:
        if not allowed(request):
            return refuse()
        return Response(app_config(), media_type="application/javascript")

    def proxy(request: Request) -> Response:
        if not allowed(request):
            return refuse()
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASS_REQUEST}
        url = f"{base}/{request.path_params['path']}"
        try:
            query = list(request.query_params.multi_items())
            r = session.get(url, params=query, headers=headers, stream=True, timeout=60)
        except requests.RequestException as exc:
            log.warning("OHIF proxy: the PACS at %s is not reachable (%s)", base, exc.__class__.__name__)
            return JSONResponse({"detail": f"the PACS at {base} is not reachable"}, status_code=502)
        out = {k.lower(): v for k, v in r.headers.items() if k.lower() in PASS_ANSWER}
        return StreamingResponse(r.iter_content(2**16), status_code=r.status_code, headers=out)

    def static(request: Request) -> Response:
        if not allowed(request):
            return refuse()
        rel = request.path_params.get("path", "")
        f = (root / rel).resolve()
        if rel and f.is_file() and root in f.parents:
            return FileResponse(f)
        return FileResponse(root / "index.html")  # the viewer's own routes (/viewer, /) are the page

    app = Starlette(
        routes=[
            Route("/app-config.js", config),
            Route("/dicom-web/{path:path}", proxy, methods=["GET"]),
            Route("/{path:path}", static, methods=["GET"]),
        ]
    )
    # the viewer's files may be cached; nothing read from the PACS (patient data) is
    return Guard(app, hosts, 0, 1, csp=CSP, cacheable=lambda path: not path.startswith(("/dicom-web/", "/app-")))
