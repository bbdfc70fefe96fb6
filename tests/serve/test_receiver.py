"""ccrcc_grade.serve.receiver: the Storage SCP, driven by a real pynetdicom SCU over loopback.
Every refusal class gets its DICOM status and one log line, the rest of the study untouched;
pushed twice nothing doubles; a restart mid-study loses no instance; instances after completion
reopen the study (not graded meanwhile) and it is taken in again with its boxes."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.serve.receiver import Peer, Receiver
from ccrcc_grade.serve.store import StudyStore


@pytest.fixture
def store(tmp_path) -> StudyStore:
    return StudyStore(tmp_path / "d")


@pytest.fixture
def receiver(store, free_port):
    r = Receiver(store, "CCRCC", free_port(), ["SENDER@127.0.0.1"], stable_seconds=0.3, host="127.0.0.1").start()
    yield r
    r.stop()


def patient(dicom_cohort: Path, pid: str = "SYN001") -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted((dicom_cohort / pid).rglob("*.dcm"))]


def push(port: int, datasets: list, calling: str = "SENDER", contexts: tuple = (CTImageStorage,)) -> list[int]:
    """C-STORE every dataset (or a file path, sent as its bytes); the statuses, or [-1] when the
    association was rejected."""
    ae = AE(calling)
    for cx in contexts:  # one context per transfer syntax: a file is sent in its own
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
        ae.add_requested_context(cx, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CCRCC")
    if not assoc.is_established:
        return [-1]
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def wait_complete(store: StudyStore, n: int = 1, timeout: float = 30) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [s for s in store.listing() if s["status"] not in ("receiving",)]
        if len(done) >= n and not [s for s in store.listing() if s["status"] == "receiving"]:
            return store.listing()
        time.sleep(0.1)
    raise AssertionError(f"not complete in {timeout} s: {store.listing()}")


def incoming_left(store: StudyStore, timeout: float = 10) -> list:
    """The receiver's incoming copies still there after ``timeout`` s (they go once the store
    holds the study, just after its status changes)."""
    deadline = time.time() + timeout
    while (left := list((store.root / ".incoming").rglob("*.dcm"))) and time.time() < deadline:
        time.sleep(0.1)
    return left


def test_a_study_arrives_and_completes_after_the_quiet_time(receiver, store, dicom_cohort, caplog):
    caplog.set_level(logging.INFO)
    datasets = patient(dicom_cohort)
    ae = AE("SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CCRCC")
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert push(receiver.port, datasets) == [0] * len(datasets)
    (s,) = wait_complete(store)
    assert s["source"] == "dicom" and s["status"] == "complete"
    assert sorted(x["phase"] for x in s["series"]) == ["corticomedullary", "excretory", "parenchymal", "plain"]
    assert sum(x["slices"] for x in s["series"]) == len(datasets)
    stored = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in store.root.glob("*/series/*/*")}
    assert stored == {str(d.SOPInstanceUID) for d in datasets}
    assert not incoming_left(store)  # taken in: the incoming copies are gone
    assert datasets[0].PatientID not in caplog.text and str(datasets[0].PatientName) not in caplog.text
    assert f"study {s['study_id']} complete: {len(datasets)} instances" in caplog.text


def _corrupt_file(tmp_path: Path, ds: pydicom.Dataset) -> Path:
    """A file whose meta is valid and whose dataset breaks off after its SOP Instance UID into a
    sequence of garbage (pynetdicom sends the bytes as they are, see STORE_SEND_CHUNKED_DATASET)."""
    path = tmp_path / "corrupt.dcm"
    ds.save_as(path, enforce_file_format=True)  # explicit VR little endian
    raw = path.read_bytes()
    start = 144 + int.from_bytes(raw[140:144], "little")  # preamble, DICM, meta group
    i = raw.index(b"\x08\x00\x18\x00", start)  # (0008,0018) SOPInstanceUID
    end = i + 8 + int.from_bytes(raw[i + 6 : i + 8], "little")
    garbage = b"\x08\x00\x20\x00SQ\x00\x00\xff\xff\xff\xff" + b"\x10\x00\x10\x00PN\x04\x00abcd" * 3
    path.write_bytes(raw[:end] + garbage)
    return path


@pytest.mark.parametrize(
    "case, status, logged",
    [
        ("unknown calling AE", -1, None),  # association rejected: calling AE title not recognised
        ("known AE from another host", 0x0124, "not on the allow-list"),
        ("not a CT image", 0x0122, "is not CT Image Storage"),
        ("corrupt instance", 0xC210, "cannot be decoded"),
        ("no StudyInstanceUID", 0xC210, "has no StudyInstanceUID"),
        ("pixel bomb", 0xC210, "larger than any CT slice"),
        ("another patient in the study", 0x0110, "another patient"),
    ],
)
def test_refusals(case, status, logged, store, free_port, dicom_cohort, tmp_path, caplog, monkeypatch):
    from pynetdicom import _config

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", case == "corrupt instance")
    allow = ["SENDER@10.255.255.1"] if case == "known AE from another host" else ["SENDER@127.0.0.1"]
    r = Receiver(store, "CCRCC", free_port(), allow, stable_seconds=0.3, host="127.0.0.1").start()
    try:
        good = patient(dicom_cohort)[:3]
        bad = copy.deepcopy(good[0])
        bad.SOPInstanceUID = generate_uid()
        contexts = (CTImageStorage,)
        calling = "STRANGER" if case == "unknown calling AE" else "SENDER"
        if case == "not a CT image":
            bad.SOPClassUID = SecondaryCaptureImageStorage
            contexts = (CTImageStorage, SecondaryCaptureImageStorage)
        elif case == "corrupt instance":
            bad = _corrupt_file(tmp_path, bad)
        elif case == "no StudyInstanceUID":
            del bad.StudyInstanceUID
        elif case == "pixel bomb":
            bad.Rows = bad.Columns = 65535
        elif case == "another patient in the study":
            bad.PatientID, bad.PatientName = "SOMEONE-ELSE", "Else^Someone"
        if case in ("unknown calling AE", "known AE from another host"):
            assert push(r.port, [bad], calling, contexts) == [status]
        else:
            assert push(r.port, [*good, bad], calling, contexts) == [0, 0, 0, status]
            (s,) = wait_complete(store)
            assert sum(x["slices"] for x in s["series"]) == 3  # the rest of the study untouched
        if logged:
            assert logged in caplog.text
        assert "SOMEONE-ELSE" not in caplog.text and "SYN001" not in caplog.text
    finally:
        r.stop()


def test_pushed_twice_and_more_after_completion(receiver, store, dicom_cohort, trained_run):
    """The same instances again: nothing doubles, the study stays complete. New instances of a
    complete study reopen it (grading refused meanwhile, 409) and it is taken in again whole,
    its boxes kept."""
    from ccrcc_grade.serve.errors import Stale
    from ccrcc_grade.serve.models import ModelRegistry
    from ccrcc_grade.serve.workstation import Workstation

    datasets = patient(dicom_cohort)
    first = [d for d in datasets if "NP" not in str(d.SeriesDescription)]
    late = [d for d in datasets if "NP" in str(d.SeriesDescription)]  # the parenchymal series comes later
    assert push(receiver.port, first) == [0] * len(first)
    (s,) = wait_complete(store)
    sid = s["study_id"]
    assert push(receiver.port, first) == [0] * len(first)
    time.sleep(1.0)
    (s,) = store.listing()
    assert s["status"] == "complete" and sum(x["slices"] for x in s["series"]) == len(first)
    sop = s["series"][0]["series_uid"]
    k0 = store.series(sid, sop)["sop_instance_uids"][0]
    store.set_boxes(sid, [{"sop_instance_uid": k0, "x_min": 10, "y_min": 10, "x_max": 30, "y_max": 30}])
    receiver.stable_seconds = 1.5  # long enough to try grading while the late series is in
    assert push(receiver.port, late[:1]) == [0]
    assert store.listing()[0]["status"] == "receiving"
    ws = Workstation(ModelRegistry([trained_run], "cpu"), store, None)
    with pytest.raises(Stale, match="still receiving"):
        ws.grade(sid, None, False)
    assert push(receiver.port, late[1:]) == [0] * (len(late) - 1)
    (s,) = wait_complete(store, timeout=30)
    assert s["study_id"] == sid and sum(x["slices"] for x in s["series"]) == len(datasets)
    assert "parenchymal" in [x["phase"] for x in s["series"]]
    assert [b["sop_instance_uid"] for b in store.boxes(sid)] == [k0]  # the boxes stay
    assert s["status"] == "boxed"  # and so does what they made of the study
    assert not incoming_left(store)
    assert push(receiver.port, datasets[:3]) == [0, 0, 0]  # still known: pushed again, stored once
    time.sleep(2.0)
    (s,) = store.listing()
    assert s["status"] == "boxed" and sum(x["slices"] for x in s["series"]) == len(datasets)


def test_a_restart_mid_study_loses_no_instance(store, free_port, dicom_cohort):
    datasets = patient(dicom_cohort)
    port = free_port()
    r = Receiver(store, "CCRCC", port, ["SENDER@127.0.0.1"], stable_seconds=5, host="127.0.0.1").start()
    assert push(port, datasets[:15]) == [0] * 15
    r.stop()  # the receiver goes down with the study incomplete
    assert store.listing()[0]["status"] == "receiving"
    r = Receiver(StudyStore(store.root), "CCRCC", port, ["SENDER@127.0.0.1"], stable_seconds=1, host="127.0.0.1")
    r.start()
    try:
        assert push(port, datasets[15:]) == [0] * (len(datasets) - 15)
        (s,) = wait_complete(store)
        assert sum(x["slices"] for x in s["series"]) == len(datasets)  # counted on both sides
    finally:
        r.stop()


@pytest.mark.parametrize(
    "allow, message",
    [
        ([], "name the callers"),
        (["ORTHANC"], "write AE@HOST"),
        (["@10.0.0.1"], "write AE@HOST"),
        (["A" * 17 + "@10.0.0.1"], "1-16 printable characters"),
        (["ORTHANC@no-such-host.invalid"], "cannot be resolved"),
    ],
)
def test_bad_allow_lists(allow, message, store, free_port):
    with pytest.raises(CcrccError, match=message):
        Receiver(store, "CCRCC", free_port(), allow)


def test_peer_matching():
    p = Peer.parse("ORTHANC@127.0.0.1")
    assert p.admits("ORTHANC", "127.0.0.1") and not p.admits("ORTHANC", "10.0.0.1") and not p.admits("X", "127.0.0.1")
    assert Peer.parse("ORTHANC@*").admits("ORTHANC", "10.9.8.7")


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--listen-port", "70000", "--allow", "A@127.0.0.1"], "must be 1-65535"),
        (["serve", "--listen-port", "{port}"], "name the callers"),
        (["serve", "--listen-port", "{port}", "--allow", "ORTHANC"], "write AE@HOST"),
        (["serve", "--listen-port", "{port}", "--allow", "A@127.0.0.1", "--stable-seconds", "-1"], "0-3600"),
        (["serve", "--listen-port", "{port}", "--allow", "A@127.0.0.1", "--stable-seconds", "nan"], "0-3600"),
        (["serve", "--ae-title", "A" * 17], "1-16 printable characters"),
        (["serve", "--send", "ORTHANC@pacs"], "write AE@HOST:PORT"),
        (["serve", "--send", "ORTHANC@pacs:0"], "write AE@HOST:PORT"),
        (["serve", "--send", "AE\\X@pacs:104"], "1-16 printable characters"),
        (["serve", "--ohif"], "give --pacs"),
        (
            ["serve", "--ohif", "--pacs", "http://127.0.0.1:1/dicom-web", "--port", "8050", "--ohif-port", "8050"],
            "differ from --port",
        ),
        (["listen", "--port", "{port}", "--allow", "ORTHANC"], "write AE@HOST"),
        (["listen", "--port", "0", "--allow", "A@127.0.0.1"], "must be 1-65535"),
    ],
)
def test_the_dicom_flags_refuse_bad_values(args, message, refused, trained_run, free_port, tmp_path, capsys):
    """Each bad value of the receiver's, sender's and OHIF's flags: exit 2, one line naming it,
    before anything listens."""
    args = [a.replace("{port}", str(free_port())) for a in args]
    if args[0] == "serve":
        args = ["serve", "--models", str(trained_run), "--data", str(tmp_path / "d"), *args[1:]]
    else:
        args = [*args, "--data", str(tmp_path / "d")]
    refused(capsys, args, message)
