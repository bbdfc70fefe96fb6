"""ccrcc_grade.roi.propagate: boxes of one phase on another - patient coordinates, then a rigid
registration for the motion between acquisitions (the phantom's phases are moved by up to 12 mm)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ccrcc_grade.core.errors import CcrccError
from ccrcc_grade.roi.measure import boxes_centre, true_boxes
from ccrcc_grade.roi.propagate import RegistrationFailed, propagate_boxes
from ccrcc_grade.roi.volume import read_nifti_mask, read_nifti_volume


def _phase(cohort, pid, phase, frame="F"):
    v = read_nifti_volume(cohort / pid / f"{phase}.nii.gz", cohort, frame_uid=frame)
    return v, true_boxes(v, read_nifti_mask(cohort / pid / f"{phase}_mask.nii.gz", v), 1.5)


def test_registration_removes_the_motion_between_phases(nifti_cohort):
    motion = json.loads((nifti_cohort / "synth.json").read_text())["motion"]
    before, after, found = [], [], []
    for pid in sorted(motion)[:6]:
        src, boxes = _phase(nifti_cohort, pid, "parenchymal")
        for ph in ("corticomedullary", "excretory"):
            dst, truth = _phase(nifti_cohort, pid, ph)
            c = boxes_centre(dst, truth)
            b0, i0 = propagate_boxes(boxes, src, dst, register=False)
            b1, i1 = propagate_boxes(boxes, src, dst, register=True)
            assert i0["method"] == "patient coordinates" and i0["moved_mm"] is None
            assert i1["method"] == "patient coordinates + rigid registration" and i1["same_frame_of_reference"]
            before.append(np.linalg.norm((boxes_centre(dst, b0) - c)[:2]))
            after.append(np.linalg.norm((boxes_centre(dst, b1) - c)[:2]))
            # what the registration found is the motion synth applied (plus the kidney's breathing)
            true_move = np.subtract(motion[pid][ph], motion[pid]["parenchymal"])
            found.append(np.linalg.norm(np.array(i1["moved_mm"][:3]) - true_move))
    assert np.median(found) < 3.0
    assert np.median(before) > 3.0  # the phantom moved: coordinates alone miss the tumour
    assert np.median(after) <= 2.0 and np.median(after) < np.median(before) / 2


def test_another_frame_of_reference_is_registration_only_and_says_so(nifti_cohort):
    src, boxes = _phase(nifti_cohort, "SYN002", "parenchymal", "F1")
    dst, truth = _phase(nifti_cohort, "SYN002", "excretory", "F2")
    out, info = propagate_boxes(boxes, src, dst)
    assert info["method"] == "rigid registration only" and not info["same_frame_of_reference"]
    assert "different FrameOfReferenceUID" in info["note"]
    assert np.linalg.norm((boxes_centre(dst, out) - boxes_centre(dst, truth))[:2]) < 4.0
    with pytest.raises(CcrccError, match="another FrameOfReferenceUID"):
        propagate_boxes(boxes, src, dst, register=False)


@pytest.mark.parametrize(
    "case, change, needle",
    [
        ("an empty (air) volume", lambda hu: np.full_like(hu, -1000.0), "did not converge"),
        (
            "noise",
            lambda hu: np.random.default_rng(0).normal(0, 300, hu.shape).astype(np.float32),
            "share no structure",
        ),
    ],
)
def test_registration_that_does_not_converge(nifti_cohort, case, change, needle):
    src, boxes = _phase(nifti_cohort, "SYN003", "parenchymal")
    dst, _ = _phase(nifti_cohort, "SYN003", "plain")
    bad = copy.copy(dst)
    bad.hu = change(dst.hu)
    # same frame: the boxes are placed by the coordinates, and the note says why
    out, info = propagate_boxes(boxes, src, bad)
    assert info["method"] == "patient coordinates" and needle in info["note"] and out
    ref, _ = propagate_boxes(boxes, src, dst, register=False)
    assert {k: b.as_tuple() for k, b in out.items()} == {k: b.as_tuple() for k, b in ref.items()}
    # another frame: nothing can place them - one line, no proposal
    bad.frame_uid = "other"
    with pytest.raises(RegistrationFailed) as e:
        propagate_boxes(boxes, src, bad)
    assert "no proposal" in str(e.value) and "\n" not in str(e.value)
