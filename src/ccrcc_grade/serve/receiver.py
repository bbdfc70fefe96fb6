"""The DICOM receiver (a pynetdicom Storage SCP): the PACS or the CT pushes a study by C-STORE to
our AE title; instances are written atomically, grouped by StudyInstanceUID, and a study whose
last instance came ``stable_seconds`` ago (Orthanc's StableAge, mercure's and MONAI Deploy's
quiet time) becomes a study of the workstation, its series assigned to phases by the same rules
as an upload. ``ccrcc-grade listen`` runs it alone, ``serve --listen-port`` beside the web page.

What is refused, with the DICOM status the caller sees (the rest of the study is untouched):

- a calling AE title that is not on the allow-list: the association is rejected (reason 3,
  calling AE title not recognised); a known AE from another host: 0x0124 Not Authorized;
- another SOP class than CT Image Storage: 0x0122 SOP Class Not Supported;
- an instance that cannot be decoded, or without the UIDs and image a CT slice has: 0xC210
  (cannot understand);
- an instance of another patient than the study's first: 0x0110 Processing Failure.

The same SOP Instance UID twice (a study pushed again) is acknowledged and not stored twice; an
instance arriving after the study was complete reopens it (``receiving``: it is not graded on a
partial series) and the study is taken in again after the quiet time (its stored instances and
the new ones), boxes kept. Instances wait in ``DATA/.incoming`` on disk (fsync) and recorded in
the worklist before success is answered, so a restart loses none and completes the waiting
studies; once a study is taken in, its incoming copies are removed (the store holds them). The
log names studies by our id, never a patient.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pydicom

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write
from ccrcc_grade.io.dicom import patient_identity, pixel_bytes_problem
from ccrcc_grade.serve.store import CT_IMAGE_STORAGE, StudyStore

log = logging.getLogger("ccrcc_grade.listen")

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 characters of the default repertoire, no backslash

# C-STORE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C)
SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
SOP_CLASS_NOT_SUPPORTED = 0x0122
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110


def parse_ae_title(text: str, what: str = "--ae-title") -> str:
    t = text.strip()
    if not AE_TITLE.match(t) or t != text.strip(" "):
        raise CcrccError(f"{what} {text!r}: an AE title is 1-16 printable characters without a backslash")
    return t


@dataclass(frozen=True)
class Peer:
    """An allowed caller ``AE@HOST`` (HOST an address, a name resolved at start, or ``*``)."""

    ae_title: str
    host: str
    addresses: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Peer:
        ae, sep, host = text.rpartition("@")
        if not sep or not ae or not host:
            raise CcrccError(f"--allow {text!r}: write AE@HOST, e.g. ORTHANC@10.1.2.3 (HOST may be * for any host)")
        ae = parse_ae_title(ae, "--allow")
        if host == "*":
            return cls(ae, host, frozenset())
        try:
            addresses = frozenset(a[4][0] for a in socket.getaddrinfo(host, None))
        except socket.gaierror:
            raise CcrccError(f"--allow {text!r}: host {host!r} cannot be resolved") from None
        return cls(ae, host, addresses)

    def admits(self, ae_title: str, address: str) -> bool:
        return ae_title == self.ae_title and (self.host == "*" or address in self.addresses)


@dataclass
class DicomNode:
    """The workstation as a DICOM node: its AE title, the receiver (``port`` None: none), who may
    send, the quiet time, and where results go by C-STORE (``send`` AE@HOST:PORT)."""

    ae_title: str = "CCRCC"
    port: int | None = None
    allow: list[str] = field(default_factory=list)
    stable_seconds: float = 30.0
    host: str = "0.0.0.0"
    send: str | None = None


def _key(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class Receiver:
    """Storage SCP + the quiet-time check. ``on_complete(study_id)`` runs after a study is taken in."""

    def __init__(
        self,
        store: StudyStore,
        ae_title: str,
        port: int,
        allow: list[str],
        stable_seconds: float = 30.0,
        host: str = "0.0.0.0",
        on_complete: Callable[[str], None] | None = None,
    ):
        if not allow:
            raise CcrccError("--allow: name the callers (AE@HOST) that may send studies; nobody else is accepted")
        if not 1 <= port <= 65535:
            raise CcrccError(f"--listen-port / --port must be 1-65535, got {port}")
        if not 0 <= stable_seconds <= 3600:
            raise CcrccError(f"--stable-seconds must be 0-3600, got {stable_seconds}")
        self.store, self.worklist = store, store.worklist
        self.ae_title, self.port, self.host = parse_ae_title(ae_title), port, host
        self.peers = [Peer.parse(a) for a in allow]
        self.stable_seconds = float(stable_seconds)
        self.on_complete = on_complete
        self.incoming = store.root / ".incoming"
        self.incoming.mkdir(mode=0o700, exist_ok=True)
        self._server = None
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self._lock = threading.Lock()  # one C-STORE bookkeeping at a time (the files are written in parallel)

    # --- network ---------------------------------------------------------------------------
    def start(self) -> Receiver:
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = sorted({p.ae_title for p in self.peers})
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:  # every storage class is heard, and all but CT refused by status
            if cx.abstract_syntax == CT_IMAGE_STORAGE:
                ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes)  # compressed CT too
            else:
                ae.add_supported_context(cx.abstract_syntax)
        ae.maximum_pdu_size = 0
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise CcrccError(f"DICOM port {self.port} on {self.host}: cannot listen ({exc.strerror or exc})") from None
        self._checker = threading.Thread(target=self._check_loop, name="ccrcc-stable-check", daemon=True)
        self._checker.start()
        log.info("DICOM receiver %s on port %d (callers: %s)", self.ae_title, self.port, self.allowed_text())
        return self

    def allowed_text(self) -> str:
        return ", ".join(f"{p.ae_title}@{p.host}" for p in self.peers)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._checker is not None:
            self._checker.join(10)

    def _peer_ok(self, event: object) -> tuple[bool, str]:
        req = event.assoc.requestor
        calling = str(req.ae_title).strip()
        return any(p.admits(calling, req.address) for p in self.peers), f"{calling}@{req.address}"

    def _on_echo(self, event: object) -> int:
        ok, _ = self._peer_ok(event)
        return SUCCESS if ok else NOT_AUTHORIZED

    def _on_store(self, event: object) -> int:
        ok, who = self._peer_ok(event)
        if not ok:
            log.warning("C-STORE from %s refused: not on the allow-list", who)
            return NOT_AUTHORIZED
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class != CT_IMAGE_STORAGE:
            log.warning("C-STORE from %s refused: SOP class %s is not CT Image Storage", who, sop_class)
            return SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            problem = self._problem(ds, str(event.request.AffectedSOPInstanceUID))
        except Exception as exc:  # whatever a corrupt byte stream makes pydicom raise
            log.warning("C-STORE from %s refused: the instance cannot be decoded (%s)", who, exc.__class__.__name__)
            return CANNOT_UNDERSTAND
        if problem:
            log.warning("C-STORE from %s refused: %s", who, problem)
            return CANNOT_UNDERSTAND
        return self.take(ds, who)

    @staticmethod
    def _problem(ds: pydicom.Dataset, affected_sop: str) -> str | None:
        for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(getattr(ds, kw, "") or "").strip():
                return f"the instance has no {kw}"
        if str(ds.SOPInstanceUID) != affected_sop:
            return "the instance's SOPInstanceUID differs from the one the C-STORE request names"
        if "PixelData" not in ds:
            return "the instance has no image"
        return pixel_bytes_problem(ds)

    # --- storage ---------------------------------------------------------------------------
    def take(self, ds: pydicom.Dataset, who: str) -> int:
        """Write one instance and record it; the C-STORE status."""
        study_uid, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        rel = f"{_key(study_uid, 16)}/{_key(sop, 24)}.dcm"
        if self.worklist.seen(sop):
            return SUCCESS  # the same instance again: acknowledged, stored once
        pid, name = patient_identity(ds)
        patient = _key(pid or name or "(blank)", 32)
        try:
            atomic_write(self.incoming / rel, lambda fh: ds.save_as(fh, enforce_file_format=True))
        except (CcrccError, OSError, ValueError) as exc:
            log.error("C-STORE from %s: cannot write the instance (%s)", who, exc.__class__.__name__)
            return 0xA700  # Refused: out of resources
        with self._lock:
            study_id, new, refusal = self.worklist.receive(study_uid, secrets.token_hex(8), sop, rel, patient, who)
        if refusal:
            if not self.worklist.seen(sop):
                (self.incoming / rel).unlink(missing_ok=True)
            log.warning("study %s: C-STORE from %s refused: %s", study_id, who, refusal)
            return PROCESSING_FAILURE
        return SUCCESS

    # --- quiet time ------------------------------------------------------------------------
    def _check_loop(self) -> None:
        period = min(1.0, max(0.1, self.stable_seconds / 4))
        while not self._stop.wait(period):
            self.complete_quiet()

    def complete_quiet(self) -> list[str]:
        """Take in every study quiet for ``stable_seconds``; the ids taken in."""
        done = []
        for a in self.worklist.quiet_studies(self.stable_seconds):
            sid, who = a["study_id"], f"C-STORE from {a['calling']}"
            pending = self.worklist.received_files(a["study_uid"])
            try:
                # the study as stored so far (instances came after it was complete) and the new ones
                stored = sorted((self.store.root / sid).glob("series/*/*.dcm"))
                named = [(f"stored instance {n + 1}", pydicom.dcmread(f)) for n, f in enumerate(stored)]
                named += [
                    (f"received instance {n + 1}", pydicom.dcmread(self.incoming / f)) for n, f in enumerate(pending)
                ]
                summary = self.store.add_datasets(named, "dicom", who, study_id=sid)
            except (CcrccError, OSError, ValueError) as exc:  # the instances stay in .incoming
                self.worklist.settle(a["study_uid"], a["last"])
                self.worklist.set_status(sid, "failed", "receiver", error=str(exc).splitlines()[0])
                log.error("study %s: could not be taken in: %s", sid, exc.__class__.__name__)
                continue
            self.worklist.taken_in(pending)  # in the store now: the incoming copies go
            for f in pending:
                (self.incoming / f).unlink(missing_ok=True)
            for folder in {(self.incoming / f).parent for f in pending}:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not self.worklist.settle(a["study_uid"], a["last"]):  # more came meanwhile: wait for them
                self.worklist.set_status(sid, "receiving", "receiver", "instances arrived while completing")
                continue
            phases = {x["phase"] for x in summary["series"] if x["phase"]}
            log.info(
                "study %s complete: %d instances, %d series, phases %s",
                sid,
                a["instances"],
                len(summary["series"]),
                ", ".join(sorted(phases)) or "none",
            )
            done.append(sid)
            if self.on_complete is not None:
                try:
                    self.on_complete(sid)
                except Exception:  # a hook's failure never stops the receiver
                    log.exception("study %s: the completion hook failed", sid)
        return done
