// ccrcc-grade workstation page: plain JavaScript and a canvas; every action goes through the REST API.
// Every string from DICOM, the PACS, file names or the user reaches the page as text (el() and
// textContent), never as HTML: the page has no innerHTML, and its Content-Security-Policy forbids
// inline script, so a header such as <img src=x onerror=...> shows as the characters it is.
"use strict";

const PHASES = ["plain", "corticomedullary", "parenchymal", "excretory"];
const $ = (id) => document.getElementById(id);

// el("td", {className: "x", dataset: {uid}}, "text", child...): an element built from text nodes
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const state = {
  token: sessionStorage.getItem("ccrcc-token"),
  study: null, boxes: [], models: [], result: null,
  series: 0, k: 0, window: [40, 290], images: new Map(), selected: -1, drag: null,
};

// ---------------------------------------------------------------- API
async function api(method, url, body, raw) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(url, { method, headers, body: payload });
  if (res.status === 401) {
    const t = prompt("This workstation needs its access token:");
    if (t) { state.token = t; sessionStorage.setItem("ccrcc-token", t); return api(method, url, body, raw); }
  }
  if (!res.ok) {
    let detail = res.status + " " + res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return raw ? res.blob() : res.json();
}

function say(text, ok) {
  $("message").textContent = text || "";
  $("message").style.color = ok ? "#1b6e2c" : "#b00";
}

async function guarded(fn) {
  try { say(""); await fn(); } catch (e) { say(e.message); }
}

// ---------------------------------------------------------------- loading
async function init() {
  const cfg = await api("GET", "/api/config");
  $("pacs").hidden = !cfg.pacs;
  $("sr-store").hidden = !cfg.pacs;
  state.models = await api("GET", "/api/models");
  $("model").replaceChildren(...state.models.map((m) => el("option", { value: m.id }, `${m.id} (${m.model}, ${m.phase})`)));
  showCard();
  const m = location.hash.match(/study=([0-9a-f]{16})/);
  if (m) await guarded(() => loadStudy(m[1]));
}

async function upload(fileList) {
  const form = new FormData();
  for (const f of fileList) form.append("files", f, f.name);
  say("uploading " + fileList.length + " file(s)...", true);
  const s = await api("POST", "/api/studies", form);
  await loadStudy(s.study_id);
  say("study loaded", true);
}

async function loadStudy(id) {
  state.study = await api("GET", "/api/studies/" + id);
  state.boxes = await api("GET", `/api/studies/${id}/boxes`);
  state.result = null;
  location.hash = "study=" + id;
  $("study-line").textContent = `Study ${id}: ${state.study.series.length} series` +
    (state.study.notes && state.study.notes.length ? ` (${state.study.notes.join("; ")})` : "");
  renderSeries();
  const phase = currentModel().phase;
  const idx = state.study.series.findIndex((s) => s.phase === phase);
  showSeries(idx >= 0 ? idx : 0);
  renderResult();
}

// ---------------------------------------------------------------- series and phases
function renderSeries() {
  const rows = state.study.series.map((s) => {
    const sel = el("select", { className: "phase", dataset: { uid: s.series_uid } },
      el("option", { value: "" }, "ambiguous / none"),
      ...PHASES.map((p) => el("option", { value: p, selected: s.phase === p }, p)));
    sel.addEventListener("change", () => guarded(async () => {
      sel.blur();  // arrow keys meant for the slices must never relabel a phase
      const derived = s.problem && sel.value &&
        confirm(`${s.description || s.series_uid}: ${s.problem}. Grade it anyway? The result will say so.`);
      if (s.problem && sel.value && !derived) { renderSeries(); return; }
      const q = derived ? "?allow_derived=true" : "";
      const r = await api("PUT", `/api/studies/${state.study.study_id}/phases${q}`, { [sel.dataset.uid]: sel.value || null });
      r.series.forEach((x, i) => { Object.assign(state.study.series[i], x); });
      renderSeries();
    }));
    return el("tr", { title: s.phase_reason || "" },
      el("td", { className: s.phase ? "" : "ambiguous" }, s.description || s.series_uid,
        s.phase ? "" : (s.problem ? " (not an original axial series)" : " (ambiguous)")),
      el("td", {}, s.slices), el("td", {}, sel));
  });
  document.querySelector("#series tbody").replaceChildren(...rows);
  renderViewSelect();
  $("grade").disabled = false;
}

function renderViewSelect() {
  $("view-series").replaceChildren(...state.study.series.map((s, i) =>
    el("option", { value: i, selected: i === state.series }, `${s.phase || "unassigned"}: ${s.description || s.series_uid}`)));
}

function showSeries(i) {
  state.series = i;
  state.k = Math.floor(state.study.series[i].slices / 2);
  const firstBox = state.boxes.find((b) => series().sop_instance_uids.includes(b.sop_instance_uid));
  if (firstBox) state.k = series().sop_instance_uids.indexOf(firstBox.sop_instance_uid);
  renderViewSelect();
  draw();
}

const series = () => state.study.series[state.series];
const currentModel = () => state.models.find((m) => m.id === $("model").value) || state.models[0];

// ---------------------------------------------------------------- geometry
// Slices come in their stored orientation (boxes live in its pixel coordinates, as in boxes.csv);
// the canvas shows them the radiological way round with the series' flips.
function geometry() {
  const s = series();
  const scale = Math.min(canvas.width / s.columns, canvas.height / s.rows);
  const ox = (canvas.width - s.columns * scale) / 2, oy = (canvas.height - s.rows * scale) / 2;
  const [fr, fc] = s.flip;
  const toCanvas = (x, y) => [ox + (fc ? s.columns - x : x) * scale, oy + (fr ? s.rows - y : y) * scale];
  const toImage = (cx, cy) => {
    const dx = Math.min(Math.max((cx - ox) / scale, 0), s.columns), dy = Math.min(Math.max((cy - oy) / scale, 0), s.rows);
    return [fc ? s.columns - dx : dx, fr ? s.rows - dy : dy];
  };
  return { s, scale, ox, oy, fr, fc, toCanvas, toImage };
}

function boxRect(b) {   // canvas rectangle [x0, y0, x1, y1] of a stored box
  const { toCanvas } = geometry();
  const [ax, ay] = toCanvas(b.x_min, b.y_min), [bx, by] = toCanvas(b.x_max, b.y_max);
  return [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];
}

const sliceBoxes = () => state.boxes.map((b, i) => [b, i]).filter(([b]) => b.sop_instance_uid === series().sop_instance_uids[state.k]);

// ---------------------------------------------------------------- drawing
function image(url) {
  if (!state.images.has(url)) {
    const img = new Image();
    state.images.set(url, img);
    api("GET", url, undefined, true).then((blob) => { img.src = URL.createObjectURL(blob); img.onload = draw; })
      .catch((e) => say(e.message));
  }
  return state.images.get(url);
}

function draw() {
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.study) return;
  const g = geometry();
  const [level, width] = state.window;
  const img = image(`/api/studies/${state.study.study_id}/series/${g.s.series_uid}/slices/${state.k}.png?level=${level}&width=${width}`);
  const layers = [img];
  const sop = g.s.sop_instance_uids[state.k];
  const hit = state.result && state.result.slices.find((x) => x.sop_instance_uid === sop && x.heat_url);
  if (hit && $("show-cam").checked) layers.push(image(hit.heat_url));
  for (const layer of layers) {
    if (!layer.complete || !layer.naturalWidth) continue;
    ctx.save();
    ctx.translate(g.ox + (g.fc ? g.s.columns * g.scale : 0), g.oy + (g.fr ? g.s.rows * g.scale : 0));
    ctx.scale(g.fc ? -g.scale : g.scale, g.fr ? -g.scale : g.scale);
    ctx.drawImage(layer, 0, 0);
    ctx.restore();
  }
  for (const [b, i] of sliceBoxes()) {
    const [x0, y0, x1, y1] = boxRect(b);
    ctx.strokeStyle = i === state.selected ? "#ffd400" : "#39ff6a";
    ctx.lineWidth = 2;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = ctx.strokeStyle;
    for (const [cx, cy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) ctx.fillRect(cx - 3, cy - 3, 6, 6);
  }
  if (state.drag && state.drag.mode === "new") {
    const d = state.drag;
    ctx.strokeStyle = "#39ff6a";
    ctx.setLineDash([5, 3]);
    ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    ctx.setLineDash([]);
  }
  const pos = g.s.positions[state.k];
  $("slice-line").textContent = `slice ${state.k + 1} / ${g.s.slices}` +
    (Number.isFinite(pos) ? `  position ${pos.toFixed(1)} mm` : "") + `  W ${width} L ${level}`;
  const n = state.boxes.length;
  $("box-line").textContent = `${n} box${n === 1 ? "" : "es"} ${state.saveError ? "NOT SAVED" : "saved"}` +
    (n ? ` on ${new Set(state.boxes.map((b) => b.sop_instance_uid)).size} slice(s)` : "") +
    (state.saveError ? `: ${state.saveError}` : "");
  $("box-line").className = state.saveError ? "error" : "";
}

// ---------------------------------------------------------------- boxes
// A failed save stays on the page (the box line turns red and says why) until a later save of
// all boxes succeeds: every save sends every box, so nothing drawn after a failure is dropped.
let saving = Promise.resolve();
function saveBoxes() {
  const body = state.boxes.map((b) => ({ sop_instance_uid: b.sop_instance_uid, x_min: b.x_min, y_min: b.y_min,
    x_max: b.x_max, y_max: b.y_max }));
  saving = saving.then(() => api("PUT", `/api/studies/${state.study.study_id}/boxes`, body))
    .then((saved) => { state.boxes = saved; state.saveError = null; draw(); })
    .catch((e) => { state.saveError = e.message; say(e.message); draw(); });
  return saving;
}

function canvasPoint(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
canvas.addEventListener("mousedown", (ev) => {
  if (!state.study || ev.button !== 0) return;  // only the left button draws, moves or resizes
  canvas.focus();
  const [x, y] = canvasPoint(ev);
  for (const [b, i] of sliceBoxes().reverse()) {
    const [x0, y0, x1, y1] = boxRect(b);
    const corner = [[x0, y0], [x1, y0], [x0, y1], [x1, y1]].findIndex(([cx, cy]) => Math.abs(cx - x) < 8 && Math.abs(cy - y) < 8);
    if (corner >= 0) {   // resize: the opposite corner stays
      const [ax, ay] = [[x1, y1], [x0, y1], [x1, y0], [x0, y0]][corner];
      state.selected = i; state.drag = { mode: "resize", i, ax, ay, start: { ...b } }; draw(); return;
    }
    if (x > x0 && x < x1 && y > y0 && y < y1) {
      state.selected = i; state.drag = { mode: "move", i, x, y, start: { ...b } }; draw(); return;
    }
  }
  state.selected = -1;
  state.drag = { mode: "new", x0: x, y0: y, x1: x, y1: y };
});

canvas.addEventListener("mousemove", (ev) => {
  const d = state.drag;
  if (!d) return;
  const [x, y] = canvasPoint(ev);
  const g = geometry();
  if (d.mode === "new") { d.x1 = x; d.y1 = y; }
  else if (d.mode === "resize") {
    const [px, py] = g.toImage(x, y), [qx, qy] = g.toImage(d.ax, d.ay);
    Object.assign(state.boxes[d.i], { x_min: Math.min(px, qx), y_min: Math.min(py, qy), x_max: Math.max(px, qx), y_max: Math.max(py, qy) });
  } else if (d.mode === "move") {
    const [sx, sy] = g.toImage(d.x, d.y), [ex, ey] = g.toImage(x, y);
    const b = d.start, w = b.x_max - b.x_min, h = b.y_max - b.y_min;
    const nx = Math.min(Math.max(b.x_min + ex - sx, 0), g.s.columns - w), ny = Math.min(Math.max(b.y_min + ey - sy, 0), g.s.rows - h);
    Object.assign(state.boxes[d.i], { x_min: nx, y_min: ny, x_max: nx + w, y_max: ny + h });
  }
  draw();
});

window.addEventListener("mouseup", () => {
  const d = state.drag;
  if (!d) return;
  state.drag = null;
  if (d.mode === "resize") {   // a corner dragged onto the opposite one: the box keeps its last real size
    const b = state.boxes[d.i];
    if (b.x_max - b.x_min < 1 || b.y_max - b.y_min < 1) {
      Object.assign(b, d.start);
      say("a box needs an area of at least one pixel each way; it keeps its size");
      draw();
      return;
    }
  }
  if (d.mode === "new") {
    if (Math.abs(d.x1 - d.x0) < 4 || Math.abs(d.y1 - d.y0) < 4) { draw(); return; }   // a click, not a box
    const g = geometry();
    const [ax, ay] = g.toImage(d.x0, d.y0), [bx, by] = g.toImage(d.x1, d.y1);
    state.boxes.push({ sop_instance_uid: g.s.sop_instance_uids[state.k], x_min: Math.min(ax, bx), y_min: Math.min(ay, by),
      x_max: Math.max(ax, bx), y_max: Math.max(ay, by) });
    state.selected = state.boxes.length - 1;
  }
  saveBoxes();
});

function step(delta) {
  if (!state.study) return;
  state.k = Math.min(Math.max(state.k + delta, 0), series().slices - 1);
  state.selected = -1;
  draw();
}

canvas.addEventListener("wheel", (ev) => { ev.preventDefault(); step(ev.deltaY > 0 ? 1 : -1); }, { passive: false });
canvas.addEventListener("keydown", (ev) => {
  if (ev.key === "ArrowUp" || ev.key === "ArrowLeft") { step(-1); ev.preventDefault(); }
  if (ev.key === "ArrowDown" || ev.key === "ArrowRight") { step(1); ev.preventDefault(); }
  if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected >= 0) {
    state.boxes.splice(state.selected, 1);
    state.selected = -1;
    saveBoxes();
  }
});

// ---------------------------------------------------------------- grading and outputs
function showCard() {
  const m = currentModel();
  if (!m) return;
  const c = m.card, t = c.test;
  $("card").replaceChildren(el("b", {}, m.id), `: ${c.architecture} on the ${c.phase} phase, trained ${c.trained}; ` +
    `${c.data.train_patients}/${c.data.validation_patients}/${c.data.test_patients} train/validation/test patients; ` +
    `test patient AUC ${t && t.auc != null ? `${t.auc.toFixed(3)} (95% CI ${t.ci95[0].toFixed(2)}-${t.ci95[1].toFixed(2)}, n=${t.n})` : "n/a"}; ` +
    `threshold ${c.threshold.threshold.toFixed(2)} (${c.threshold.source}); runs on ${m.backend || "n/a"}. `,
    el("i", {}, `${c.disclaimer}.`));
}

async function grade() {
  say("grading...", true);
  const sid = state.study.study_id, model = currentModel().id;
  state.result = await api("POST", `/api/studies/${sid}/predict`, { model, cam: true });
  renderResult();
  const idx = state.study.series.findIndex((s) => s.phase === state.result.phase);
  if (idx >= 0 && idx !== state.series) showSeries(idx); else draw();
  say("graded", true);
}

function renderResult() {
  const r = state.result;
  $("outputs").hidden = !r;
  if (!r) { $("result").replaceChildren(); return; }
  const rows = r.slices.map((s) => {
    const tr = el("tr", { dataset: { sop: s.sop_instance_uid } }, el("td", {}, s.source), el("td", {}, s.prob_high.toFixed(3)));
    tr.addEventListener("click", () => { state.k = series().sop_instance_uids.indexOf(tr.dataset.sop); draw(); });
    return tr;
  });
  // the probability with the digits of the decision's wording, so the two never disagree
  const digits = Math.max(4, r.digits || 0);
  $("result").replaceChildren(
    el("div", { className: `decision ${r.grade}`, id: "decision" }, r.decision),
    el("div", {}, "patient P(high grade) ", el("span", { id: "prob" }, r.prob_high.toFixed(digits)), ` from ${r.slices.length} slice(s)`),
    el("table", {}, el("tr", {}, el("th", {}, "Slice"), el("th", {}, "P(high)")), ...rows),
    r.warnings.length ? el("p", { className: "hint" }, ...r.warnings.flatMap((w, i) => (i ? [el("br"), w] : [w]))) : null);
  if (r.box_robustness) {  // how much the grade depends on where exactly the boxes were drawn
    const b = r.box_robustness, div = document.createElement("div");
    div.id = "robustness";
    div.title = b.method;
    div.textContent = b.text;  // the server's wording: the same digits as the decision above
    $("decision").after(div);
  }
  const q = `?model=${encodeURIComponent(r.model.id)}`, base = `/api/studies/${state.study.study_id}`;
  $("report").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/report" + q, null)); };
  $("sr").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/sr" + q, `ccrcc-grade-${state.study.study_id}.dcm`)); };
  $("export").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/export", `cohort-${state.study.study_id}.zip`)); };
  $("sr-store").onclick = () => guarded(async () => {
    const s = await api("POST", base + "/sr/store", { model: r.model.id });
    say("SR stored in the PACS (" + s.sop_instance_uid + ")", true);
  });
}

async function openBlob(url, filename) {
  const blob = await api("GET", url, undefined, true);
  const href = URL.createObjectURL(blob);
  if (!filename) { window.open(href, "_blank"); return; }
  const a = document.createElement("a");
  a.href = href; a.download = filename; document.body.appendChild(a); a.click(); a.remove();
}

// ---------------------------------------------------------------- wiring
$("files").addEventListener("change", (ev) => guarded(() => upload(ev.target.files)));
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); guarded(() => upload(ev.dataTransfer.files)); });
$("view-series").addEventListener("change", (ev) => showSeries(Number(ev.target.value)));
$("model").addEventListener("change", showCard);
$("grade").addEventListener("click", () => guarded(grade));
$("show-cam").addEventListener("change", draw);
document.querySelectorAll("button.win").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("button.win").forEach((x) => x.classList.remove("active"));
  b.classList.add("active");
  state.window = b.dataset.window.split(",").map(Number);
  draw();
}));
$("q-go").addEventListener("click", () => guarded(async () => {
  const found = await api("POST", "/api/pacs/search", { patient_id: $("q-id").value, name: $("q-name").value, date: $("q-date").value });
  $("q-results").replaceChildren(...(found.length ? found.map((s) => {
    const li = el("li", { dataset: { uid: s.study_uid } }, `${s.patient_id} ${s.patient_name} ${s.date} ${s.description}`);
    li.addEventListener("click", () => guarded(async () => {
      say("loading from the PACS...", true);
      const r = await api("POST", "/api/studies/pacs", { study_uid: li.dataset.uid });
      await loadStudy(r.study_id);
      say("study loaded from the PACS", true);
    }));
    return li;
  }) : [el("li", {}, "no studies")]));
}));
init().catch((e) => say(e.message));
