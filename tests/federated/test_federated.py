"""ccrcc_grade.federated: Flower server + one client process per site, the run folder it makes,
what travels between them, and every refusal (one line, nothing lost)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

FAST = [
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--repeats",
    "1",
    "--lr",
    "0.01",
    "--size",
    "32",
    "--ratios",
    "2:1:1",
    "--bootstrap",
    "100",
    "--no-progress",
]


@pytest.fixture(scope="module")
def mc_work(multicentre_cohort, tmp_path_factory):
    """The multi-centre phantom ingested once at 32 px (what --simulate and the site tests cut)."""
    from ccrcc_grade.core.config import PreprocessConfig
    from ccrcc_grade.ingest.pipeline import ingest

    work = tmp_path_factory.mktemp("mcwork") / "w"
    ingest(multicentre_cohort, work, PreprocessConfig(size=32), show_progress=False)
    return work


@pytest.fixture(scope="module")
def federation(mc_work, tmp_path_factory, run_cli):
    """A simulated federation of the phantom's 3 centres (2 rounds), every client message captured,
    whose server is killed after round 1 and resumed: returns (DIR, capture folder, the sites' logs
    after the kill)."""
    out = tmp_path_factory.mktemp("fed") / "run"
    capture = tmp_path_factory.mktemp("capture")
    args = [str(mc_work), "--simulate", "--out", str(out), "--phase", "parenchymal", "--rounds", "2", *FAST]
    env = {**os.environ, "CCRCC_FL_CAPTURE": str(capture)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ccrcc_grade", "federated", *args, "--site-patience", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), "round 1 never completed"
    os.kill(proc.pid, signal.SIGKILL)  # the server, not its sites: they must notice on their own
    proc.wait()
    logs = sorted((out / "sites").glob("*/client.log"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all("stopped" in f.read_text() for f in logs):
        time.sleep(0.5)
    after_kill = {f.parent.name: f.read_text() for f in logs}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # a site that did not stop would fail the test below
    os.environ["CCRCC_FL_CAPTURE"] = str(capture)
    try:
        assert run_cli("federated", *args, "--resume") == 0
    finally:
        del os.environ["CCRCC_FL_CAPTURE"]
    return out, capture, after_kill


def test_simulated_federation_is_a_normal_run_folder(federation, multicentre_cohort, read_rows, run_cli, tmp_path):
    out, _, _ = federation
    fed = json.loads((out / "federation.json").read_text())
    clinical = read_rows(multicentre_cohort / "clinical.csv")
    centres = sorted({r["center"] for r in clinical})
    assert sorted(fed["sites"]) == centres and fed["rounds"] == 2 and fed["strategy"] == "fedavg"
    for c in centres:  # each site's patients are its centre's, split in three
        site = fed["sites"][c]
        assert site["patients"] == sum(r["center"] == c for r in clinical)
        assert site["train_patients"] + site["val_patients"] + site["test_patients"] == site["patients"]
    assert [h["round"] for h in fed["history"]] == [1, 2]
    assert all(set(h["evaluate"]) == set(centres) for h in fed["history"])  # every site scored every round
    assert 1 <= fed["best_round"] <= 2
    # the run folder `evaluate`/`predict`/`export` load: best.pt of the best round, pooled test patients
    for f in ("best.pt", "config.json", "log.csv", "train_summary.json", "eval-test/metrics.json"):
        assert (out / f).is_file(), f
    assert not (out / "last.pt").exists()  # finished: no resume state left
    m = json.loads((out / "eval-test" / "metrics.json").read_text())
    n_test = sum(s["test_patients"] for s in fed["sites"].values())
    assert m["patient"]["n_patients"] == n_test == fed["test"]["patients"]
    assert sorted(m["subgroups"]["center"]) == centres  # per-site results on the pooled test patients
    assert run_cli("export", out, "--onnx", tmp_path / "m.onnx") == 0 and (tmp_path / "m.onnx").stat().st_size > 1e6
    from ccrcc_grade.model.predict import load_predictor

    pred = load_predictor(out, backend="torch")
    assert pred.meta["federated"]["round"] == fed["best_round"]
    # federated vs centralised vs each site alone on the same test patients, with DeLong
    cmp = fed["comparison"]
    assert cmp["test_patients"] == n_test
    assert set(cmp["models"]) == {"federated", "centralised", *(f"site {c} alone" for c in centres)}
    for name, e in cmp["models"].items():
        assert e["auc"]["n"] == n_test, name
        if name != "federated":
            assert "p" in e["vs_federated"] and "auc_diff" in e["vs_federated"]
    assert "| centralised |" in (out / "comparison.md").read_text() and (out / "comparison_roc.png").is_file()


def test_only_model_tensors_and_aggregate_numbers_leave_a_site(federation, multicentre_cohort, read_rows):
    """Every message the clients handed to Flower, captured: tensors of the model's shapes, a
    fixed set of numbers, the site's name and (once) its preprocessing - no pixels, no ids."""
    import torch

    from ccrcc_grade.model.registry import create_model

    out, capture, _ = federation
    shapes = [tuple(v.shape) for v in create_model("resnet34", "none")[0].state_dict().values()]
    ids = re.compile(
        b"|".join(re.escape(r["patient_id"].encode()) for r in read_rows(multicentre_cohort / "clinical.csv"))
    )
    files = sorted(capture.glob("*.pkl"))
    kinds = {f.name.split("-")[-1].removesuffix(".pkl") for f in files}
    assert {"fit", "evaluate"} <= kinds and len(files) >= 3 * 2 * 2
    allowed = {
        "site",
        "train_loss",
        "train_crops",
        "seconds",
        "preprocess",
        "val_loss",
        "val_patients",
        "val_high",
        "val_auc",
    }
    for f in files:
        raw = f.read_bytes()
        found = ids.search(raw)  # one pass over the message for every patient id
        assert found is None, (f.name, found and found.group(0))
        msg = pickle.loads(raw)
        if f.name.endswith("fit.pkl"):
            arrays, n, metrics = msg
            assert [tuple(a.shape) for a in arrays] == shapes and isinstance(n, int)
        elif f.name.endswith("evaluate.pkl"):
            loss, n, metrics = msg
            assert isinstance(loss, float) and isinstance(n, int)
        else:
            continue
        assert set(metrics) <= allowed, set(metrics) - allowed
        for k, v in metrics.items():
            assert isinstance(v, (int, float, str)) and not isinstance(v, np.ndarray), k
            if isinstance(v, str) and k == "preprocess":
                assert set(json.loads(v)) >= {"size", "window_level", "window_width"}
            elif isinstance(v, str):
                assert k == "site" and v.startswith("SYNTH-")
    assert not any(isinstance(a, torch.Tensor) for a in ())  # (Flower carries numpy arrays only)


@pytest.fixture(scope="module")
def site_works(mc_work, tmp_path_factory):
    from ccrcc_grade.federated.sites import split_by_centre

    return split_by_centre(mc_work, tmp_path_factory.mktemp("sites") / "sites", "2:1:1", 0)


def _other_preprocessing(site_works, tmp_path):
    from ccrcc_grade.core.config import PreprocessConfig
    from ccrcc_grade.federated.sites import split_by_centre
    from ccrcc_grade.ingest.pipeline import ingest

    first = next(iter(site_works.values()))
    cohort = json.loads((first / "ingest_report.json").read_text())["cohort"]
    ingest(cohort, tmp_path / "w2", PreprocessConfig(size=32, window_level=60), show_progress=False)
    other = split_by_centre(tmp_path / "w2", tmp_path / "s2", "2:1:1", 0)
    names = list(site_works)
    return [site_works[names[0]], site_works[names[1]], other[names[2]]], ["other preprocessing", "window_level 60"]


def _one_grade(site_works, tmp_path):
    import shutil

    from ccrcc_grade.ingest.cache import CropCache

    works = list(site_works.values())
    w = tmp_path / "onegrade"
    shutil.copytree(works[0], w)
    labels = CropCache.load(w).patient_labels()
    splits = json.loads((w / "splits.json").read_text())
    splits["train"] = [p for p in splits["train"] if labels[p] == 0]
    (w / "splits.json").write_text(json.dumps(splits))
    return [w, works[1]], ["training patients hold one grade only", "all low"]


def _no_splits(site_works, tmp_path):
    import shutil

    w = tmp_path / "nosplit"
    shutil.copytree(next(iter(site_works.values())), w)
    (w / "splits.json").unlink()
    return [w, list(site_works.values())[1]], ["no splits.json", "ccrcc-grade split"]


@pytest.mark.parametrize(
    "make", [_other_preprocessing, _one_grade, _no_splits], ids=["preprocess", "onegrade", "split"]
)
def test_bad_sites_are_refused_before_anything_trains(site_works, tmp_path, make, refused, capsys):
    works, needles = make(site_works, tmp_path)
    out = tmp_path / "fed"
    refused(capsys, ["federated", *works, "--out", out, "--phase", "parenchymal", *FAST[:-9]], *needles)
    assert not (out / "best.pt").exists() and not (out / "sites").exists()  # nothing trained, nothing spawned


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--rounds", "0"], "--rounds and --local-epochs must be >= 1"),
        (["--local-epochs", "-1"], "--rounds and --local-epochs must be >= 1"),
        (["--mu", "nan"], "--mu must be between 0 and 10"),
        (["--mu", "20"], "--mu must be between 0 and 10"),
        (["--resume"], "no last.pt of an unfinished federation"),
    ],
)
def test_bad_settings_are_refused(site_works, tmp_path, refused, capsys, args, needle):
    refused(capsys, ["federated", *site_works.values(), "--out", tmp_path / "fed", *args], needle)


def test_simulate_needs_centres(dicom_cohort, tmp_path, refused, capsys):
    refused(
        capsys,
        ["federated", dicom_cohort, "--simulate", "--out", tmp_path / "f", "--size", "32"],
        "one centre only",
        "--simulate needs >= 2 values of 'center'",
    )


def test_an_existing_output_folder_is_never_replaced(site_works, tmp_path, refused, capsys):
    out = tmp_path / "fed"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    refused(capsys, ["federated", *site_works.values(), "--out", out], "not empty")
    assert (out / "mine.txt").read_text() == "keep"


def test_server_gone_mid_federation_sites_stop_and_it_resumes(federation):
    """The coordinating process was killed after round 1 (the fixture): every site stopped by
    itself with one line, and --resume finished from the last complete round."""
    out, _, after_kill = federation
    assert len(after_kill) == 3
    for site, log in after_kill.items():
        assert "went away" in log and "stopped" in log, (site, log[-400:])
    fed = json.loads((out / "federation.json").read_text())
    assert [h["round"] for h in fed["history"]] == [1, 2] and not (out / "last.pt").exists()
    assert fed["history"][0]["seconds"] and fed["history"][1]["evaluate"]


def _tls(folder):
    """A CA and a server certificate it signed for 127.0.0.1 (PEM files: ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject, issuer, key, signer, extensions):
        now = datetime.datetime.now(datetime.timezone.utc)
        b = x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        b = b.serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        b = b.not_valid_after(now + datetime.timedelta(days=1))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer, hashes.SHA256())

    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert(name("CA"), name("CA"), ca_key, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)])

    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    server = cert(name("127.0.0.1"), ca.subject, key, ca_key, [(san, False)])
    paths = [folder / "ca.pem", folder / "server.pem", folder / "server.key"]
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_across_machines_serve_and_join_over_tls(site_works, free_port, tmp_path, run_cli):
    """The server alone (--serve, TLS) and two sites joining it from their own WORK folders as
    separate processes: one round, a normal run folder whose model a third site evaluates."""
    ca, cert, key = _tls(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "server"
    (one, first), (two, second), (_, third) = site_works.items()
    train = ["--phase", "parenchymal", *FAST[:10], "--no-progress"]  # training settings, no ingest options
    cmd = [sys.executable, "-m", "ccrcc_grade", "federated"]
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("server", "site1", "site2")}  # noqa: SIM115
    procs = {
        "server": subprocess.Popen(
            [*cmd, "--serve", address, "--sites", "2", "--out", out, "--rounds", "1", *train]
            + ["--certificates", ca, cert, key],
            stdout=logs["server"],
            stderr=subprocess.STDOUT,
        )
    }
    for n, w in (("site1", first), ("site2", second)):
        procs[n] = subprocess.Popen(
            [*cmd, w, "--join", address, "--root-certificates", ca, *train], stdout=logs[n], stderr=subprocess.STDOUT
        )
    try:
        codes = {n: p.wait(timeout=240) for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for fh in logs.values():
            fh.close()
    assert codes == {"server": 0, "site1": 0, "site2": 0}, {n: (tmp_path / f"{n}.log").read_text()[-600:] for n in logs}
    fed = json.loads((out / "federation.json").read_text())
    assert fed["sites"] == 2 and fed["rounds"] == 1 and fed["best_round"] == 1
    assert set(fed["history"][0]["evaluate"]) == {one, two}  # both sites scored the round
    assert (out / "best.pt").is_file() and not (out / "last.pt").exists()
    # the server never had patients: a third site evaluates the model on its own WORK
    assert run_cli("evaluate", out, "--cohort", third, "--bootstrap", "100") == 0
    m = json.loads(next(out.glob("eval-*/metrics.json")).read_text())
    assert m["patient"]["n_patients"] > 0
