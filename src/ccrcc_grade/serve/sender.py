"""Results back into the PACS: C-STORE (pynetdicom SCU) to ``--send AE@HOST:PORT``, or STOW-RS to
``--pacs``. A send is a job in the worklist: tried at once, and when the destination is down
queued and retried with growing waits (``RETRY_SECONDS``) by a background thread, the error on
the worklist meanwhile; the objects stay in the study's folder, so nothing is lost."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pydicom

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.receiver import parse_ae_title

log = logging.getLogger("ccrcc_grade.send")

# waits before the 2nd, 3rd, ... attempt; after the last the job is failed (a person sends it again)
RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0, 1800.0)


class SendError(CcrccError):
    """The destination refused or could not be reached (HTTP 502 when asked through the API)."""

    http_status = 502


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        m = re.fullmatch(r"(.+)@([^@:\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", text.strip())
        if not m or not 1 <= int(m.group(3)) <= 65535:
            raise CcrccError(f"--send {text!r}: write AE@HOST:PORT, e.g. ORTHANC@pacs.hospital.org:4242")
        return cls(parse_ae_title(m.group(1), "--send"), m.group(2).strip("[]"), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def c_store(datasets: list[pydicom.Dataset], dest: Destination, calling_ae: str, timeout: float = 30) -> list[str]:
    """Send every dataset in one association; the SOP Instance UIDs stored. Raises
    :class:`SendError` naming the first failure (no association, a refused instance)."""
    from pynetdicom import AE

    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for cls_uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ts = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == cls_uid})
        ae.add_requested_context(cls_uid, ts)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "is not reachable"
        raise SendError(f"{dest} {why}")
    sent = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{dest} did not answer the C-STORE of {ds.SOPClassUID.name}")
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success and the warnings
                raise SendError(f"{dest} refused {ds.SOPClassUID.name} with status 0x{code:04X}")
            sent.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return sent


class Retrier:
    """The background thread that retries queued send jobs when they are due."""

    def __init__(self, run_job: Callable[[int], None], period: float = 1.0):
        self.run_job, self.period = run_job, period
        self.due: Callable[[], list[dict]] = lambda: []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, due: Callable[[], list[dict]]) -> Retrier:
        self.due = due
        self._thread = threading.Thread(target=self._loop, name="ccrcc-send-retry", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            for job in self.due():
                try:
                    self.run_job(job["id"])
                except Exception:  # one job's failure never stops the others
                    log.exception("send job %s failed", job["id"])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
