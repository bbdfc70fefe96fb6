"""The workstation's state in one embedded SQLite database (``DATA/worklist.sqlite``, standard
library ``sqlite3``, WAL journal): the study index with each study's status, the boxes with
their version (optimistic concurrency), the audit log (who did what, when), the instances the
DICOM receiver took in, and the send jobs with their retries.

Status of a study, in order: ``receiving`` (instances still arriving), ``complete`` (all series
in, phases assigned), ``boxed`` (confirmed boxes), ``graded``, ``sent``; ``failed`` with an
``error`` when a step could not be done (the step says which). The images themselves stay files
(``store``); only what the user exports is written as JSON or CSV beside them.

Every write is one transaction, so a crash leaves the state before or after it, never between;
the log names studies by the store's id only (never a patient's name or ID).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ccrcc_grade.serve.errors import NotFound, Stale

STATUSES = ("receiving", "complete", "boxed", "graded", "sent", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies(
    study_id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS boxes(
    study_id TEXT PRIMARY KEY, boxes TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY, study_id TEXT NOT NULL, time TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS arrivals(
    study_uid TEXT PRIMARY KEY, study_id TEXT NOT NULL, patient_key TEXT NOT NULL, calling TEXT NOT NULL,
    first REAL NOT NULL, last REAL NOT NULL, instances INTEGER NOT NULL, pending INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS received(
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, file TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
    id INTEGER PRIMARY KEY, study_id TEXT NOT NULL, model TEXT NOT NULL, destination TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, next_try REAL NOT NULL, error TEXT,
    instances TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grades(
    study_id TEXT NOT NULL, model TEXT NOT NULL, result TEXT NOT NULL, signoff TEXT, updated TEXT NOT NULL,
    PRIMARY KEY(study_id, model));
CREATE TABLE IF NOT EXISTS objects(
    study_id TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, version INTEGER NOT NULL, file TEXT NOT NULL,
    key TEXT NOT NULL, sop_uid TEXT NOT NULL, series_uid TEXT NOT NULL, verified INTEGER NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY(study_id, model, kind, version));
CREATE INDEX IF NOT EXISTS events_study ON events(study_id);
CREATE INDEX IF NOT EXISTS received_study ON received(study_uid);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _confirmed(boxes: list[dict]) -> int:
    """How many of the boxes a person confirmed (a study with one is ``boxed``)."""
    return sum(1 for b in boxes if b.get("confirmed", True))


def _event(db: sqlite3.Connection, study_id: str, t: str, actor: str, action: str, detail: str) -> None:
    db.execute(
        "INSERT INTO events(study_id,time,actor,action,detail) VALUES(?,?,?,?,?)", (study_id, t, actor, action, detail)
    )


def _set_status(db: sqlite3.Connection, study_id: str, t: str, status: str, error: str | None = None) -> None:
    db.execute("UPDATE studies SET status=?, error=?, updated=? WHERE study_id=?", (status, error, t, study_id))


def _insert_study(db: sqlite3.Connection, study_id: str, study_uid: str, source: str, status: str, t: str) -> None:
    db.execute("INSERT INTO studies VALUES(?,?,?,?,NULL,?,?)", (study_id, study_uid, source, status, t, t))
    db.execute("INSERT OR IGNORE INTO boxes VALUES(?, '[]', 0)", (study_id,))


class Worklist:
    """One SQLite file; safe from the API's threads, the receiver and the sender (one connection
    per thread, writes serialised by SQLite's lock with a 30 s busy timeout)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits itself

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a received instance is on disk before C-STORE says success
            self._local.db = db
        return db

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (BEGIN IMMEDIATE: the write lock from the start, no lost update)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- studies ------------------------------------------------------------------------
    def add_study(self, study_id: str, study_uid: str, source: str, actor: str, status: str = "complete") -> None:
        t = now_iso()
        with self.tx() as db:
            old = db.execute("SELECT study_id FROM studies WHERE study_id=?", (study_id,)).fetchone()
            if old:  # taken in again (more instances came): its confirmed boxes still make it boxed
                row = db.execute("SELECT boxes FROM boxes WHERE study_id=?", (study_id,)).fetchone()
                if status == "complete" and row and _confirmed(json.loads(row["boxes"])):
                    status = "boxed"
                _set_status(db, study_id, t, status)
            else:
                _insert_study(db, study_id, study_uid, source, status, t)
            _event(db, study_id, t, actor, status, f"study {'updated' if old else 'added'} ({source})")

    @property
    def indexed_files(self) -> bool:
        """Whether the study folders' files of an earlier version were read in (SQLite's user_version)."""
        return self._db().execute("PRAGMA user_version").fetchone()[0] >= 1

    @indexed_files.setter
    def indexed_files(self, done: bool) -> None:
        self._db().execute(f"PRAGMA user_version = {1 if done else 0}")

    def has(self, study_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM studies WHERE study_id=?", (study_id,)).fetchone() is not None

    def set_status(self, study_id: str, status: str, actor: str, detail: str = "", error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        t = now_iso()
        with self.tx() as db:
            _set_status(db, study_id, t, status, error)
            _event(db, study_id, t, actor, status, error or detail)

    def log(self, study_id: str, actor: str, action: str, detail: str = "") -> None:
        with self.tx() as db:
            _event(db, study_id, now_iso(), actor, action, detail)

    def study(self, study_id: str) -> dict:
        row = self._db().execute("SELECT * FROM studies WHERE study_id=?", (study_id,)).fetchone()
        if row is None:
            raise NotFound(f"study {study_id!r} not found")
        return dict(row)

    def studies(self, study_uid: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM studies", ()
        if study_uid is not None:
            q, args = q + " WHERE study_uid=?", (study_uid,)
        return [dict(r) for r in self._db().execute(q + " ORDER BY updated DESC, study_id", args)]

    def events(self, study_id: str) -> list[dict]:
        rows = self._db().execute(
            "SELECT time, actor, action, detail FROM events WHERE study_id=? ORDER BY id", (study_id,)
        )
        return [dict(r) for r in rows]

    # --- boxes (versioned) -----------------------------------------------------------------
    def boxes(self, study_id: str) -> tuple[list[dict], int]:
        row = self._db().execute("SELECT boxes, version FROM boxes WHERE study_id=?", (study_id,)).fetchone()
        return (json.loads(row["boxes"]), int(row["version"])) if row else ([], 0)

    def set_boxes(self, study_id: str, boxes: list[dict], expected: int | None, actor: str) -> int:
        """Replace the boxes when the caller saw the current version (``expected``; None: no
        check, the server's own changes); a stale version is refused (409) and nothing changes.
        The status follows: ``boxed`` with a confirmed box, else ``complete``."""
        t = now_iso()
        with self.tx() as db:
            row = db.execute("SELECT version FROM boxes WHERE study_id=?", (study_id,)).fetchone()
            version = int(row["version"]) if row else 0
            if expected is not None and expected != version:
                raise Stale(
                    f"the boxes of study {study_id} were changed elsewhere (version {version}, this page had "
                    f"{expected}); reload the study to see them"
                )
            db.execute("INSERT OR REPLACE INTO boxes VALUES(?,?,?)", (study_id, json.dumps(boxes), version + 1))
            n = _confirmed(boxes)
            cur = db.execute("SELECT status FROM studies WHERE study_id=?", (study_id,)).fetchone()
            if cur and cur["status"] != "receiving":
                _set_status(db, study_id, t, "boxed" if n else "complete")
            _event(db, study_id, t, actor, "boxes", f"{n} confirmed, {len(boxes) - n} proposed (version {version + 1})")
        return version + 1

    # --- grades, sign-offs and the DICOM objects made of them --------------------------------
    def set_grade(self, study_id: str, model: str, result: dict) -> None:
        """The last grade of a study by a model (a sign-off of an earlier grade stays recorded: it
        is checked against the inputs it signed)."""
        with self.tx() as db:
            db.execute(
                "INSERT INTO grades(study_id, model, result, updated) VALUES(?,?,?,?) ON CONFLICT(study_id, model) "
                "DO UPDATE SET result=excluded.result, updated=excluded.updated",
                (study_id, model, json.dumps(result), now_iso()),
            )

    def grade(self, study_id: str, model: str) -> tuple[dict | None, dict | None]:
        """(the last grade, its sign-off) of a study by a model; None where there is none."""
        row = (
            self._db()
            .execute("SELECT result, signoff FROM grades WHERE study_id=? AND model=?", (study_id, model))
            .fetchone()
        )
        if row is None:
            return None, None
        return json.loads(row["result"]), json.loads(row["signoff"]) if row["signoff"] else None

    def set_signoff(self, study_id: str, model: str, sign: dict) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE grades SET signoff=?, updated=? WHERE study_id=? AND model=?",
                (json.dumps(sign), now_iso(), study_id, model),
            )

    def objects(self, study_id: str, model: str | None = None, kind: str | None = None) -> list[dict]:
        """The DICOM objects made for a study (every version), oldest first."""
        q, args = "SELECT * FROM objects WHERE study_id=?", [study_id]
        if model is not None:
            q, args = q + " AND model=?", [*args, model]
        if kind is not None:
            q, args = q + " AND kind=?", [*args, kind]
        return [dict(r) for r in self._db().execute(q + " ORDER BY version", args)]

    def add_object(self, study_id: str, model: str, kind: str, version: int, file: str, key: str, ds: object) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO objects VALUES(?,?,?,?,?,?,?,?,?,?)",
                (
                    study_id,
                    model,
                    kind,
                    version,
                    file,
                    key,
                    str(ds.SOPInstanceUID),
                    str(ds.SeriesInstanceUID),
                    int(str(getattr(ds, "VerificationFlag", "")) == "VERIFIED"),
                    now_iso(),
                ),
            )

    # --- what the receiver took in ---------------------------------------------------------
    def receive(
        self, study_uid: str, new_study_id: str, sop_uid: str, file: str, patient_key: str, calling: str
    ) -> tuple[str, bool, str | None]:
        """Record one received instance: (our study id, whether it is new, a refusal or None).
        The same SOP Instance UID again is not new (a study pushed twice); an instance whose
        patient differs from the study's first instance is refused."""
        t = time.time()
        with self.tx() as db:
            a = db.execute("SELECT * FROM arrivals WHERE study_uid=?", (study_uid,)).fetchone()
            if a is not None and a["patient_key"] != patient_key:
                return a["study_id"], False, "another patient than the study's earlier instances"
            study_id = a["study_id"] if a is not None else new_study_id
            seen = db.execute("SELECT 1 FROM received WHERE sop_uid=?", (sop_uid,)).fetchone()
            if seen:
                return study_id, False, None
            db.execute("INSERT INTO received VALUES(?,?,?,?)", (sop_uid, study_uid, file, t))
            if a is None:
                db.execute(
                    "INSERT INTO arrivals VALUES(?,?,?,?,?,?,1,1)", (study_uid, study_id, patient_key, calling, t, t)
                )
            else:
                db.execute(
                    "UPDATE arrivals SET last=?, instances=instances+1, pending=1 WHERE study_uid=?", (t, study_uid)
                )
            st = db.execute("SELECT status FROM studies WHERE study_id=?", (study_id,)).fetchone()
            stamp = now_iso()
            if st is None:
                _insert_study(db, study_id, study_uid, "dicom", "receiving", stamp)
                _event(db, study_id, stamp, f"C-STORE from {calling}", "receiving", "first instance received")
            elif st["status"] != "receiving":
                _set_status(db, study_id, stamp, "receiving")
                _event(db, study_id, stamp, f"C-STORE from {calling}", "receiving", "new instances after completion")
        return study_id, True, None

    def seen(self, sop_uid: str) -> bool:
        return self._db().execute("SELECT 1 FROM received WHERE sop_uid=?", (sop_uid,)).fetchone() is not None

    def quiet_studies(self, stable_seconds: float) -> list[dict]:
        """Arrivals with new instances and none for ``stable_seconds``: ready to be completed."""
        rows = self._db().execute(
            "SELECT * FROM arrivals WHERE pending=1 AND last <= ?", (time.time() - stable_seconds,)
        )
        return [dict(r) for r in rows]

    def received_files(self, study_uid: str) -> list[str]:
        """The study's instances waiting in the incoming folder (not yet taken into the store)."""
        rows = self._db().execute(
            "SELECT file FROM received WHERE study_uid=? AND file != '' ORDER BY time", (study_uid,)
        )
        return [r["file"] for r in rows]

    def taken_in(self, files: list[str]) -> None:
        """These incoming files are in the store now (their SOP Instance UIDs stay known, so the
        same instance sent again is still recognised)."""
        with self.tx() as db:
            db.executemany("UPDATE received SET file='' WHERE file=?", [(f,) for f in files])

    def settle(self, study_uid: str, last: float) -> bool:
        """Mark an arrival as taken in, unless an instance came after ``last`` (then it stays
        pending and is completed after its own quiet time)."""
        with self.tx() as db:
            cur = db.execute("UPDATE arrivals SET pending=0 WHERE study_uid=? AND last=?", (study_uid, last))
            return cur.rowcount == 1

    # --- send jobs -----------------------------------------------------------------------
    def add_job(self, study_id: str, model: str, destination: str, instances: list[str]) -> int:
        t = now_iso()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO jobs(study_id,model,destination,status,attempts,next_try,error,instances,created,updated)"
                " VALUES(?,?,?,'queued',0,?,NULL,?,?,?)",
                (study_id, model, destination, time.time(), json.dumps(instances), t, t),
            )
            return int(cur.lastrowid)

    def job(self, job_id: int) -> dict:
        row = self._db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"send job {job_id} not found")
        return {**dict(row), "instances": json.loads(row["instances"])}

    def due_jobs(self) -> list[dict]:
        rows = self._db().execute(
            "SELECT id FROM jobs WHERE status='queued' AND next_try <= ? ORDER BY id", (time.time(),)
        )
        return [self.job(r["id"]) for r in rows]

    def jobs(self, study_id: str) -> list[dict]:
        rows = self._db().execute("SELECT id FROM jobs WHERE study_id=? ORDER BY id", (study_id,))
        return [self.job(r["id"]) for r in rows]

    def finish_job(self, job_id: int, ok: bool, error: str | None, retry_in: float | None) -> None:
        """After one attempt: ``sent``; or queued again in ``retry_in`` seconds; or ``failed``."""
        status = "sent" if ok else ("queued" if retry_in is not None else "failed")
        with self.tx() as db:
            db.execute(
                "UPDATE jobs SET status=?, attempts=attempts+1, next_try=?, error=?, updated=? WHERE id=?",
                (status, time.time() + (retry_in or 0), error, now_iso(), job_id),
            )
