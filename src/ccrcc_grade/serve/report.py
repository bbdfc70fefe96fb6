"""The printable one-page report of a grade (HTML; the browser prints it to PDF). Every value from
the study or the model card is escaped: nothing from DICOM or a file reaches the page as markup."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ccrcc_grade.core.threshold import decision_digits
from ccrcc_grade.model.card import trust_statement

BANNER = (
    ("Patient", "name"),
    ("ID", "patient_id"),
    ("Born", "birth_date"),
    ("Sex", "sex"),
    ("Study date", "study_date"),
    ("Accession", "accession"),
    ("Study", "study_description"),
)


def dicom_date(value: str) -> str:
    """YYYYMMDD as YYYY-MM-DD (anything else as it is)."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def banner_value(key: str, value: str) -> str:
    """A banner field as people read it: dates with dashes, DICOM name components with spaces."""
    return dicom_date(value) if "date" in key else value.replace("^", " ").strip()


def report_html(
    result: dict, card: dict, cam_dir: Path, patient: dict | None = None, signoff: dict | None = None
) -> str:
    """A printable one-page report (the browser prints it to PDF): the patient banner from the
    DICOM, the grade with its trust statement, the boxes and the sign-off."""
    e = html.escape
    patient = patient or {}
    banner = " &middot; ".join(
        f"{label} <b>{e(banner_value(key, patient[key]))}</b>" for label, key in BANNER if patient.get(key)
    )
    trust = trust_statement(card)
    trust_html = f"<p id='trust'>{e(trust['text'])}</p>" + (
        f"<p class='danger' id='trust-warning'>{e(trust['warning'][0].upper() + trust['warning'][1:])}.</p>"
        if trust["warning"]
        else ""
    )
    signed = (
        f"<p id='signoff'>Reviewed and signed by <b>{e(signoff['observer'])}</b> at {e(signoff['time'])}.</p>"
        if signoff
        else "<p id='signoff'>Not signed off: the result is unverified until a clinician confirms it.</p>"
    )
    rows = []
    for s in result["slices"]:
        img = ""
        cam = cam_dir / Path(s.get("cam_url", "")).name if s.get("cam_url") else None
        if cam is not None and cam.is_file():
            img = f"<img src='data:image/png;base64,{base64.b64encode(cam.read_bytes()).decode()}' width='220'>"
        rows.append(
            f"<tr><td>{e(s['source'])}</td><td>{', '.join(f'{v:.0f}' for v in s['box'])}</td>"
            f"<td>{s['prob_high']:.3f}</td><td>{img}</td></tr>"
        )
    test = card.get("test") or {}
    auc = (
        f"{test['auc']:.3f} (95% CI {test['ci95'][0]:.3f}-{test['ci95'][1]:.3f}, n={test['n']})"
        if test.get("auc") is not None
        else "not evaluated"
    )
    css = (
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}"
        ".grade{font-size:1.4em;font-weight:600;margin:.6em 0}.warn{background:#fff4d6;padding:.5em;"
        ".danger{background:#b3261e;color:#fff;padding:.5em;font-weight:600}"
        ".banner{background:#1f3a5f;color:#fff;padding:.5em}"
        "border-left:4px solid #e0a000}@media print{.print{display:none}}"
    )
    title = f"ccrcc-grade report {e(result['patient_id'])}"
    digits = max(3, decision_digits(result["prob_high"], result["threshold"]))  # never contradicts the decision
    b = result.get("box_robustness")
    robust = (
        f"<p id='robustness'>{e(b['text'])}: how much the grade depends on where "
        f"exactly the boxes were drawn ({e(b['method'])}).</p>"
        if b
        else ""
    )
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>
<style>{css}</style></head><body>
<p class='banner' id='patient'>{banner or "no patient data in the DICOM"}</p>
<h1>Predicted WHO/ISUP grade of clear cell RCC</h1>
<p class='warn'><b>{e(card["disclaimer"][0].upper() + card["disclaimer"][1:])}.</b> The result is unverified until
a clinician confirms it. {e(card["intended_use"])}</p>
<p>Study {e(result["patient_id"])} - phase {e(result["phase"])} - {len(result["slices"])} boxed slices</p>
<p class='grade'>{e(result["decision"])}</p>
<p>Patient probability of high grade (III-IV): {result["prob_high"]:.{digits}f} (mean of the slices).
Threshold: {e(result["threshold_policy"]["source"])} ({result["threshold"]:.{digits}f}).</p>
{robust}
{trust_html}
{signed}
<h2>Slices</h2><table><tr><th>Slice</th><th>Box (x0, y0, x1, y1)</th><th>P(high)</th><th>Grad-CAM</th></tr>
{"".join(rows)}</table>
<h2>Model</h2><p>{e(str(card["architecture"]))} on the {e(str(card["phase"]))} phase, trained {e(str(card["trained"]))};
{card["data"]["train_patients"]} training, {card["data"]["validation_patients"]} validation and
{card["data"]["test_patients"]} test patients; test patient AUC {e(auc)}.</p>
<p class='print'>Print or save as PDF with the browser's print command (Ctrl+P / Cmd+P).</p>
</body></html>"""
