"""The report's closing checklists, filled from what the run knows: TRIPOD+AI (Collins et al.,
BMJ 2024;385:e078378; its 27 items) and CLAIM 2024 (Tejani et al., Radiol Artif Intell
2024;6:e240300; listed by topic in the checklist's order). Each row links to the report section
that answers it, or says why it does not apply or what the authors must add (what software
cannot know: ethics approval, funding, registration, patient involvement)."""

from __future__ import annotations

AUTHORS = "to be added by the authors (the software cannot know it)"


def _have(results: dict, key: str) -> bool:
    return bool(results.get(key))


def _centres(results: dict) -> list[str]:
    best = results.get("best_phase")
    run = (results.get("runs") or {}).get(f"resnet34-{best}", {})
    return sorted(((run.get("test") or {}).get("subgroups") or {}).get("center", {}))


def tripod_ai(results: dict) -> list[tuple[str, str, str]]:
    """(item, topic, where or why) for TRIPOD+AI's 27 items."""
    st = results.get("study", {})
    synthetic = " (synthetic phantom: the numbers show the software working)" if st.get("synthetic") else ""
    external = any("external" in r for r in (results.get("runs") or {}).values())
    centres = _centres(results)
    multi = f"{len(centres)} centres: [results by centre](#subgroups)" if len(centres) > 1 else "one centre"
    return [
        ("1", "Title", "[report title](#summary): development and internal validation of a prediction model"),
        ("2", "Abstract", "[Summary](#summary)" + synthetic),
        ("3", "Background", "the study's aim (preoperative WHO/ISUP grade from CT); " + AUTHORS + " for the paper"),
        ("4", "Objectives", "[Summary](#summary): low (I-II) vs high (III-IV) grade from boxed CT phases"),
        ("5", "Data sources", f"[Dataset](#dataset), cohort `{st.get('cohort', '?')}`; dates: " + AUTHORS),
        ("6", "Participants", f"[Dataset](#dataset), [Table 2](#table-2); setting: {multi}"),
        ("7", "Data preparation", "[Statistical methods](#methods); crops of the boxes, HU window, resize"),
        ("8", "Outcome", "WHO/ISUP grade from pathology, dichotomised; [Table 2](#table-2)"),
        ("9", "Predictors", "box crops per phase; clinical variables in [Table 2](#table-2)"),
        ("10", "Sample size", "[Sample size](#sample-size): Riley et al.'s criteria at this prevalence and AUC"),
        ("11", "Missing data", "[TRIPOD+AI summary](#tripod): missing phases and their handling"),
        ("12", "Analytical methods", "[Statistical methods](#methods), [Model comparison](#models)"),
        ("13", "Class imbalance", "class-weighted loss (inverse frequency); stratified splits; [methods](#methods)"),
        ("14", "Fairness", f"performance by centre, scanner and tumour size: [subgroups](#subgroups); {multi}"),
        ("15", "Model output", "probability of high grade per patient (mean of its slices), threshold 0.5"),
        ("16", "Training vs evaluation", "same preprocessing (stored with the model); test patients never choose"),
        ("17", "Ethical approval", AUTHORS),
        ("18", "Open science", "code: this software (Apache-2.0); funding, conflicts, protocol: " + AUTHORS),
        ("19", "Patient and public involvement", AUTHORS),
        ("20", "Participants (results)", "[Dataset](#dataset), [Table 2](#table-2)"),
        ("21", "Model development", "[Table 3](#table-3), [Model comparison](#models)"),
        ("22", "Model specification", "the run folders (best.pt with its config, ONNX via `export`)"),
        (
            "23",
            "Model performance",
            "[Table 3](#table-3) with CIs; subgroups and heterogeneity [by centre](#subgroups)"
            + ("; external validation in [Table 3](#table-3)" if external else "; no external validation"),
        ),
        ("24", "Model updating", "`ccrcc-grade recalibrate` for a new site (not part of this run)"),
        ("25", "Interpretation", "[Summary](#summary); " + AUTHORS + " for the discussion"),
        ("26", "Limitations", "[Limitations](#limitations)"),
        ("27", "Usability in current care", "research software, not a medical device; the workstation (`serve`)"),
    ]


def claim_2024(results: dict) -> list[tuple[str, str, str]]:
    """(section, topic, where or why) for the topics of CLAIM 2024, in its order."""
    st = results.get("study", {})
    has_agreement = _have(results, "agreement")
    has_robustness = _have(results, "box_robustness")
    external = any("external" in r for r in (results.get("runs") or {}).values())
    return [
        ("Title/abstract", "AI method named; structured summary", "[Summary](#summary)"),
        ("Introduction", "Clinical role of the AI; objectives", "[Summary](#summary); " + AUTHORS),
        ("Methods: design", "Retrospective; model creation and internal validation", "[Dataset](#dataset)"),
        ("Methods: data", "Data sources, eligibility", f"[Dataset](#dataset); cohort `{st.get('cohort', '?')}`"),
        ("Methods: data", "Preprocessing; data subsets", "[Statistical methods](#methods); crops of every box"),
        ("Methods: data", "De-identification", "DICOM exports de-identified by `serve` (PS3.15); source: " + AUTHORS),
        ("Methods: data", "Missing data", "[TRIPOD+AI summary](#tripod)"),
        ("Methods: data", "Image acquisition", "scanner, kernel, slice thickness per patient: [subgroups](#subgroups)"),
        ("Methods: ground truth", "Reference standard and rationale", "pathological WHO/ISUP grade"),
        (
            "Methods: ground truth",
            "Annotations, annotators, tools, variability",
            "tumour boxes; [Reader agreement](#agreement)" if has_agreement else "tumour boxes; one reader: " + AUTHORS,
        ),
        ("Methods: partitions", "Partitions, level, proportions", f"patient-level split {st.get('ratios', '8:1:1')}"),
        ("Methods: model", "Architecture, libraries, initialisation", "ResNet34 / SE-ResNet34 (timm, PyTorch)"),
        (
            "Methods: training",
            "Training details, model selection",
            "[Statistical methods](#methods); best epoch on validation patient AUC",
        ),
        ("Methods: training", "Ensembling", "fusion of phases: [Model comparison](#models)"),
        ("Methods: evaluation", "Metrics, uncertainty, statistical tests", "[Statistical methods](#methods)"),
        (
            "Methods: evaluation",
            "Robustness or sensitivity analysis",
            "[Robustness to the box](#robustness)" if has_robustness else "not run (study --no-evidence)",
        ),
        ("Methods: evaluation", "Explainability", "Grad-CAM per slice (`predict --cam`, the workstation)"),
        ("Methods: evaluation", "External evaluation", "[Table 3](#table-3)" if external else "none in this run"),
        ("Methods: evaluation", "Sample size", "[Sample size](#sample-size)"),
        (
            "Results: data",
            "Flow of participants; characteristics per partition",
            "[Dataset](#dataset), [Table 2](#table-2)",
        ),
        ("Results: performance", "Performance with CIs; subgroups", "[Table 3](#table-3), [subgroups](#subgroups)"),
        ("Results: performance", "Failure analysis", "misclassified patients in each run's eval-test/predictions"),
        ("Discussion", "Limitations; implications", "[Limitations](#limitations); " + AUTHORS),
        ("Other", "Registration, protocol, funding", AUTHORS),
        (
            "Other",
            "Code, model and data availability",
            "code and models: this software's run folders; data: " + AUTHORS,
        ),
    ]


def checklist_md(rows: list[tuple[str, str, str]], first: str) -> list[str]:
    return [f"| {first} | Topic | Where in this report / status |", "|---|---|---|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in rows
    ]
