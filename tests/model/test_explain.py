"""ccrcc_grade.model.explain: Grad-CAM."""

from __future__ import annotations

import numpy as np
import torch

from ccrcc_grade.model.predict import predict_patient


def test_gradcam_overlays_heat_inside_the_box(trained_run, slices_cohort, tmp_path):
    from ccrcc_grade.model.explain import box_heatmap, gradcam
    from ccrcc_grade.model.inference import load_model

    pid = torch.load(trained_run / "best.pt", weights_only=True)["splits"]["test"][0]
    r = predict_patient(trained_run / "best.pt", slices_cohort / pid, cam_dir=tmp_path / "cam")
    pngs = sorted(p for p in (tmp_path / "cam").glob("*.png") if not p.name.endswith("_heat.png"))
    assert len(pngs) == len(r["slices"]) and all(s["cam"].endswith(".png") for s in r["slices"])
    assert len(list((tmp_path / "cam").glob("*_heat.png"))) == len(r["slices"])  # the viewer's heat layers
    model, ckpt = load_model(trained_run / "best.pt")
    crops = np.random.default_rng(0).integers(0, 256, (2, 48, 48)).astype(np.uint8)
    cams = gradcam(model, crops, ckpt["preprocess"]["image_size"], ckpt["preprocess"]["normalize"])
    assert cams.shape == (2, 48, 48) and cams.min() >= 0 and cams.max() <= 1
    box = r["slices"][0]["box"]
    heat = box_heatmap((128, 128), tuple(box), np.ones((48, 48)))
    inside = np.zeros((128, 128), bool)
    inside[int(np.floor(box[1])) : int(np.ceil(box[3])), int(np.floor(box[0])) : int(np.ceil(box[2]))] = True
    assert heat[~inside].sum() == 0 and heat[inside].min() > 0.9
