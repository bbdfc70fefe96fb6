"""A synthetic four-phase renal CT cohort ("phantom") in the documented input format.

SYNTHETIC DATA, NOT PATIENTS. It exists so newcomers can run the whole pipeline without patient
data, and so tests have realistic input. Appearance follows published ccRCC physiology:
  * kidneys: cortex/medulla differentiation in the corticomedullary phase, homogeneous
    nephrogram in the parenchymal phase, contrast in the collecting system when excretory;
  * tumour: low-grade ccRCC enhances avidly (hypervascular), high-grade tumours enhance less,
    are larger, more heterogeneous and more often necrotic; in the plain phase the tumour is
    near kidney attenuation, so the grade signal there is weak;
  * scanner: Gaussian quantum noise softened by a reconstruction kernel, slight patient motion
    between phases.
Boxes (labelme rectangles, boxes.csv) lie 1.5 mm beyond the tumour edge (the study's 1-2 mm) by
ingest's mask-to-box rule, in every layout.

Two difficulty models (``--difficulty``):

``easy`` - the grades barely overlap (every contrast-phase model separates them); for fast tests.

``realistic`` (default) - the grades overlap as they do in published series, and the nuisances
of real cohorts are there. Every parameter is set from the literature below, not tuned against
the results of a model:
  * enhancement: ccRCC enhancement falls with grade but the distributions overlap widely
    (corticomedullary attenuation of low- vs high-grade ccRCC differs by ~30-50 HU with SDs of
    ~35-45 HU; Pierorazio et al., Radiology 2013; Coy et al., AJR 2017; Zhu et al., Eur Radiol
    2021). A patient's vascularity is shared by its phases (one latent z per patient, r ~ 0.65);
  * contrast timing and dose: bolus arrival varies by +-8 s between patients and the iodine
    dose per kg by ~15% (Bae, Radiology 2010): a late corticomedullary scan loses cortex-medulla
    and tumour-peak contrast; the enhancement of every tissue scales with the patient's dose;
  * scanner / centre: three simulated centres with different quantum noise (10-20 HU SD),
    reconstruction kernels (soft to sharp) and calibration offsets (+-6 HU), and pixel sizes
    from 0.6 to 0.85 mm (multi-centre CT variability, Mackin et al., Invest Radiol 2015);
  * size and partial volume: diameters log-normal, median 35 mm (low) vs 48 mm (high), SD 0.4
    in log space (Table 2 of Cui et al. 2025; Delahunt et al., Am J Surg Pathol 2013); 5 mm
    slices blur a tumour's first and last slice into the kidney;
  * necrosis / cystic change: in ~55% of high-grade and ~20% of low-grade ccRCC (Pedrosa et al.,
    RadioGraphics 2008; cystic change is common in low grade);
  * heterogeneity overlapping between grades (texture SD 6-22 vs 10-30 HU);
  * label noise from grading: WHO/ISUP agreement between pathologists is moderate (kappa
    ~0.5-0.6, Bektas et al., Pathol Res Pract 2009), and biopsy/nephrectomy grades disagree near
    the 2/3 boundary: 8% of grade 2-3 tumours appear as the other class.
The resulting range was checked once on a 200-patient cohort (README, "Synthetic data").
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ccrcc_grade.core.config import SynthOptions
from ccrcc_grade.core.errors import CcrccError, check_number
from ccrcc_grade.core.fileio import atomic_write_json
from ccrcc_grade.core.phases import PHASES
from ccrcc_grade.core.progress import progress
from ccrcc_grade.ingest.preprocess import window_to_uint8

# Mean HU per phase: (aorta, cortex, medulla, pelvis, liver, tumour low grade, tumour high grade)
_HU = {
    "plain": dict(aorta=40, cortex=32, medulla=30, pelvis=10, liver=58, low=34, high=36),
    "corticomedullary": dict(aorta=320, cortex=190, medulla=75, pelvis=10, liver=75, low=175, high=110),
    "parenchymal": dict(aorta=170, cortex=165, medulla=160, pelvis=15, liver=110, low=125, high=88),
    "excretory": dict(aorta=120, cortex=135, medulla=140, pelvis=420, liver=95, low=88, high=70),
}
_SERIES = {
    "plain": ("NC 5.0 B30f", 0, ""),
    "corticomedullary": ("CMP 5.0 B30f", 35, "IOPAMIDOL"),
    "parenchymal": ("NP 5.0 B30f", 100, "IOPAMIDOL"),
    "excretory": ("EP 5.0 B30f", 420, "IOPAMIDOL"),
}


DIFFICULTIES = ("realistic", "easy")

# realistic: tumour attenuation (HU) per phase and grade, mean and SD between patients
_TUMOUR_HU = {
    "plain": ((34, 8), (36, 8)),
    "corticomedullary": ((165, 40), (125, 40)),
    "parenchymal": ((122, 30), (98, 30)),
    "excretory": ((86, 22), (74, 22)),
}
# three simulated centres: quantum noise SD (HU), kernel blur (mm), calibration offset (HU)
_CENTRES = ((10.0, 0.45, 0.0), (14.0, 0.30, 6.0), (20.0, 0.70, -5.0))
# and their scanners as the DICOM headers name them: Manufacturer, model, kernel, kVp (made-up
# names: a phantom must not pass for a real vendor's image)
_SCANNERS = (
    ("Phantom Vendor A", "PV-A 64", "SOFT", 120),
    ("Phantom Vendor B", "PV-B 128", "STANDARD", 100),
    ("Phantom Vendor C", "PV-C 16", "SHARP", 120),
)
MAX_CENTRES = len(_CENTRES)


@dataclass
class _Patient:
    pid: str
    label: int
    grade: int
    side: str
    diameter_mm: float
    spacing: float
    slices: int
    tumour_z: float  # tumour centre along z (mm, slice 0 at 0)
    tumour_xy: tuple[float, float]  # centre relative to the kidney centre (mm)
    necrosis: float  # necrotic core radius as a fraction of tumour radius (0 = none)
    texture: float  # heterogeneity (HU SD)
    enh: float  # patient-level enhancement factor
    body: tuple[float, float]  # body semi-axes (mm)
    seed: int
    tumour_hu: dict | None = None  # realistic: the tumour's attenuation per phase (HU)
    timing: float = 0.0  # realistic: bolus timing (-1 early .. +1 late)
    noise_sd: float = 12.0  # HU
    kernel_mm: float = 0.0  # extra reconstruction-kernel blur (mm); 0 = the easy phantom's
    hu_offset: float = 0.0  # scanner calibration offset (HU)
    centre: int = -1  # realistic: index into _CENTRES / _SCANNERS; -1 = the easy phantom's one scanner


def synthetic_patient(
    rng: np.random.Generator, pid: str, label: int, matrix: int, difficulty: str = "easy", centres: int = MAX_CENTRES
) -> _Patient:
    """One phantom patient's parameters (``label`` 1 = high grade as recorded); a realistic
    patient is scanned at one of the first ``centres`` simulated centres."""
    if difficulty == "easy":
        return _make_patient(rng, pid, label, matrix)
    return _make_patient_realistic(rng, pid, label, matrix, centres)


def _make_patient_realistic(
    rng: np.random.Generator, pid: str, label: int, matrix: int, centres: int = MAX_CENTRES
) -> _Patient:
    grade = int(rng.choice([3, 4], p=[0.7, 0.3])) if label else int(rng.choice([1, 2], p=[0.2, 0.8]))
    looks = label
    if grade in (2, 3) and rng.random() < 0.08:  # graded across the 2/3 boundary
        looks = 1 - label
    diameter = float(np.clip(np.exp(rng.normal(np.log(48 if looks else 35), 0.4)), 12, 110))
    site = int(rng.integers(centres))
    centre = _CENTRES[site]
    spacing = float(rng.uniform(0.6, 0.85)) * 512 / matrix
    slices = int(np.ceil(diameter / 5.0)) + 2
    z = rng.normal()  # the patient's vascularity, shared by phases
    dose = float(np.clip(rng.normal(1.0, 0.15), 0.65, 1.4))
    timing = float(np.clip(rng.normal(0, 0.5), -1, 1))
    tumour_hu = {}
    for phase, pair in _TUMOUR_HU.items():
        mean, sd = pair[looks]
        v = mean + sd * (0.8 * z + 0.6 * rng.normal())
        if phase != "plain":
            v = 35 + (v - 35) * dose
        if phase == "corticomedullary":  # late scan: past the arterial peak
            v -= 25 * max(timing, 0)
        tumour_hu[phase] = float(v)
    necrotic = rng.random() < (0.55 if looks else 0.20)
    return _Patient(
        pid=pid,
        label=label,
        grade=grade,
        side=str(rng.choice(["left", "right"])),
        diameter_mm=diameter,
        spacing=spacing,
        slices=slices,
        tumour_z=(slices - 1) * 5.0 / 2 + float(rng.uniform(-1, 1)),
        tumour_xy=(float(rng.uniform(-12, 12)), float(rng.uniform(-15, 15))),
        necrosis=float(rng.uniform(0.25, 0.6)) if necrotic else 0.0,
        texture=float(rng.uniform(10, 30) if looks else rng.uniform(6, 22)),
        enh=dose,
        body=(float(rng.uniform(150, 185)), float(rng.uniform(105, 130))),
        seed=int(rng.integers(2**31)),
        tumour_hu=tumour_hu,
        timing=timing,
        noise_sd=centre[0],
        kernel_mm=centre[1],
        hu_offset=centre[2],
        centre=site,
    )


def _make_patient(rng: np.random.Generator, pid: str, label: int, matrix: int) -> _Patient:
    grade = int(rng.choice([3, 4], p=[0.7, 0.3])) if label else int(rng.choice([1, 2], p=[0.2, 0.8]))
    diameter = float(np.clip(rng.normal(55 if label else 36, 14 if label else 10), 18, 90))
    spacing = float(rng.uniform(0.66, 0.82)) * 512 / matrix  # a ~340-420 mm field of view
    slice_mm = 5.0
    n_tumour = int(np.ceil(diameter / slice_mm))
    slices = n_tumour + 2  # one unannotated slice above and below
    return _Patient(
        pid=pid,
        label=label,
        grade=grade,
        side=str(rng.choice(["left", "right"])),
        diameter_mm=diameter,
        spacing=spacing,
        slices=slices,
        tumour_z=(slices - 1) * slice_mm / 2 + float(rng.uniform(-1, 1)),
        tumour_xy=(float(rng.uniform(-12, 12)), float(rng.uniform(-15, 15))),
        necrosis=float(rng.uniform(0.3, 0.6)) if rng.random() < (0.7 if label else 0.12) else 0.0,
        texture=float(rng.uniform(16, 30) if label else rng.uniform(6, 14)),
        enh=float(np.clip(rng.normal(1.0, 0.12), 0.7, 1.3)),
        body=(float(rng.uniform(150, 185)), float(rng.uniform(105, 130))),
        seed=int(rng.integers(2**31)),
    )


def _render(
    p: _Patient,
    phase: str,
    k: int,
    matrix: int,
    motion: tuple[float, float, float] = (0.0, 0.0, 0.0),
    mask_margin_mm: float | None = None,
    want_mask: bool = False,
) -> tuple:
    """HU image (matrix x matrix) of slice k of one phase, and the tumour's pixel bbox (or None).
    ``motion``: the whole patient moved by (x, y, z) mm in DICOM patient coordinates (LPS) in this
    phase (table motion / breath hold, ``--motion-mm``). ``mask_margin_mm``: the bbox is the
    tumour mask's box grown by this margin (ingest's mask-to-box rule) instead of a drawn 1-2 mm;
    ``want_mask``: also return the tumour mask (boolean image)."""
    hu = dict(_HU[phase])
    if p.tumour_hu is not None and phase != "plain":  # realistic: dose and bolus timing move every tissue
        hu = {k: (v if k == "pelvis" and phase != "excretory" else 35 + (v - 35) * p.enh) for k, v in hu.items()}
        if phase == "corticomedullary" and p.timing > 0:  # late: cortex and medulla converge
            hu["medulla"] += (hu["cortex"] - hu["medulla"]) * 0.6 * p.timing
    prng = np.random.default_rng([p.seed, PHASES.index(phase), k])
    trng = np.random.default_rng([p.seed, 99, k])  # tissue texture: same in every phase
    fov = matrix * p.spacing
    shift = np.random.default_rng([p.seed, PHASES.index(phase)]).normal(0, 1.5, size=2)  # breathing, mm
    c = ((np.arange(matrix) + 0.5) * p.spacing - fov / 2).astype(np.float32)
    x, y = np.meshgrid(c, c)  # mm, x = image column, y = row
    x, y = x - motion[0], y - motion[1]  # the anatomy moved by +motion
    img = np.full((matrix, matrix), -1000.0, dtype=np.float32)
    a, b = p.body
    inside = (x / a) ** 2 + (y / b) ** 2 <= 1
    img[inside] = -100.0  # fat
    img[(x / (a - 12)) ** 2 + (y / (b - 12)) ** 2 <= 1] = 40.0  # muscle / bowel / soft tissue
    img[((x + a * 0.45) / (a * 0.45)) ** 2 + ((y + b * 0.35) / (b * 0.5)) ** 2 <= 1] = hu["liver"]
    img[(x**2 + (y - b * 0.55) ** 2) <= 22**2] = 420.0  # vertebral body
    img[(x**2 + (y - b * 0.55) ** 2) <= 16**2] = 250.0
    img[((x - 8) ** 2 + (y - b * 0.28) ** 2) <= 11**2] = hu["aorta"]
    z = k * 5.0 + motion[2]  # slice k lies at LPS z = -5k: moving the patient by +mz shows anatomy 5k + mz
    bbox = None
    tmask_full = np.zeros((matrix, matrix), bool)
    for side, sx in (("right", -1.0), ("left", 1.0)):  # patient right is image left
        kx, ky = sx * a * 0.42 + shift[0], b * 0.28 + shift[1]
        ax_, ay_ = 30.0, 42.0
        r2 = ((x - kx) / ax_) ** 2 + ((y - ky) / ay_) ** 2
        img[r2 <= 1] = hu["cortex"]
        img[r2 <= 0.55] = hu["medulla"]
        img[((x - kx - sx * 6) / 10) ** 2 + ((y - ky) / 14) ** 2 <= 1] = hu["pelvis"]
        if side != p.side:
            continue
        radius = p.diameter_mm / 2
        dz = z - p.tumour_z
        if abs(dz) >= radius * 0.97:
            continue
        rz = np.sqrt(radius**2 - dz**2)
        tx, ty = kx + sx * 14 + p.tumour_xy[0], ky + p.tumour_xy[1]
        d2 = ((x - tx) ** 2 + (y - ty) ** 2) / rz**2
        # lobulated edge: radius varies with angle
        ang = np.arctan2(y - ty, x - tx)
        lob = 1 + 0.06 * np.sin(3 * ang + p.seed % 7) + 0.04 * np.sin(5 * ang + p.seed % 5)
        if p.tumour_hu is not None:
            base = p.tumour_hu[phase]
        else:
            mean = hu["high" if p.label else "low"]
            base = 35.0 + (mean - 35.0) * p.enh  # enhancement above unenhanced tissue
        tum = d2 <= lob**2
        if not tum.any():
            continue
        rows_i, cols_i = np.nonzero(tum)
        r0, r1, c0, c1 = rows_i.min(), rows_i.max() + 1, cols_i.min(), cols_i.max() + 1
        # texture on the tumour's own patch only (a full-image filter per slice is the slow part)
        tex = gaussian_filter(trng.standard_normal((r1 - r0 + 8, c1 - c0 + 8)), 2.5 / p.spacing)[4:-4, 4:-4]
        tex *= p.texture * 4.5
        patch = img[r0:r1, c0:c1]
        tmask = tum[r0:r1, c0:c1]
        contrast_scale = 0.35 if phase == "plain" else 1.0  # heterogeneity is subtle before contrast
        before = patch.copy()
        patch[tmask] = base + tex[tmask] * contrast_scale
        if p.necrosis > 0:
            nec = d2[r0:r1, c0:c1] <= (p.necrosis * lob[r0:r1, c0:c1]) ** 2
            patch[nec] = 18.0 + tex[nec] * 0.3
        if p.tumour_hu is not None:  # partial volume: a 5 mm slice through the tumour's pole
            w = float(np.clip((radius - abs(dz)) / 2.5, 0.25, 1.0))
            patch[:] = w * patch + (1 - w) * before
        tmask_full[r0:r1, c0:c1] = tmask
        mm = float(np.random.default_rng([p.seed, 7, k]).uniform(1.0, 2.0))  # box margin 1-2 mm
        if mask_margin_mm is not None:  # ingest's mask-to-box rule (io.nifti.mask_boxes)
            mm = mask_margin_mm
        m = mm / p.spacing
        bbox = (float(c0) - m, float(r0) - m, float(c1) + m, float(r1) + m)
    noise = gaussian_filter(prng.standard_normal((matrix, matrix), dtype=np.float32), 0.6) * (p.noise_sd * 2.2)
    img = gaussian_filter(img, 0.5 + p.kernel_mm / p.spacing) + noise * inside + p.hu_offset
    if want_mask:
        return img.astype(np.float32), bbox, tmask_full
    return img.astype(np.float32), bbox


def _clinical_row(rng: np.random.Generator, p: _Patient) -> dict:
    return {
        "patient_id": p.pid,
        "who_isup_grade": p.grade,
        "sex": "M" if rng.random() < (0.70 if p.label else 0.62) else "F",
        "age": int(np.clip(rng.normal(60 if p.label else 56, 10), 25, 88)),
        "side": p.side,
        "bmi": round(float(np.clip(rng.normal(24.5, 3.2), 16, 40)), 1),
        "hypertension": int(rng.random() < 0.35),
        "diabetes": int(rng.random() < 0.12),
        "tumor_size_cm": round(p.diameter_mm / 10, 1),
        "center": "SYNTH" if p.centre < 0 else f"SYNTH-{p.centre + 1}",
    }


def _labelme(image_name: str, w: int, h: int, bbox: tuple) -> dict:
    x0, y0, x1, y1 = bbox
    return {
        "version": "5.2.1",
        "flags": {},
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
        "shapes": [
            {
                "label": "tumor",
                "points": [[round(x0, 2), round(y0, 2)], [round(x1, 2), round(y1, 2)]],
                "group_id": None,
                "description": "",
                "shape_type": "rectangle",
                "flags": {},
            }
        ],
    }


def write_dicom_slice(path: Path, hu: np.ndarray, p: _Patient, phase: str, k: int, uids: dict) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    desc, delay, agent = _SERIES[phase]
    sop = generate_uid(entropy_srcs=[p.pid, phase, str(k), "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality, ds.PatientID, ds.PatientName = "CT", p.pid, "SYNTHETIC^PHANTOM"
    # the CT Image IOD's type 2 attributes (present, empty where a phantom has no value), so that
    # dciodvfy finds no error in what synth writes
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20250101", "090000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.PositionReferenceIndicator, ds.PatientPosition = "", "HFS"
    if p.centre < 0:
        ds.Manufacturer, ds.KVP = "ccrcc-grade synth (phantom)", 120
    else:
        ds.Manufacturer, ds.ManufacturerModelName, ds.ConvolutionKernel, ds.KVP = _SCANNERS[p.centre]
        ds.InstitutionName = f"SYNTH-{p.centre + 1}"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids[phase]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.SeriesNumber = PHASES.index(phase) + 1
    ds.InstanceNumber = k + 1
    ds.SeriesDescription = desc
    ds.ProtocolName = "RENAL 4-PHASE"
    ds.BodyPartExamined = "ABDOMEN"
    if agent:
        ds.ContrastBolusAgent = agent
    t = 9 * 3600 + delay  # seconds since midnight; the plain scan at 09:00:00
    ds.AcquisitionTime = f"{t // 3600:02d}{(t // 60) % 60:02d}{t % 60:02d}.000000"
    ds.SeriesTime = ds.AcquisitionTime
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    n = hu.shape[0]
    corner = round(-n * p.spacing / 2, 4)  # a DS value holds at most 16 characters
    ds.ImagePositionPatient = [corner, corner, -(k * 5.0)]  # head-first: z decreases
    ds.SliceThickness = 5.0
    ds.PixelSpacing = [round(p.spacing, 6), round(p.spacing, 6)]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 290
    ds.PixelData = np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_cohort(
    out: Path | str,
    patients: int = SynthOptions.patients,
    high_fraction: float = SynthOptions.high_fraction,
    layout: str = SynthOptions.layout,
    seed: int = SynthOptions.seed,
    matrix: int = SynthOptions.matrix,
    phases: tuple[str, ...] = PHASES,
    difficulty: str = SynthOptions.difficulty,
    workers: int = SynthOptions.workers,
    readers: int = SynthOptions.readers,
    motion_mm: float = SynthOptions.motion_mm,
    mask_margin_mm: float = SynthOptions.mask_margin_mm,
    centres: int = SynthOptions.centers,
) -> Path:
    """Write a synthetic cohort to ``out`` and return its path. Deterministic for a seed.
    ``difficulty``: realistic (grades overlap as in published series) or easy (fast tests);
    ``workers``: processes rendering patients at once (the cohort is the same for any number);
    ``readers``: > 1 also writes ``readerN_boxes.csv`` (N = 2..), the boxes of further readers of the
    same slices (see ``second_reader_rows``); ``motion_mm``: each phase of a patient moved by a
    random rigid shift of up to this length (table motion, breath hold), recorded in ``synth.json``.
    Layouts: slices (PNG/BMP + labelme), dicom (+ boxes.csv), nifti (``<phase>.nii.gz`` and
    ``<phase>_mask.nii.gz``, the true tumour). Every layout's boxes follow ingest's mask-to-box
    rule (the tumour mask's box grown by ``mask_margin_mm``, the study's 1-2 mm), so the layouts
    hold the same boxes and proposals compare like with like; readers' disagreement is
    ``second_reader_rows``. ``centres``: the realistic phantom's patients are scanned at this many
    simulated centres (1-3: quantum noise, kernel, HU offset and scanner differ; clinical.csv's
    ``center`` and the DICOM headers name them)."""
    out = Path(out)
    if not 1 <= centres <= MAX_CENTRES:
        raise CcrccError(f"--centers must be 1-{MAX_CENTRES}, got {centres}")
    if difficulty not in DIFFICULTIES:
        raise CcrccError(f"--difficulty must be {' or '.join(DIFFICULTIES)}, got {difficulty!r}")
    if layout not in SYNTH_LAYOUTS:
        raise CcrccError(f"--layout must be {', '.join(SYNTH_LAYOUTS)}, got {layout!r}")
    check_number(motion_mm, "--motion-mm", 0, 50)
    check_number(mask_margin_mm, "--mask-margin-mm", 0, 20)
    if patients < 2 or not 0 < high_fraction < 1:
        raise CcrccError("synth needs >= 2 patients and 0 < --high-fraction < 1")
    if not 1 <= readers <= 5:
        raise CcrccError(f"--readers must be 1-5, got {readers}")
    if not 64 <= matrix <= 1024:
        raise CcrccError(f"--matrix must be between 64 and 1024, got {matrix}")
    if out.exists() and any(out.iterdir()):
        raise CcrccError(f"{out}: output folder exists and is not empty")
    rng = np.random.default_rng(seed)
    n_high = max(1, min(patients - 1, int(round(patients * high_fraction))))
    labels = np.array([1] * n_high + [0] * (patients - n_high))
    rng.shuffle(labels)
    out.mkdir(parents=True, exist_ok=True)

    pats = []
    rows = []
    for i in range(patients):  # parameters drawn in order from one generator: the cohort does not depend on workers
        p = synthetic_patient(rng, f"SYN{i + 1:03d}", int(labels[i]), matrix, difficulty, centres)
        rows.append(_clinical_row(rng, p))
        pats.append(p)
    motions = {}
    if motion_mm > 0:  # room above and below for a tumour moved along z
        extra = int(np.ceil(motion_mm / 5.0))
        mrng = np.random.default_rng([seed, 77])
        for p in pats:
            p.slices += 2 * extra
            p.tumour_z += extra * 5.0
            motions[p.pid] = {ph: _random_shift(mrng, motion_mm) for ph in phases}
    jobs = [(p, i, out, phases, layout, matrix, motions.get(p.pid), mask_margin_mm) for i, p in enumerate(pats)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            done = list(progress(pool.map(_write_patient, jobs), total=len(jobs), desc="synth", unit="patient"))
    else:
        done = [_write_patient(j) for j in progress(jobs, desc="synth", unit="patient")]
    box_rows = [r for d in done for r in d]
    _write_csv(out / "clinical.csv", rows)
    if layout == "dicom":
        _write_csv(out / "boxes.csv", [{c: r[c] for c in BOX_COLUMNS} for r in box_rows])
    if layout == "nifti":
        _write_csv(out / "true_boxes.csv", box_rows)  # the truth per slice, for measuring proposals
    atomic_write_json(
        out / "synth.json",
        {
            "synthetic": True,
            "layout": layout,
            "patients": patients,
            "seed": seed,
            "matrix": matrix,
            "difficulty": difficulty,
            "centers": centres if difficulty == "realistic" else 1,
            "mask_margin_mm": mask_margin_mm if layout != "slices" else None,
            "motion_mm": motion_mm,
            # per patient and phase: how far the patient was moved (x, y, z mm, DICOM LPS)
            "motion": motions,
        },
    )
    for n in range(2, readers + 1):
        _write_csv(out / f"reader{n}_boxes.csv", second_reader_rows(box_rows, np.random.default_rng([seed, n]), matrix))
    (out / "README.txt").write_text(
        "SYNTHETIC PHANTOM COHORT made by `ccrcc-grade synth` - not patient data.\n"
        f"patients={patients} high_fraction={high_fraction} layout={layout} seed={seed} matrix={matrix} "
        f"difficulty={difficulty}\n"
    )
    return out


def _write_patient(job: tuple) -> list[dict]:
    """Render and write every slice of one patient (a process of its own with --workers);
    returns its boxes.csv rows (DICOM layout)."""
    p, i, out, phases, layout, matrix, motion, mask_margin_mm = job
    uids = {key: _uid(p.pid, key) for key in ("study", "frame", *phases)}
    box_rows = []
    for phase in phases:
        folder = out / p.pid if layout == "nifti" else out / p.pid / phase
        folder.mkdir(parents=True, exist_ok=layout == "nifti")
        order = np.random.default_rng([p.seed, 3]).permutation(p.slices)
        shift = tuple(motion[phase]) if motion else (0.0, 0.0, 0.0)
        margin = mask_margin_mm  # every layout's truth: the mask's box by ingest's rule
        vol, masks = [], []
        for k in range(p.slices):
            hu, bbox, tmask = _render(p, phase, k, matrix, shift, mask_margin_mm=margin, want_mask=True)
            if layout == "nifti":
                vol.append(hu)
                masks.append(tmask)
                name = f"{phase}.nii.gz#z{p.slices - 1 - k:04d}"
            elif layout == "slices":
                ext = ".bmp" if i % 4 == 3 else ".png"  # PACS exports are often BMP
                name = f"{p.pid}_{phase}_{k + 1:03d}{ext}"
                Image.fromarray(window_to_uint8(hu, 40, 290)).save(folder / name)
                if bbox is not None:
                    (folder / (Path(name).stem + ".json")).write_text(
                        json.dumps(_labelme(name, matrix, matrix, bbox), indent=1)
                    )
            else:
                name = f"IM{int(order[k]):04d}_{uids[phase][-6:]}.dcm"  # file names not in slice order
                write_dicom_slice(folder / name, hu, p, phase, k, uids)
            if bbox is not None:
                box_rows.append(
                    {
                        "patient_id": p.pid,
                        "phase": phase,
                        "file": f"{p.pid}/{name}" if layout == "nifti" else f"{p.pid}/{phase}/{name}",
                        "x_min": round(bbox[0], 2),
                        "y_min": round(bbox[1], 2),
                        "x_max": round(bbox[2], 2),
                        "y_max": round(bbox[3], 2),
                        "spacing": 1.0 if layout == "slices" else p.spacing,  # mm per pixel (slices: pixels)
                        "slice": k,  # anatomical order (DICOM file names are shuffled)
                    }
                )
        if layout == "nifti":
            _write_nifti(folder, phase, np.stack(vol), np.stack(masks), p.spacing)
    return box_rows


SYNTH_LAYOUTS = ("slices", "dicom", "nifti")


def _random_shift(rng: np.random.Generator, length_mm: float) -> list[float]:
    """A rigid shift (x, y, z mm) in a random direction, of length uniform in [0, length_mm]."""
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    return [round(float(v), 3) for v in d * rng.uniform(0, length_mm)]


def _write_nifti(folder: Path, phase: str, hu: np.ndarray, mask: np.ndarray, spacing: float) -> None:
    """``<phase>.nii.gz`` (int16 HU) and ``<phase>_mask.nii.gz`` from display-oriented slices
    (k = 0 the most cranial, rows anterior -> posterior, columns right -> left), with the affine of
    the DICOM layout's geometry: the same patient coordinates in both layouts."""
    import nibabel as nib

    n, rows, cols = hu.shape
    # RAS+ array [i, j, kz]: i = cols-1-col (x to the right... patient left is +x), j = rows-1-row, kz = n-1-k
    data = np.transpose(hu[::-1, ::-1, ::-1], (2, 1, 0))
    seg = np.transpose(mask[::-1, ::-1, ::-1], (2, 1, 0))
    corner = round(-rows * spacing / 2, 4)
    aff = np.diag([spacing, spacing, 5.0, 1.0])
    # LPS x of column c is corner + c * spacing; RAS x = -LPS x; i = cols - 1 - c
    aff[0, 3] = -corner - (cols - 1) * spacing
    aff[1, 3] = -corner - (rows - 1) * spacing
    aff[2, 3] = -(n - 1) * 5.0  # LPS z of slice k is -5k; kz = n-1-k
    for arr, name, dtype in ((data, f"{phase}.nii.gz", np.int16), (seg, f"{phase}_mask.nii.gz", np.uint8)):
        img = nib.Nifti1Image(
            np.clip(np.rint(arr), -1024, 3071).astype(dtype) if dtype == np.int16 else arr.astype(dtype), aff
        )
        img.header.set_xyzt_units("mm")
        nib.save(img, str(folder / name))


BOX_COLUMNS = ("patient_id", "phase", "file", "x_min", "y_min", "x_max", "y_max")  # boxes.csv
READER_SIDE_SD_MM = 1.0  # per-side disagreement of two readers following the same rule
READER_BIAS_SD_MM = 0.5  # a reader's habit: some draw a little wider than others, per patient
READER_END_SLICE_MISS = 0.25  # chance that a reader leaves out the first or last slice of a tumour


def second_reader_rows(rows: list[dict], rng: np.random.Generator, matrix: int) -> list[dict]:
    """Another reader's boxes of the same slices, perturbed as readers disagree: each side moved by
    a per-patient habit (N(0, 0.5 mm), outward) plus independent noise (N(0, 1 mm)), and the first
    or last boxed slice of a tumour (where it is a sliver) left out now and then. Box-size
    agreement between radiologists is reported at ICC 0.85-0.98 (e.g. Zhao et al., Radiology 2009
    for lesion diameters; the study: > 0.9), and end slices are where slice ranges differ."""
    by_series: dict[tuple, list[dict]] = {}
    for r in rows:
        by_series.setdefault((r["patient_id"], r["phase"]), []).append(r)
    habit = {pid: rng.normal(0, READER_BIAS_SD_MM) for pid in sorted({r["patient_id"] for r in rows})}
    out = []
    for (pid, _), series in by_series.items():
        series = sorted(series, key=lambda r: r["slice"])  # the tumour's first and last slices
        drop = set()
        if len(series) > 3:
            for end in (0, len(series) - 1):
                if rng.random() < READER_END_SLICE_MISS:
                    drop.add(end)
        for i, r in enumerate(series):
            noise = rng.normal(habit[pid], READER_SIDE_SD_MM, 4) / r["spacing"]  # mm -> pixels, outward
            if i in drop:
                continue
            x0, y0 = max(0.0, r["x_min"] - noise[0]), max(0.0, r["y_min"] - noise[1])
            x1, y1 = min(matrix - 1.0, r["x_max"] + noise[2]), min(matrix - 1.0, r["y_max"] + noise[3])
            if x1 - x0 < 2 or y1 - y0 < 2:
                x0, y0, x1, y1 = r["x_min"], r["y_min"], r["x_max"], r["y_max"]
            out.append(
                {
                    "patient_id": pid,
                    "phase": r["phase"],
                    "file": r["file"],
                    "x_min": round(x0, 2),
                    "y_min": round(y0, 2),
                    "x_max": round(x1, 2),
                    "y_max": round(y1, 2),
                }
            )
    return out


def _uid(pid: str, key: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[pid, key])


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
