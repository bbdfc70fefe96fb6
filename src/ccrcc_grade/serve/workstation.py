"""The workstation's services behind the routes: the study store, the models, the PACS, and the
grading path shared with `predict` (one instance per app, handed to every router)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.core.fileio import atomic_write
from ccrcc_grade.ingest.cohort import Roi
from ccrcc_grade.io.boxes import Box
from ccrcc_grade.model.card import trust_statement
from ccrcc_grade.model.plausibility import assess
from ccrcc_grade.model.predict import grade_rois
from ccrcc_grade.roi.net import RoiModel
from ccrcc_grade.roi.propose import propose_patient
from ccrcc_grade.roi.volume import PhaseVolume, read_dicom_volume
from ccrcc_grade.serve.errors import NotFound, Stale, Unprocessable
from ccrcc_grade.serve.models import ModelRegistry
from ccrcc_grade.serve.pacs import Pacs
from ccrcc_grade.serve.sender import Destination
from ccrcc_grade.serve.store import CSV_SOURCE, StudyStore

# the roi package's box sources (boxes.csv's `source`) -> the workstation's (the SR's "drawn by")
ROI_TO_STORE = {csv: store for store, csv in CSV_SOURCE.items()}

log = logging.getLogger("ccrcc_grade.serve")


def drawn_by(box: dict) -> str:
    """Who or what made a box, as the SR codes it: a proposal a person moved keeps its origin."""
    source = box.get("source", "person")
    earlier = [h for h in box.get("history") or [] if h != "person"]
    return f"person after {earlier[-1]}" if source == "person" and earlier else source


def box_summary(boxes: list[dict]) -> dict:
    """What a grade was computed from: counts per source and the sentence the result shows
    ("boxes: 4 drawn, 17 interpolated"); proposals a person moved count as drawn (edited)."""
    counts: dict[str, int] = {}
    for b in boxes:
        w = CSV_SOURCE.get(b.get("source", "person"), "drawn")
        if b.get("source", "person") == "person" and b.get("history"):
            w = "edited"
        if not b.get("confirmed", True):
            w += " (unconfirmed)"
        counts[w] = counts.get(w, 0) + 1
    order = ["drawn", "edited", "interpolated", "propagated", "proposed"]
    keys = sorted(counts, key=lambda k: (order.index(k.split(" ")[0]) if k.split(" ")[0] in order else 9, k))
    return {"counts": counts, "text": "boxes: " + ", ".join(f"{counts[k]} {k}" for k in keys)}


class Workstation:
    """The store, the model registry and the PACS client (None without --pacs), and what the
    routes do with them: grade a study, check a stored grade still matches its inputs, build the SR."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: StudyStore,
        pacs: Pacs | None,
        roi_model: RoiModel | None = None,
        send_to: Destination | None = None,
        ae_title: str = "CCRCC",
        ohif_port: int | None = None,
        sr_style: str = "standard",
    ):
        self.registry, self.store, self.pacs, self.roi_model = registry, store, pacs, roi_model
        self.send_to, self.ae_title, self.ohif_port = send_to, ae_title, ohif_port
        if sr_style not in ("standard", "ohif"):
            raise CcrccError(f"--sr-style {sr_style!r}: use standard or ohif")
        self.sr_style = sr_style
        self.hu = lru_cache(maxsize=96)(store.slice_hu)  # decoded slices for the viewer's window changes

    def private_paths(self) -> list[str]:
        """Server folders never named in an answer."""
        paths = [str(self.store.root.resolve()), str(Path.home())]
        return paths + [str(Path(m["path"]).parent) for m in self.registry.models.values()]

    def need_pacs(self) -> Pacs:
        if self.pacs is None:
            raise Unprocessable("no PACS configured (start serve with --pacs URL)")
        return self.pacs

    def rois_for(
        self, study_id: str, phase: str, notes: list[str], include_proposed: bool = False
    ) -> tuple[list[Roi], dict]:
        raw = self.store.raw(study_id)
        series = [x for x in raw["series"] if x["phase"] == phase]
        if not series:
            assigned = ", ".join(
                f"{x['description'] or x['series_uid']}: {x['phase'] or 'unassigned'}" for x in raw["series"]
            )
            raise Unprocessable(
                f"the model was trained on the {phase} phase and no series of this study is assigned to it ({assigned})"
            )
        s = series[0]
        folder = self.store.folder(study_id) / "series" / s["folder"]
        rois, where = [], {}
        if s.get("override"):
            notes.append(
                f"graded on a series the model was not made for ({s['problem']}): assigned to the {phase} "
                "phase by the user's override"
            )
        unconfirmed = 0
        for b in self.store.boxes(study_id):
            if b["sop_instance_uid"] not in s["sop_instance_uids"]:
                continue
            if not b.get("confirmed", True) and not include_proposed:
                unconfirmed += 1
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
            raise Unprocessable(
                f"no confirmed boxes on the {phase} series: confirm the {unconfirmed} proposed box(es), or grade "
                "them explicitly (include_proposed)"
                if unconfirmed
                else f"no boxes on the {phase} series; draw the tumour's box on its slices first"
            )
        if unconfirmed:
            notes.append(f"{unconfirmed} proposed box(es) not confirmed and not graded")
        order = sorted(range(len(rois)), key=lambda i: (where[i][1], rois[i].box.as_tuple()))
        return [rois[i] for i in order], {n: where[i] for n, i in enumerate(order)}

    def check(self, study_id: str, rois: list[Roi], where: dict, phase: str, ref: dict | None) -> dict:
        """`model.plausibility.assess` on the boxes about to be graded (HU from the viewer's cache)."""
        series = self.store.series(study_id, where[0][0])
        boxes = [
            (f"box on slice {where[i][1] + 1}", self.hu(study_id, where[i][0], where[i][1]), r.box, r.spacing)
            for i, r in enumerate(rois)
        ]
        geometry = {"pixel_spacing_mm": series["pixel_spacing"][1], "slice_thickness_mm": series.get("slice_thickness")}
        return assess(boxes, phase, ref, geometry)

    def grade(
        self,
        study_id: str,
        model_id: str | None,
        cam: bool,
        box_k: int | None = None,
        include_proposed: bool = False,
        actor: str = "workstation",
    ) -> dict:
        self.ready(study_id)
        m = self.registry.get(model_id)
        phase = m["card"]["phase"]
        if phase == "combined":
            raise Unprocessable("a combined-phase model needs a phase; serve per-phase models")
        notes: list[str] = []
        inputs = self.inputs_digest(study_id, m)
        rois, where = self.rois_for(study_id, phase, notes, include_proposed)
        checked = self.check(study_id, rois, where, phase, m["card"].get("reference"))
        trust = trust_statement(m["card"])
        if not checked["assessable"]:  # nothing is stored: a report or SR needs a grade
            return {
                "patient_id": study_id,
                "phase": phase,
                "assessable": False,
                "grade": "not assessable",
                "decision": "Not assessable: " + checked["problems"][0],
                "prob_high": None,
                "slices": [],
                "plausibility": checked,
                "warnings": checked["problems"] + checked["warnings"] + notes,
                "trust": trust,
                "model": {"id": m["id"]},
            }
        out = self.store.prediction_dir(study_id, m["id"])
        k = {} if box_k is None else {"box_k": box_k}
        result = grade_rois(
            m["predictor"], rois, study_id, phase, notes + checked["warnings"], out / "cam" if cam else None, **k
        )
        result.update(assessable=True, plausibility=checked, trust=trust)
        stored = {b["sop_instance_uid"]: b for b in self.store.boxes(study_id)}
        sources = {sop: drawn_by(b) for sop, b in stored.items()}
        for i, s in enumerate(result["slices"]):
            series_uid, k, sop = where[i]
            s.update(series_uid=series_uid, slice_index=k, sop_instance_uid=sop)
            s["source"] = f"slice {k + 1}"
            s["drawn_by"] = sources.get(sop, "person")
            s["laterality"] = self.laterality(study_id, series_uid, k, rois[i].box, checked["boxes"][i]["spine"])
            if cam:
                name = Path(s.pop("cam")).name
                s["cam_url"] = f"/api/studies/{study_id}/cam/{m['id']}/{name}"
                s["heat_url"] = f"/api/studies/{study_id}/cam/{m['id']}/{name[:-4]}_heat.png"
        result["boxes"] = box_summary([stored[where[i][2]] for i in range(len(rois)) if where[i][2] in stored])
        result["boxes"]["include_proposed"] = include_proposed
        result["model"].update(id=m["id"], path=m["id"])  # no server paths in the answer
        result["patient_id"] = study_id
        result["inputs_sha256"] = inputs  # what the grade was computed from: checked before a report or SR
        self.store.worklist.set_grade(study_id, m["id"], result)
        self.store.worklist.set_status(study_id, "graded", actor, f"{m['id']}: {result['grade']}")
        log.info("study %s graded with %s: %s", study_id, m["id"], result["grade"])
        return result

    # --- assisted boxes -------------------------------------------------------------------
    def volume(self, study_id: str, series: dict) -> PhaseVolume:
        """A stored series as a volume in patient coordinates (``roi.volume``)."""
        return read_dicom_volume(self.store.folder(study_id) / "series" / series["folder"], allow_derived=True)

    def propose(
        self,
        study_id: str,
        phase: str | None,
        method: str = "auto",
        propagate: bool = False,
        actor: str = "workstation",
    ) -> dict:
        """Proposed boxes from the study's confirmed boxes: the proposal model's walk (or the
        interpolation between key boxes) on ``phase``, and with ``propagate`` every other
        assigned phase. Confirmed boxes are never changed; earlier unconfirmed proposals are
        replaced. Nothing is saved when the proposal fails (the error says why)."""
        raw = self.store.raw(study_id)
        assigned = {x["phase"]: x for x in raw["series"] if x["phase"]}
        self.store.folder(study_id)
        boxes, version = self.store.worklist.boxes(study_id)  # saved only if nobody changed them meanwhile
        confirmed = [b for b in boxes if b.get("confirmed", True)]
        by_sop = {sop: (x["phase"], k) for x in assigned.values() for k, sop in enumerate(x["sop_instance_uids"])}
        keyed = [(by_sop[b["sop_instance_uid"]], b) for b in confirmed if b["sop_instance_uid"] in by_sop]
        if phase is None:
            per_phase = Counter(p for (p, _), _ in keyed)
            if not per_phase:
                raise Unprocessable("no confirmed box on an assigned phase: box the tumour on one slice first")
            phase = max((p for p in assigned if p in per_phase), key=lambda p: (per_phase[p], p == "parenchymal"))
        if phase not in assigned:
            raise Unprocessable(f"no series of this study is assigned to the {phase} phase")
        if method == "model" and self.roi_model is None:
            raise Unprocessable("no proposal model on this server (start serve with --roi-model RUN)")
        model = self.roi_model if method in ("auto", "model") else None
        phases = tuple(p for p in assigned if p == phase or propagate)
        seeds: dict[str, dict[int, Box]] = {p: {} for p in phases}
        for (p, k), b in keyed:
            if p in seeds:  # one seed per slice: the largest box drawn there
                box = Box(b["x_min"], b["y_min"], b["x_max"], b["y_max"])
                old = seeds[p].get(k)
                if old is None or box.width * box.height > old.width * old.height:
                    seeds[p][k] = box
        if not seeds[phase]:
            raise Unprocessable(f"no confirmed box on the {phase} series: box the tumour on one slice first")
        try:  # what the proposal itself refuses (a geometry, a seed, a registration) is 422
            volumes = {p: self.volume(study_id, assigned[p]) for p in phases}
            result, info = propose_patient(volumes, seeds, model, phases, source_phase=phase)
        except CcrccError as exc:
            raise Unprocessable(str(exc)) from None
        have = {b["sop_instance_uid"] for b in confirmed}
        proposals = []
        for p, per_slice in result.items():
            s = assigned[p]
            for k, (box, source) in per_slice.items():
                sop = s["sop_instance_uids"][k]
                if source == "drawn" or sop in have:
                    continue
                box = box.clip(s["columns"], s["rows"])
                if box.width < 1 or box.height < 1:
                    continue
                proposals.append(
                    {
                        "sop_instance_uid": sop,
                        **dict(zip(("x_min", "y_min", "x_max", "y_max"), box.as_tuple())),
                        "source": ROI_TO_STORE[source],
                        "confirmed": False,
                        "history": [],
                    }
                )
        saved = self.store.set_boxes(study_id, confirmed + proposals, version, actor)
        counts: dict[str, int] = {}
        for b in proposals:
            counts[b["source"]] = counts.get(b["source"], 0) + 1
        return {"boxes": saved, "proposed": counts, "info": info, "phase": phase}

    def laterality(self, study_id: str, series_uid: str, k: int, box: Box, spine: list | None) -> str | None:
        """ "left" or "right": the patient side of the box's centre against the vertebral body's
        (``spine``: its (row, col) as the plausibility check found it; patient x of both through
        ImagePositionPatient/Orientation; +x is the patient's left)."""
        if spine is None:
            return None
        ds = pydicom.dcmread(self.store.slice_path(study_id, series_uid, k), stop_before_pixels=True)
        try:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            dr, dc = (float(v) for v in ds.PixelSpacing)
        except (AttributeError, TypeError, ValueError):
            return None
        cx, cy = (box.x_min + box.x_max) / 2, (box.y_min + box.y_max) / 2
        dx = iop[0] * (cx - spine[1]) * dc + iop[3] * (cy - spine[0]) * dr
        return "left" if dx > 0 else "right"

    def signoff(self, study_id: str, m: dict) -> dict | None:
        """The radiologist's sign-off of the current grade (None when unsigned or signed for
        inputs that have changed since)."""
        _, s = self.store.worklist.grade(study_id, m["id"])
        return s if s and s.get("inputs_sha256") == self.inputs_digest(study_id, m) else None

    def sign_off(self, study_id: str, model_id: str | None, observer: str) -> dict:
        """The radiologist verifies the current grade: recorded with name and time; the SR made
        from now on is VERIFIED with them as the person observer (a new SR version)."""
        result, m = self.last_result(study_id, model_id)
        if not result.get("assessable", True):
            raise Unprocessable("a study that is not assessable cannot be signed off")
        sign = {
            "observer": observer.strip(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs_sha256": result["inputs_sha256"],
            "grade": result["grade"],
        }
        self.store.worklist.set_signoff(study_id, m["id"], sign)
        self.store.worklist.log(study_id, sign["observer"], "signed off", f"{m['id']}: {result['grade']}")
        log.info("study %s: grade signed off by %s", study_id, sign["observer"])
        return sign

    def inputs_digest(self, study_id: str, m: dict) -> str:
        """A digest of everything a grade depends on: the model's weights, the phase assignment
        and the boxes. A report or SR is only made while it is unchanged."""
        raw = self.store.raw(study_id)
        phases = sorted((x["series_uid"], x["phase"] or "", bool(x.get("override"))) for x in raw["series"])
        state = {"model": m["predictor"].weights_sha256, "phases": phases, "boxes": self.store.boxes(study_id)}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def last_result(self, study_id: str, model_id: str | None) -> tuple[dict, dict]:
        m = self.registry.get(model_id)
        self.store.folder(study_id)
        result, _ = self.store.worklist.grade(study_id, m["id"])
        if result is None:
            raise Unprocessable(f"study {study_id} has not been graded with {m['id']} yet")
        if result.get("inputs_sha256") != self.inputs_digest(study_id, m):
            raise Stale(
                f"the boxes, the phases or the model changed since study {study_id} was graded with {m['id']}; "
                "grade it again before a report or SR is made"
            )
        return result, m

    def sr_dataset(self, study_id: str, model_id: str | None) -> pydicom.Dataset:
        """The SR of the current grade and sign-off. Versions live in ``predictions/<model>/sr``:
        the same inputs and sign-off give the same instance again (downloading or storing twice
        makes no duplicate); a changed grade or a sign-off makes the next version in the same
        series, naming the previous one as its predecessor."""
        return self._sr(study_id, *self.last_result(study_id, model_id))[0]

    def _sr(self, study_id: str, result: dict, m: dict) -> tuple[pydicom.Dataset, Path]:
        from ccrcc_grade.serve.sr import build_sr

        sign = self.signoff(study_id, m)
        state = [result["inputs_sha256"], sign, self.sr_style]
        key = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

        def make(series_uid: str | None, n: int, previous: pydicom.Dataset | None) -> pydicom.Dataset:
            sources = {}
            for s in result["slices"]:
                path = self.store.slice_path(study_id, s["series_uid"], s["slice_index"])
                sources[s["sop_instance_uid"]] = pydicom.dcmread(path, stop_before_pixels=True)
            return build_sr(
                result,
                sources,
                m["id"],
                m["predictor"].weights_sha256,
                signoff=sign,
                series_uid=series_uid,
                instance_number=n,
                previous=[previous] if previous is not None else None,
                ohif=self.sr_style == "ohif",
            )

        # each style is a series of its own (a different rendering of the same report)
        folder = self.store.prediction_dir(study_id, m["id"]) / ("sr" if self.sr_style == "standard" else "sr-ohif")
        return self._versioned(study_id, folder, key, make)

    def key_image(self, study_id: str, result: dict, m: dict) -> tuple[pydicom.Dataset, Path]:
        """The key image of the current grade (``keyimage``): the slice with the largest box, all
        its boxes, the heat map when the grade made one; versioned like the SR (``.../key``)."""
        from ccrcc_grade.serve.keyimage import build_key_image

        if not result.get("slices"):
            raise Unprocessable(f"study {study_id}: the grade has no boxed slice to show")
        best = max(result["slices"], key=lambda s: (s["box"][2] - s["box"][0]) * (s["box"][3] - s["box"][1]))
        heat = None
        if best.get("heat_url"):
            heat = self.store.prediction_dir(study_id, m["id"]) / "cam" / best["heat_url"].rsplit("/", 1)[-1]
        stored = {b["sop_instance_uid"]: b for b in self.store.boxes(study_id)}
        boxes = [
            (*s["box"], stored.get(s["sop_instance_uid"], {}).get("source", "person"))
            for s in result["slices"]
            if s["sop_instance_uid"] == best["sop_instance_uid"]
        ]
        key = hashlib.sha256(json.dumps([result["inputs_sha256"], bool(heat)], sort_keys=True).encode()).hexdigest()

        def make(series_uid: str | None, n: int, previous: pydicom.Dataset | None) -> pydicom.Dataset:
            import highdicom as hd

            path = self.store.slice_path(study_id, best["series_uid"], best["slice_index"])
            return build_key_image(
                result,
                pydicom.dcmread(path),
                self.hu(study_id, best["series_uid"], best["slice_index"]),
                boxes,
                heat,
                m["id"],
                m["predictor"].weights_sha256,
                series_uid or hd.UID(),
                n,
            )

        return self._versioned(study_id, self.store.prediction_dir(study_id, m["id"]) / "key", key, make)

    def seg(self, study_id: str, result: dict, m: dict) -> tuple[pydicom.Dataset, Path]:
        """The DICOM SEG of the proposal model's tumour on the graded series (``seg``): on each
        graded slice the model's mask prompted by that slice's box, the other slices empty;
        versioned like the SR (``.../seg``)."""
        from ccrcc_grade.roi.net import tumour_mask
        from ccrcc_grade.serve.seg import build_seg

        roi = self.roi_model
        roi_sha = str(roi.meta.get("weights_sha256") or roi.meta.get("onnx_weights_sha256") or "")
        key = hashlib.sha256(json.dumps([result["inputs_sha256"], roi_sha], sort_keys=True).encode()).hexdigest()
        series = self.store.series(study_id, result["slices"][0]["series_uid"])

        def make(series_uid: str | None, n: int, previous: pydicom.Dataset | None) -> pydicom.Dataset:
            import highdicom as hd

            folder = self.store.folder(study_id) / "series" / series["folder"]
            sources = [pydicom.dcmread(folder / f"{k}.dcm", stop_before_pixels=True) for k in range(series["slices"])]
            masks = np.zeros((series["slices"], series["rows"], series["columns"]), bool)
            spacing = tuple(series["pixel_spacing"])
            for s in result["slices"]:
                hu = self.hu(study_id, s["series_uid"], s["slice_index"])
                masks[s["slice_index"]] |= tumour_mask(roi, hu, Box(*s["box"]), spacing)
            return build_seg(sources, masks, Path(roi.path or "model").name, roi_sha, series_uid or hd.UID(), n)

        return self._versioned(study_id, self.store.prediction_dir(study_id, m["id"]) / "seg", key, make)

    def _versioned(self, study_id: str, folder: Path, key: str, make: Callable) -> tuple[pydicom.Dataset, Path]:
        """One series of versions of a result object (``predictions/<model>/<kind>/<n>.dcm``, the
        versions in the worklist): the same ``key`` gives the stored instance again; a new key the
        next instance of the series, made by ``make(series_uid or None, instance_number, previous
        dataset or None)``."""
        wl, model, kind = self.store.worklist, folder.parent.name, folder.name
        with self.store.lock(study_id):
            versions = wl.objects(study_id, model, kind)
            if versions and versions[-1]["key"] == key:
                return pydicom.dcmread(folder / versions[-1]["file"]), folder / versions[-1]["file"]
            previous = pydicom.dcmread(folder / versions[-1]["file"]) if versions else None
            ds = make(versions[-1]["series_uid"] if versions else None, len(versions) + 1, previous)
            name = f"{len(versions) + 1}.dcm"
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / name, lambda fh: ds.save_as(fh, enforce_file_format=True))
            wl.add_object(study_id, model, kind, len(versions) + 1, name, key, ds)
        return ds, folder / name

    # --- results into the PACS ------------------------------------------------------------------
    def results(self, study_id: str, model_id: str | None) -> list[dict]:
        """The DICOM objects of the current grade, made when first asked for: the SR and the key
        image (``kind``, ``sop_class_uid``, ``sop_instance_uid``, ``url``; ``path`` stays here)."""
        self.ready(study_id)
        out = []
        graded = self.last_result(study_id, model_id)  # checked once: it matches the current inputs
        made = [("sr", self._sr(study_id, *graded)), ("key_image", self.key_image(study_id, *graded))]
        if self.roi_model is not None:
            made.append(("seg", self.seg(study_id, *graded)))
        for kind, (ds, path) in made:
            out.append(
                {
                    "kind": kind,
                    "sop_class_uid": str(ds.SOPClassUID),
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "url": f"/api/studies/{study_id}/results/{ds.SOPInstanceUID}",
                    "path": path,
                }
            )
        return out

    def result_file(self, study_id: str, sop_uid: str) -> Path:
        """A result object this server wrote for the study, by SOP Instance UID (any version)."""
        base = self.store.folder(study_id) / "predictions"
        for v in self.store.worklist.objects(study_id):
            if v["sop_uid"] == sop_uid:
                return base / v["model"] / v["kind"] / v["file"]
        raise NotFound(f"no result {sop_uid!r} in study {study_id}")

    def ready(self, study_id: str) -> None:
        """A study still receiving instances is neither graded nor sent (409)."""
        if self.store.worklist.study(study_id)["status"] == "receiving":
            raise Stale(f"study {study_id} is still receiving instances; it is graded once complete")

    def destination(self) -> str:
        if self.send_to is not None:
            return str(self.send_to)
        if self.pacs is not None:
            return f"STOW-RS {self.pacs.url}"
        raise Unprocessable("no destination configured (start serve with --send AE@HOST:PORT or --pacs URL)")

    def send(self, study_id: str, model_id: str | None, actor: str = "workstation") -> dict:
        """Send the current results (made now if needed) as a job: tried at once; when the
        destination is down the job stays queued and is retried, the study shows ``failed`` with
        the error meanwhile."""
        dest = self.destination()
        made = self.results(study_id, model_id)
        m = self.registry.get(model_id)
        job = self.store.worklist.add_job(study_id, m["id"], dest, [str(r["path"]) for r in made])
        self.store.worklist.log(study_id, actor, "send", f"{len(made)} object(s) to {dest} (job {job})")
        done = self.run_job(job)
        out = {"destination": dest, "sent": done["sent"], "job": job, "status": done["status"]}
        if done.get("error"):
            out["error"] = done["error"]
        return out

    def run_job(self, job_id: int) -> dict:
        """One attempt of a send job; the worklist follows (``sent``, or ``failed`` with the error
        and when the next attempt is)."""
        from ccrcc_grade.serve.sender import RETRY_SECONDS, c_store

        wl = self.store.worklist
        job = wl.job(job_id)
        sid = job["study_id"]
        try:
            datasets = [pydicom.dcmread(p) for p in job["instances"]]
            if job["destination"].startswith("STOW-RS "):
                for ds in datasets:
                    self.need_pacs().store(ds)
                sent = [str(ds.SOPInstanceUID) for ds in datasets]
            else:
                sent = c_store(datasets, self.send_to, self.ae_title)
        except (CcrccError, OSError) as exc:
            attempt = job["attempts"] + 1
            retry = RETRY_SECONDS[attempt - 1] if attempt <= len(RETRY_SECONDS) else None
            why = str(exc).splitlines()[0]
            error = f"sending to {job['destination']} failed: {why}; " + (
                f"attempt {attempt} of {len(RETRY_SECONDS) + 1}, next in {retry:.0f} s"
                if retry is not None
                else "gave up after the last attempt (send again when the destination is back)"
            )
            wl.finish_job(job_id, False, error, retry)
            wl.set_status(sid, "failed", "sender", error=error)
            log.warning("study %s: %s", sid, error)
            return {"sent": [], "status": "queued" if retry is not None else "failed", "error": error}
        wl.finish_job(job_id, True, None, None)
        wl.set_status(sid, "sent", "sender", f"{len(sent)} object(s) to {job['destination']}")
        log.info("study %s: %d result object(s) sent to %s", sid, len(sent), job["destination"])
        return {"sent": sent, "status": "sent"}
