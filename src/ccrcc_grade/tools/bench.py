"""Benchmarks (not tests): training throughput, prediction latency, ingest throughput.

Each prints one JSON line. Baselines are measured in the same run: plain eager fp32 NCHW
PyTorch, the way a straightforward implementation of the study would run.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ccrcc_grade.core.config import BenchOptions, TrainConfig
from ccrcc_grade.core.paths import RunDir, StudyDir, read_json
from ccrcc_grade.model.data import augment, class_weights, to_model_input
from ccrcc_grade.model.inference import CpuBf16Model, amp_dtype, autocast, fast_inference_model, resolve_device
from ccrcc_grade.model.registry import create_model
from ccrcc_grade.tools.bench_mem import peak_rss_mb


def _train_speed(
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool,
    steps: int,
    image_size: int,
    batch_size: int,
    crops: torch.Tensor,
    labels: torch.Tensor,
    compiled: bool = False,
) -> tuple[float, float]:
    """Images/s of train steps (augmentation included) and the share of time spent on data;
    ``compiled``: the training step `train` uses on CUDA (torch.compile reduce-overhead)."""
    from ccrcc_grade.model.train import StepModel

    torch.manual_seed(0)
    model, _ = create_model("resnet34", "none")
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = StepModel(model, device, "on" if compiled else "off", batch_size, 1)
    if compiled:  # compilation and CUDA-graph capture happen in the first steps: warm up outside the timing
        steps += 3
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(labels).to(device))
    gen = torch.Generator().manual_seed(0)
    crops, labels = crops.to(device), labels.to(device)
    t_data = t_step = 0.0
    n_img = 0
    for step in range(steps + 1):  # step 0 warms up (allocations, kernel choice)
        t0 = time.perf_counter()
        idx = torch.randint(0, len(crops), (batch_size,), generator=gen).to(device)
        x = to_model_input(crops[idx], image_size, True, channels_last, transform=lambda t: augment(t, gen))
        y = labels[idx]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        with autocast(device, amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step > (3 if compiled else 0):
            t_data += t1 - t0
            t_step += t2 - t1
            n_img += batch_size
    return n_img / (t_data + t_step), t_data / (t_data + t_step)


def bench_train(
    device: str = "auto",
    steps: int = 6,
    image_size: int = TrainConfig.image_size,
    batch_size: int = TrainConfig.batch_size,
) -> dict:
    dev = resolve_device(device)
    rng = np.random.default_rng(0)
    crops = torch.from_numpy(rng.integers(0, 256, (128, image_size, image_size), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 2, 128)).long()
    base, _ = _train_speed(dev, None, False, max(2, steps // 2), image_size, batch_size, crops, labels)
    fast, share = _train_speed(dev, amp_dtype(dev, "auto"), True, steps, image_size, batch_size, crops, labels)
    extra = {}
    if dev.type == "cuda":  # the batch-32 compiled step (CUDA graphs) against eager, same run
        comp, _ = _train_speed(
            dev, amp_dtype(dev, "auto"), True, max(steps, 20), image_size, batch_size, crops, labels, compiled=True
        )
        extra = {"train_img_s_compiled": round(comp, 2), "compiled_vs_eager": round(comp / fast, 2)}
    return {
        "bench": "train",
        "train_img_s": round(fast, 2),
        "train_img_s_baseline": round(base, 2),
        "train_speedup": round(fast / base, 2),
        **extra,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "data_share": round(share, 4),
        "device": str(dev),
        "amp": str(amp_dtype(dev, "auto")),
        "image_size": image_size,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }


def cpu_name() -> str:
    """The CPU model and the vector path PyTorch uses on it (benchmarks say where they ran)."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"


def _latency(fn: Callable[[], object], n: int) -> np.ndarray:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return np.asarray(ts)


@torch.inference_mode()
def bench_predict(device: str = "auto", steps: int = 30, image_size: int = TrainConfig.image_size) -> dict:
    """Latency of one 224 x 224 slice (uint8 crop in, probability out) and of a 15-slice phase."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model, _ = create_model("resnet34", "none")
    model.eval().to(dev)
    rng = np.random.default_rng(0)
    one = torch.from_numpy(rng.integers(0, 256, (1, image_size, image_size), dtype=np.uint8)).to(dev)
    fifteen = torch.from_numpy(rng.integers(0, 256, (15, image_size, image_size), dtype=np.uint8)).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def run_base(x: torch.Tensor = one) -> torch.Tensor:
        torch.softmax(model(to_model_input(x, image_size, True)), 1)
        sync()

    base = _latency(run_base, max(10, steps // 2))
    fast_model, amp = fast_inference_model(model, dev)
    cl = not isinstance(fast_model, CpuBf16Model)

    def run_fast(x: torch.Tensor = one) -> torch.Tensor:
        with autocast(dev, amp):
            torch.softmax(fast_model(to_model_input(x, image_size, True, channels_last=cl)).float(), 1)
        sync()

    fast = _latency(run_fast, steps)
    patient = _latency(lambda: run_fast(fifteen), max(5, steps // 3))
    onnx = _onnx_latency(model, image_size, steps) if dev.type == "cpu" else {}
    return {
        "bench": "predict",
        "predict_ms_p50": round(float(np.median(fast)), 2),
        "predict_ms_p95": round(float(np.percentile(fast, 95)), 2),
        "predict_ms_p50_baseline": round(float(np.median(base)), 2),
        "predict_speedup": round(float(np.median(base) / np.median(fast)), 2),
        "patient_ms_p50": round(float(np.median(patient)), 2),
        "patient_slices": 15,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "backend": f"torch {dev.type} " + getattr(fast_model, "mode", f"fused-BN channels_last autocast {amp}"),
        "threads": torch.get_num_threads(),
        **onnx,
    }


_ONNX_PROBE = """
import json, sys, time
import numpy as np
from ccrcc_grade.tools.bench_mem import peak_rss_mb
from ccrcc_grade.model.onnx_runtime import onnx_probs, onnx_session
path, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sess = onnx_session(path)
rng = np.random.default_rng(0)
one = rng.integers(0, 256, (1, size, size)).astype(np.uint8)
fifteen = rng.integers(0, 256, (15, size, size)).astype(np.uint8)
def lat(x, n):
    for _ in range(3):
        onnx_probs(path, x, sess)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); onnx_probs(path, x, sess); ts.append((time.perf_counter() - t) * 1000)
    return np.asarray(ts)
a, b = lat(one, steps), lat(fifteen, max(5, steps // 3))
print(json.dumps({"onnx_ms_p50": round(float(np.median(a)), 2), "onnx_ms_p95": round(float(np.percentile(a, 95)), 2),
                  "onnx_patient_ms_p50": round(float(np.median(b)), 2),
                  "onnx_peak_rss_mb": round(peak_rss_mb(), 1)}))
"""


def _onnx_latency(model: nn.Module, image_size: int, steps: int) -> dict:
    """ONNX Runtime (fp32, CPU) latency and memory in a fresh process that never imports torch:
    the deployment path of `predict model.onnx`."""
    import warnings

    from ccrcc_grade.model.export import ProbabilityModel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ProbabilityModel(model.cpu().eval(), image_size, True),
                (torch.zeros(1, image_size, image_size),),
                str(path),
                input_names=["crops"],
                output_names=["prob_high"],
                dynamic_axes={"crops": {0: "b"}, "prob_high": {0: "b"}},
                opset_version=18,
                dynamo=False,
            )
        out = subprocess.run(
            [sys.executable, "-c", _ONNX_PROBE, str(path), str(image_size), str(steps)], capture_output=True, text=True
        )
        if out.returncode != 0:
            return {"onnx_error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
        return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ingest(n_slices: int = 200, matrix: int = 512) -> dict:
    """Slices/s of ingest's decode + window + crop + resize on uncompressed 512 x 512 CT DICOM."""
    from ccrcc_grade.core.config import PreprocessConfig
    from ccrcc_grade.ingest.cache import crop_rois
    from ccrcc_grade.ingest.cohort import Roi
    from ccrcc_grade.io.boxes import Box
    from ccrcc_grade.tools.synth import synthetic_patient, write_dicom_slice

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        p = synthetic_patient(rng, "BENCH", 1, matrix)
        hu = (rng.normal(40, 60, (matrix, matrix))).astype(np.float32)
        uids = {"study": "1.2.3", "frame": "1.2.4", "parenchymal": "1.2.5"}
        rois = []
        for k in range(n_slices):
            f = Path(tmp) / f"{k:04d}.dcm"
            write_dicom_slice(f, hu, p, "parenchymal", k, uids)
            rois.append(Roi("BENCH", "parenchymal", f.name, Box(200, 220, 290, 300), "dicom", f, spacing=(0.7, 0.7)))
        t = time.perf_counter()
        crop_rois(rois, PreprocessConfig(), [], show_progress=False)
        secs = time.perf_counter() - t
    return {
        "bench": "ingest",
        "ingest_slices_s": round(n_slices / secs, 1),
        "n_slices": n_slices,
        "matrix": matrix,
        "format": "DICOM explicit VR little endian, uint16",
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_serve(
    device: str = "auto", steps: int = 15, matrix: int = 512, box_k: int | None = None, image_size: int = 224
) -> dict:
    """The workstation's predict endpoint for a 15-slice boxed phase (model warm: the default with
    the box-robustness range, the page's fast first grade without it, and the full one with the
    heat map) and a windowed 512 x 512 slice PNG, through the real app (in-process HTTP client).
    Every answer must be 200: a benchmark of error answers would measure nothing. ``box_k``:
    the plausible box sets of the robustness range (None: the server's default, 20);
    ``image_size``: the network's input (the study's 224; smaller only to test the benchmark)."""
    from fastapi.testclient import TestClient

    from ccrcc_grade.core.config import PreprocessConfig, to_dict
    from ccrcc_grade.core.errors import CcrccError
    from ccrcc_grade.model.inference import make_checkpoint
    from ccrcc_grade.serve import create_app
    from ccrcc_grade.tools.synth import synthetic_patient, write_dicom_slice

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        p = synthetic_patient(rng, "BENCH", 1, matrix)
        uids = {"study": "1.2.3", "frame": "1.2.4", "parenchymal": "1.2.5"}
        files = []
        for k in range(15):
            f = Path(tmp) / f"{k:04d}.dcm"
            write_dicom_slice(f, rng.normal(40, 60, (matrix, matrix)).astype(np.float32), p, "parenchymal", k, uids)
            files.append(("files", (f.name, f.read_bytes(), "application/dicom")))
        torch.manual_seed(0)
        model, _ = create_model("resnet34", "none")
        run = Path(tmp) / "resnet34-parenchymal"
        run.mkdir()
        torch.save(
            make_checkpoint(
                model,
                {
                    "model": "resnet34",
                    "classes": ["low", "high"],
                    "config": {},
                    "preprocess": {**to_dict(PreprocessConfig()), "image_size": image_size, "normalize": True},
                    "phase": "parenchymal",
                    "splits": {},
                    "epoch": 0,
                },
            ),
            run / "best.pt",
        )
        with TestClient(create_app([run], Path(tmp) / "data", device=device), base_url="http://127.0.0.1") as c:

            def ok(r: object) -> object:  # a benchmark of error answers measures nothing
                if r.status_code != 200:
                    raise CcrccError(f"bench serve: {r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
                return r

            study = ok(c.post("/api/studies", files=files)).json()
            sid, series = study["study_id"], study["series"][0]
            sops = c.get(f"/api/studies/{sid}").json()["series"][0]["sop_instance_uids"]
            m = matrix / 512  # the same box at any matrix: 90 x 80 pixels of 512
            box = {"x_min": 200 * m, "y_min": 220 * m, "x_max": 290 * m, "y_max": 300 * m}
            ok(c.put(f"/api/studies/{sid}/boxes", json=[{"sop_instance_uid": u, **box} for u in sops]))

            def grade(**q: object) -> None:
                if box_k is not None:
                    q.setdefault("box_k", box_k)
                ok(c.post(f"/api/studies/{sid}/predict", json=q))

            grade()  # warm
            pred = _latency(grade, steps)
            # the page's first answer: no heat map, no box-robustness resampling (target 0.5 s)
            fast = _latency(lambda: grade(box_k=0), steps)
            full = _latency(lambda: grade(cam=True), max(1, steps // 3))
            ks = itertools.cycle(range(15))  # a different slice each time: no cached PNG
            png = _latency(lambda: c.get(f"/api/studies/{sid}/series/{series['series_uid']}/slices/{next(ks)}.png"), 30)
    return {
        "bench": "serve",
        "predict_endpoint_ms_p50": round(float(np.median(pred)), 1),
        "predict_endpoint_ms_p95": round(float(np.percentile(pred, 95)), 1),
        "grade_fast_ms_p50": round(float(np.median(fast)), 1),
        "grade_fast_ms_p95": round(float(np.percentile(fast, 95)), 1),
        "grade_with_heat_map_ms_p50": round(float(np.median(full)), 1),
        "slices": 15,
        "box_k": box_k if box_k is not None else 20,
        "slice_png_ms_p50": round(float(np.median(png)), 1),
        "slice_png_ms_p95": round(float(np.percentile(png, 95)), 1),
        "matrix": matrix,
        "model": "resnet34 (random weights)",
        "device": str(resolve_device(device)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_robustness(
    device: str = "auto", k: int = 20, slices: tuple[int, ...] = (15, 37), image_size: int = TrainConfig.image_size
) -> dict:
    """What the box robustness of predict and the workstation adds per patient: ``k`` plausible
    box sets of a 15-slice patient and of the study's 37 slices per patient (5,867 boxes / 158
    patients), ResNet34 at the study's 224 px (``image_size``) through the real predictor (the
    backend predict uses)."""
    from PIL import Image

    from ccrcc_grade.core.config import PreprocessConfig, to_dict
    from ccrcc_grade.ingest.cohort import Roi
    from ccrcc_grade.io.boxes import Box
    from ccrcc_grade.model.inference import make_checkpoint
    from ccrcc_grade.model.predict import grade_rois, load_predictor
    from ccrcc_grade.model.robustness import box_robustness

    out: dict = {"bench": "robustness", "k": k, "image_size": image_size}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model, _ = create_model("resnet34", "none")
        run = Path(tmp) / "resnet34-parenchymal"
        run.mkdir()
        meta = {
            "model": "resnet34",
            "classes": ["low", "high"],
            "config": {},
            "preprocess": {**to_dict(PreprocessConfig(size=image_size)), "image_size": image_size, "normalize": True},
            "phase": "parenchymal",
            "splits": {},
            "epoch": 0,
        }
        torch.save(make_checkpoint(model, meta), run / "best.pt")
        predictor = load_predictor(run, device)
        rng = np.random.default_rng(0)
        rois = []
        for i in range(max(slices)):
            f = Path(tmp) / f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(f)
            rois.append(Roi("BENCH", "parenchymal", f.name, Box(200, 220, 290, 300), "image", f, spacing=(0.7, 0.7)))
        for n in slices:
            grade_rois(predictor, rois[:n], "BENCH", "parenchymal", box_k=0)  # warm
            t0 = time.perf_counter()
            g = grade_rois(predictor, rois[:n], "BENCH", "parenchymal", box_k=0)
            plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            b = box_robustness(predictor, rois[:n], g["prob_high"], 0.5, k, crops_per_s=n / plain)
            added = time.perf_counter() - t0
            out[f"slices_{n}"] = {
                "grade_s": round(plain, 3),
                "robustness_added_s": round(added, 3),
                "network_crops": n * b["per_slice_boxes"],
                "crops_per_s": round(n * b["per_slice_boxes"] / added, 1),
            }
        out["backend"] = predictor.backend
    out["device"] = str(resolve_device(device))
    out["threads"] = torch.get_num_threads()
    return out


STUDY_COHORT = dict(patients=158, high=34, matrix=512)  # the study's size: 124 low / 34 high grade


def bench_study(device: str = "auto", preset: str | None = None) -> dict:
    """The whole study on a phantom of the study's size (created once, in parallel, and cached in
    $CCRCC_BENCH_DIR or ~/.cache/ccrcc-grade): `--preset paper` on CUDA (weights none: a
    benchmark downloads nothing), `quick` on a CPU; concurrent trainings (--jobs auto)."""
    from ccrcc_grade.core.errors import CcrccError
    from ccrcc_grade.study.run import StudyOptions, resolve_jobs, run_study
    from ccrcc_grade.tools.synth import make_cohort

    dev = resolve_device(device)
    preset = preset or ("paper" if dev.type == "cuda" else "quick")
    root = Path(os.environ.get("CCRCC_BENCH_DIR") or Path.home() / ".cache" / "ccrcc-grade")
    c = STUDY_COHORT
    cohort = root / f"study-cohort-{c['patients']}-{c['high']}-{c['matrix']}"
    if not (cohort / "clinical.csv").is_file():
        if cohort.exists():  # never ours: the cohort appears only by the rename below, complete
            raise CcrccError(f"{cohort}: exists but is not a finished benchmark cohort; move it away")
        root.mkdir(parents=True, exist_ok=True)
        # made in a fresh folder of its own and renamed when complete: an interrupted creation
        # leaves a .study-cohort-* folder behind and is never taken for the cohort
        tmp = Path(tempfile.mkdtemp(prefix=".study-cohort-", dir=root)) / "cohort"
        make_cohort(
            tmp,
            patients=c["patients"],
            high_fraction=c["high"] / c["patients"],
            matrix=c["matrix"],
            seed=158,
            workers=min(os.cpu_count() or 1, 16),
        )
        tmp.rename(cohort)
        tmp.parent.rmdir()
    jobs = resolve_jobs("auto", str(dev))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        out = Path(tmp) / "study"
        t0 = time.perf_counter()
        run_study(cohort, out, StudyOptions(preset=preset, weights="none", device=str(dev), evidence=False))
        secs = time.perf_counter() - t0
        res = read_json(StudyDir(out).results)
        from ccrcc_grade.ingest.cache import CropCache

        cache = CropCache.load(out / "work")
        train_ids = set(StudyDir(out).work.read_splits()["train"])
        train_s, images = 0.0, 0
        for r in res["runs"].values():
            run = Path(r["run"])
            cfg = RunDir(run).read_config()
            with open(RunDir(run).log, newline="") as fh:
                train_s += sum(float(row["seconds"]) for row in csv.DictReader(fh))
            images += len(cache.select(cfg["phase"], train_ids)) * cfg["repeats"] * cfg["epochs"]
    return {
        "bench": "study",
        "study_seconds": round(secs, 1),
        "train_seconds": round(train_s, 1),
        "images": images,
        "img_s": round(images / max(train_s, 1e-9), 1),
        "jobs": jobs,
        "preset": preset,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "patients": c["patients"],
        "runs": len(res["runs"]),
    }


ROI_BENCH = {"train_patients": 40, "held_out": 12, "matrix": 256, "motion_mm": 15.0, "epochs": 30}


def bench_roi(roi_model: str | None = None, grade_model: str | None = None, seed: int = 1000) -> dict:
    """The proposal model on held-out phantom patients (another seed than any training cohort,
    realistic difficulty, phases moved by up to 15 mm): from one box on the largest slice of the
    parenchymal phase, the per-slice IoU with the true boxes and the slice range; the walk's
    seconds per phase (and per slice, scaled to a 40-slice phase); propagation to the other
    phases (box centre error before and after registration). Trains a model first (a few CPU
    minutes) unless ``roi_model`` names one; ``grade_model`` adds P(high) from proposed vs true boxes."""
    from ccrcc_grade.roi.measure import measure_proposals
    from ccrcc_grade.roi.net import load_roi_model, train_roi
    from ccrcc_grade.tools.synth import make_cohort

    c = ROI_BENCH
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        trained_s = None
        if roi_model is None:
            make_cohort(  # with room above and below the tumour (--motion-mm): the walk learns where to stop
                t / "train",
                patients=c["train_patients"],
                layout="nifti",
                matrix=c["matrix"],
                seed=seed,
                motion_mm=c["motion_mm"],
                workers=2,
            )
            t0 = time.perf_counter()
            train_roi(t / "train", t / "roi", epochs=c["epochs"], seed=0)
            trained_s = round(time.perf_counter() - t0, 1)
            roi_model = str(t / "roi")
        model = load_roi_model(Path(roi_model))
        held = make_cohort(
            t / "held",
            patients=c["held_out"],
            layout="nifti",
            matrix=c["matrix"],
            seed=seed + 1,
            motion_mm=c["motion_mm"],
            workers=2,
        )
        m = measure_proposals(held, model, grade_model=grade_model)
    return {
        "bench": "roi",
        "backend": model.backend,
        "seconds_per_phase": m["seconds_per_phase_40_slices"],
        "seconds_per_phase_phantom": m["seconds_per_phase"],
        "slices": m["slices_median"],
        "median_iou": m["median_iou"],
        "slice_range_within_1": m["slice_range_within_1"],
        "propagation_centre_error_mm": m["propagation"],
        "p_high_within_0_05": m.get("p_high_within_0_05"),
        "patients": m["patients"],
        "train_seconds": trained_s,
        "threads": torch.get_num_threads(),
    }


def bench_listen(n_slices: int = 400, matrix: int = 512, stable_seconds: float = 2.0) -> dict:
    """The DICOM receiver: a 400-slice CT series pushed by a pynetdicom SCU over loopback in one
    association (instances per second, each fsynced and recorded before success is answered),
    and the time from the last instance to the study being complete on the worklist with its
    series assigned, the quiet time (``stable_seconds``) excluded."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from ccrcc_grade.serve.receiver import Receiver
    from ccrcc_grade.serve.store import StudyStore
    from ccrcc_grade.tools.synth import synthetic_patient, write_dicom_slice

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        p = synthetic_patient(rng, "BENCH", 1, matrix)
        uids = {"study": "1.2.3", "frame": "1.2.4", "parenchymal": "1.2.5"}
        datasets = []
        for k in range(n_slices):
            f = Path(tmp) / f"{k:04d}.dcm"
            write_dicom_slice(f, rng.normal(40, 60, (matrix, matrix)).astype(np.float32), p, "parenchymal", k, uids)
            datasets.append(pydicom.dcmread(f))
        store = StudyStore(Path(tmp) / "data")
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        receiver = Receiver(store, "CCRCC", port, ["BENCH@127.0.0.1"], stable_seconds, "127.0.0.1").start()
        try:
            ae = AE("BENCH")
            ae.add_requested_context(CTImageStorage, str(datasets[0].file_meta.TransferSyntaxUID))
            t0 = time.perf_counter()
            assoc = ae.associate("127.0.0.1", port, ae_title="CCRCC")
            statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
            assoc.release()
            t_last = time.perf_counter()
            if any(statuses):
                raise RuntimeError(f"bench listen: refused instances {sorted(set(statuses))}")
            while not [s for s in store.listing() if s["status"] == "complete"]:
                time.sleep(0.02)
                if time.perf_counter() - t_last > 600:
                    raise RuntimeError("bench listen: the study was not complete after 10 minutes")
            t_done = time.perf_counter()
        finally:
            receiver.stop()
        (s,) = store.listing()
    return {
        "bench": "listen",
        "slices": n_slices,
        "matrix": matrix,
        "instances_per_s": round(n_slices / (t_last - t0), 1),
        "mb_per_s": round(sum(len(d.PixelData) for d in datasets) / 1e6 / (t_last - t0), 1),
        "complete_after_last_s": round(t_done - t_last - stable_seconds, 2),
        "stable_seconds": stable_seconds,
        "series": [(x["phase"], x["slices"]) for x in s["series"]],
    }


def bench(
    what: str,
    device: str = "auto",
    steps: int = BenchOptions.steps,
    image_size: int = BenchOptions.image_size,
    batch_size: int = BenchOptions.batch_size,
    preset: str | None = None,
    roi_model: str | None = None,
) -> Iterator[dict]:
    """Yield result lines; 'all' runs each benchmark in a fresh process so peak memory is its own."""
    if what == "all":
        for w in ("ingest", "predict", "serve", "listen", "robustness", "train"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ccrcc_grade",
                    "bench",
                    "--what",
                    w,
                    "--device",
                    device,
                    "--steps",
                    str(steps),
                    "--image-size",
                    str(image_size),
                    "--batch-size",
                    str(batch_size),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "CCRCC_NO_PROGRESS": "1"},
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    yield json.loads(line)
        return
    if what == "train":
        line = bench_train(device, steps, image_size, batch_size)
    elif what == "predict":
        line = bench_predict(device, max(steps, 20), image_size)
    elif what == "ingest":
        line = bench_ingest()
    elif what == "study":
        line = bench_study(device, preset)
    elif what == "robustness":
        line = bench_robustness(device, image_size=image_size)
    elif what == "roi":
        line = bench_roi(roi_model)
    elif what == "listen":
        line = bench_listen()
    else:
        line = bench_serve(device)
    yield {**line, "cpu": cpu_name()}
