// ccrcc-grade workstation page: plain JavaScript and canvases; every action goes through the REST API.
// Every string from DICOM, the PACS, file names or the user reaches the page as text (el() and
// textContent), never as HTML: the page has no innerHTML, and its Content-Security-Policy forbids
// inline script, so a header such as <img src=x onerror=...> shows as the characters it is.
//
// The viewer reads each slice in HU (int16 from /slices/{k}.hu) and windows it here, so window/level
// by drag, the HU under the cursor and each box's mean/SD HU need no round trip. Bindings are the
// radiology viewers' (OHIF/Cornerstone): left = the box tool, right-drag = window/level, middle-drag
// = pan, Ctrl+wheel = zoom, wheel/arrows/PageUp/PageDown/Home/End = slices.
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

const state = {
  token: sessionStorage.getItem("ccrcc-token"),
  study: null, boxes: [], models: [], result: null, signed: null,
  series: 0, k: 0, window: [40, 290], zoom: 1, pan: [0, 0], selected: -1, drag: null,
  history: [], future: [], gradeSeq: 0, saveError: null,
};
const hu = new Map();      // "uid/k" -> {rows, cols, data: Int16Array} (or a pending Promise)
const heat = new Map();    // heat-map url -> Image

// ---------------------------------------------------------------- API
// ``meta``: an object that receives the answer's ETag (the boxes' version) - per call, since slices
// load concurrently
async function api(method, url, body, kind, extra, meta) {
  const headers = { ...(extra || {}) };
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const user = ($("observer") && $("observer").value.trim()) || "";
  if (user.length >= 2) headers["X-User"] = user;   // the audit log's "who" (the name the sign-off uses)
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(url, { method, headers, body: payload });
  if (res.status === 401) {
    const t = prompt("This workstation needs its access token:");
    if (t) { state.token = t; sessionStorage.setItem("ccrcc-token", t); return api(method, url, body, kind, extra, meta); }
  }
  if (!res.ok) {
    let detail = res.status + " " + res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  if (meta) meta.etag = res.headers.get("ETag");   // the boxes' version, for the next save's If-Match
  if (kind === "blob") return res.blob();
  if (kind === "buffer") return res.arrayBuffer();
  return res.json();
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
  state.cfg = cfg;
  $("pacs").hidden = !cfg.pacs;
  $("sr-store").hidden = !cfg.pacs;
  state.models = await api("GET", "/api/models");
  $("model").replaceChildren(...state.models.map((m) => el("option", { value: m.id }, `${m.id} (${m.model}, ${m.phase})`)));
  $("observer").value = localStorage.getItem("ccrcc-observer") || "";
  showCard();
  resize();
  $("send").hidden = !(cfg.send || cfg.pacs);
  await refreshWorklist();
  setInterval(() => refreshWorklist().catch(() => {}), 10000);
  // launched from the PACS: ?StudyInstanceUIDs=<uid> (OHIF's parameter) or #study=<id>
  const uid = new URLSearchParams(location.search).get("StudyInstanceUIDs");
  const m = location.hash.match(/study=([0-9a-f]{16})/);
  if (uid) await guarded(() => openStudyUid(uid));
  else if (m) await guarded(() => loadStudy(m[1]));
}

async function openStudyUid(uid) {
  const found = (await api("GET", "/api/studies?study_uid=" + encodeURIComponent(uid))).filter((s) => s.series.length);
  if (found.length) { await loadStudy(found[0].study_id); return; }   // the newest stored one
  say("loading the study from the PACS...", true);
  const r = await api("POST", "/api/studies/pacs", { study_uid: uid });
  await loadStudy(r.study_id);
  say("study loaded from the PACS", true);
}

async function upload(fileList) {
  const form = new FormData();
  for (const f of fileList) form.append("files", f, f.name);
  say("uploading " + fileList.length + " file(s)...", true);
  const s = await api("POST", "/api/studies", form);
  await loadStudy(s.study_id);
  say("study loaded", true);
}

// a dropped folder (with its phase sub-folders) arrives as directory entries: read every file
async function droppedFiles(dt) {
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.some((e) => e.isDirectory)) return [...dt.files];
  const out = [];
  async function walk(entry) {
    if (entry.isFile) { out.push(await new Promise((ok, bad) => entry.file(ok, bad))); return; }
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, bad) => reader.readEntries(ok, bad));
      if (!batch.length) break;
      for (const e of batch) await walk(e);
    }
  }
  for (const e of entries) await walk(e);
  return out;
}

async function loadStudy(id) {
  state.study = await api("GET", "/api/studies/" + id);
  const meta = {};
  state.boxes = await api("GET", `/api/studies/${id}/boxes`, undefined, undefined, undefined, meta);
  state.boxesEtag = meta.etag;
  state.result = null; state.signed = null; state.history = []; state.future = []; state.saveError = null; state.lastPropose = null;
  hu.clear(); heat.clear();
  location.hash = "study=" + id;
  $("study-line").textContent = `Study ${id}: ${state.study.series.length} series` +
    (state.study.notes && state.study.notes.length ? ` (${state.study.notes.join("; ")})` : "");
  renderSeries();
  const phase = currentModel() ? currentModel().phase : null;
  const idx = state.study.series.findIndex((s) => s.phase === phase);
  showSeries(idx >= 0 ? idx : 0);
  renderResult();
  refreshWorklist().catch(() => {});   // the worklist shows the study just opened or loaded
}

// the patient on screen, from the DICOM: name, ID, birth date, sex, study date, accession, series
function renderBanner() {
  const p = (state.study && state.study.patient) || {};
  const date = (v) => (/^\d{8}$/.test(v || "") ? `${v.slice(0, 4)}-${v.slice(4, 6)}-${v.slice(6)}` : v || "");
  const fields = [["Patient", (p.name || "").replace(/\^/g, " ").trim()], ["ID", p.patient_id], ["Born", date(p.birth_date)],
    ["Sex", p.sex], ["Study date", date(p.study_date)], ["Accession", p.accession],
    ["Series", state.study ? series().description || series().series_uid : ""]];
  $("banner").replaceChildren(...fields.filter(([, v]) => v).flatMap(([k, v]) => [k + " ", el("b", { dataset: { field: k } }, v)]));
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
      layout();
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
  renderBanner();
  layout();
}

const series = () => state.study.series[state.series];
const currentModel = () => state.models.find((m) => m.id === $("model").value) || state.models[0];

// ---------------------------------------------------------------- viewports
// The main view (#canvas) shows the series boxes are drawn on; with "4 phases" the other assigned
// phases follow it side by side, each at the slice nearest the main slice's patient position.
const views = [{ canvas: $("canvas"), main: true }];

function layout() {
  const four = $("four-up").checked && state.study;
  const others = four ? state.study.series.map((s, i) => i).filter((i) => i !== state.series && state.study.series[i].phase) : [];
  const box = $("viewports");
  box.classList.toggle("four", others.length > 0);
  while (views.length > 1) views.pop().canvas.parentElement.remove();
  for (const i of others.slice(0, 3)) {
    const canvas = el("canvas", { tabIndex: -1 });
    const div = el("div", { className: "vp", title: "click to make this series the main view" }, canvas);
    canvas.addEventListener("click", () => showSeries(i));
    box.append(div);
    views.push({ canvas, series: i });
  }
  resize();
}

function resize() {
  for (const v of views) {
    const r = v.canvas.parentElement.getBoundingClientRect();
    v.canvas.width = Math.max(64, Math.floor(r.width - 2));
    v.canvas.height = Math.max(64, Math.floor(r.height - 2));
  }
  draw();
}
new ResizeObserver(resize).observe($("viewports"));

function nearestSlice(s, position) {
  let best = 0;
  s.positions.forEach((p, i) => { if (Math.abs(p - position) < Math.abs(s.positions[best] - position)) best = i; });
  return best;
}

// Slices come in their stored orientation (boxes live in its pixel coordinates, as in boxes.csv);
// the canvas shows them the radiological way round (the series' flips), fitted, zoomed and panned.
function geometry(v) {
  const canvas = (v || views[0]).canvas;
  const s = v && !v.main ? state.study.series[v.series] : series();
  const scale = Math.min(canvas.width / s.columns, canvas.height / s.rows) * state.zoom;
  const ox = (canvas.width - s.columns * scale) / 2 + state.pan[0], oy = (canvas.height - s.rows * scale) / 2 + state.pan[1];
  const [fr, fc] = s.flip;
  const toCanvas = (x, y) => [ox + (fc ? s.columns - x : x) * scale, oy + (fr ? s.rows - y : y) * scale];
  const toImage = (cx, cy) => {
    const dx = Math.min(Math.max((cx - ox) / scale, 0), s.columns), dy = Math.min(Math.max((cy - oy) / scale, 0), s.rows);
    return [fc ? s.columns - dx : dx, fr ? s.rows - dy : dy];
  };
  return { s, scale, ox, oy, fr, fc, toCanvas, toImage, canvas };
}

// a point of the stored image -> the page's client coordinates (used by the browser tests)
function imageToClient(x, y) {
  const g = geometry(), r = g.canvas.getBoundingClientRect(), [cx, cy] = g.toCanvas(x, y);
  return [r.left + cx * r.width / g.canvas.width, r.top + cy * r.height / g.canvas.height];
}

function boxRect(b) {   // canvas rectangle [x0, y0, x1, y1] of a stored box
  const { toCanvas } = geometry();
  const [ax, ay] = toCanvas(b.x_min, b.y_min), [bx, by] = toCanvas(b.x_max, b.y_max);
  return [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];
}

const sliceBoxes = () => state.boxes.map((b, i) => [b, i]).filter(([b]) => b.sop_instance_uid === series().sop_instance_uids[state.k]);

// ---------------------------------------------------------------- pixels
function sliceHu(s, k) {
  const key = `${s.series_uid}/${k}`;
  const got = hu.get(key);
  if (got && !(got instanceof Promise)) return got;
  if (!got) {
    const p = api("GET", `/api/studies/${state.study.study_id}/series/${s.series_uid}/slices/${k}.hu`, undefined, "buffer")
      .then((buf) => {
        const entry = { rows: s.rows, cols: s.columns, data: new Int16Array(buf), canvas: null, win: null };
        hu.set(key, entry);
        if (hu.size > 400) hu.delete(hu.keys().next().value);  // a few hundred slices stay in memory
        draw(); renderBoxList();
      })
      .catch((e) => { hu.delete(key); say(e.message); });
    hu.set(key, p);
  }
  return null;
}

function windowed(entry) {   // the slice windowed into an offscreen canvas (redone when W/L changes)
  const [level, width] = state.window;
  if (entry.canvas && entry.win === `${level},${width}`) return entry.canvas;
  const c = entry.canvas || el("canvas", { width: entry.cols, height: entry.rows });
  const cx = c.getContext("2d"), img = cx.createImageData(entry.cols, entry.rows);
  const lo = level - width / 2, f = 255 / width, d = entry.data, px = img.data;
  for (let i = 0; i < d.length; i++) {
    const g = Math.max(0, Math.min(255, (d[i] - lo) * f));
    px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = g; px[4 * i + 3] = 255;
  }
  cx.putImageData(img, 0, 0);
  entry.canvas = c; entry.win = `${level},${width}`;
  return c;
}

function huAt(s, k, x, y) {
  const e = hu.get(`${s.series_uid}/${k}`);
  if (!e || e instanceof Promise) return null;
  const c = Math.floor(x), r = Math.floor(y);
  return c >= 0 && r >= 0 && c < e.cols && r < e.rows ? e.data[r * e.cols + c] : null;
}

function boxStats(b) {   // size in mm and mean/SD HU of a box (null until its slice is loaded)
  const loc = locate(b.sop_instance_uid);
  if (!loc) return null;
  const [s, k] = loc, [sy, sx] = s.pixel_spacing;
  const out = { w: (b.x_max - b.x_min) * sx, h: (b.y_max - b.y_min) * sy, k, s, mean: null, sd: null };
  const e = hu.get(`${s.series_uid}/${k}`);
  if (e && !(e instanceof Promise)) {
    let n = 0, sum = 0, sq = 0;
    for (let r = Math.floor(b.y_min); r < Math.ceil(b.y_max); r++) {
      for (let c = Math.floor(b.x_min); c < Math.ceil(b.x_max); c++) { const v = e.data[r * e.cols + c]; n++; sum += v; sq += v * v; }
    }
    if (n) { out.mean = sum / n; out.sd = Math.sqrt(Math.max(sq / n - out.mean * out.mean, 0)); }
  } else sliceHu(s, k);
  return out;
}

function locate(sop) {
  for (const s of state.study.series) { const k = s.sop_instance_uids.indexOf(sop); if (k >= 0) return [s, k]; }
  return null;
}

// ---------------------------------------------------------------- drawing
function drawView(v, k) {
  const g = geometry(v), ctx = g.canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, g.canvas.width, g.canvas.height);
  const entry = sliceHu(g.s, k);
  if (entry) {
    ctx.save();
    ctx.translate(g.ox + (g.fc ? g.s.columns * g.scale : 0), g.oy + (g.fr ? g.s.rows * g.scale : 0));
    ctx.scale(g.fc ? -g.scale : g.scale, g.fr ? -g.scale : g.scale);
    ctx.imageSmoothingEnabled = g.scale < 1;
    ctx.drawImage(windowed(entry), 0, 0);
    const sop = g.s.sop_instance_uids[k];
    const hit = v.main && state.result && state.result.slices.find((x) => x.sop_instance_uid === sop && x.heat_url);
    if (hit && $("show-cam").checked) {
      if (!heat.has(hit.heat_url)) {
        const img = new Image();
        heat.set(hit.heat_url, img);
        api("GET", hit.heat_url, undefined, "blob").then((b) => { img.onload = draw; img.src = URL.createObjectURL(b); }).catch((e) => say(e.message));
      }
      const img = heat.get(hit.heat_url);
      if (img.complete && img.naturalWidth) ctx.drawImage(img, 0, 0);
    }
    ctx.restore();
  }
  // orientation (the radiological view: patient right on the screen's left), scale bar, slice
  ctx.fillStyle = "#ffd27a"; ctx.font = "bold 14px system-ui"; ctx.textAlign = "center";
  const W = g.canvas.width, H = g.canvas.height;
  ctx.fillText("A", W / 2, 16); ctx.fillText("P", W / 2, H - 6); ctx.fillText("R", 10, H / 2); ctx.fillText("L", W - 10, H / 2);
  const mm = g.s.pixel_spacing[1] * 1, cm = (W > 500 ? 50 : 20);   // a 5 cm (or 2 cm) bar
  const len = cm / mm * g.scale;
  ctx.strokeStyle = "#ffd27a"; ctx.lineWidth = 2; ctx.beginPath();
  ctx.moveTo(W - 20 - len, H - 24); ctx.lineTo(W - 20, H - 24); ctx.stroke();
  ctx.textAlign = "right"; ctx.font = "12px system-ui"; ctx.fillText(`${cm / 10} cm`, W - 20, H - 30);
  ctx.textAlign = "left";
  const pos = g.s.positions[k];
  ctx.fillText(`${g.s.phase || "unassigned"}  ${k + 1}/${g.s.slices}` + (Number.isFinite(pos) ? `  z ${pos.toFixed(1)} mm` : "") +
    (g.s.slice_thickness ? `  thk ${g.s.slice_thickness} mm` : ""), 6, H - 6);
  return { g, ctx };
}

function draw() {
  if (!state.study) {
    for (const v of views) { const c = v.canvas.getContext("2d"); c.fillStyle = "#111"; c.fillRect(0, 0, v.canvas.width, v.canvas.height); }
    return;
  }
  const { ctx } = drawView(views[0], state.k);
  const pos = series().positions[state.k];
  for (const v of views.slice(1)) {
    const s = state.study.series[v.series];
    drawView(v, Number.isFinite(pos) ? nearestSlice(s, pos) : Math.min(state.k, s.slices - 1));
  }
  for (const [b, i] of sliceBoxes()) {
    const [x0, y0, x1, y1] = boxRect(b);
    const proposed = b.confirmed === false;   // a proposal: dashed cyan until the clinician confirms it
    ctx.strokeStyle = i === state.selected ? "#ffd400" : proposed ? "#3ad0ff" : "#39ff6a";
    ctx.lineWidth = 2;
    if (proposed) ctx.setLineDash([6, 4]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
    if (proposed) { ctx.font = "12px system-ui"; ctx.fillStyle = ctx.strokeStyle; ctx.fillText(`proposed (${b.source})`, x0, y1 + 14); }
    ctx.fillStyle = ctx.strokeStyle;
    for (const [cx, cy] of [[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) ctx.fillRect(cx - 3, cy - 3, 6, 6);
    const st = boxStats(b);
    if (st) {
      ctx.font = "12px system-ui"; ctx.textAlign = "left";
      ctx.fillText(`${st.w.toFixed(1)} x ${st.h.toFixed(1)} mm` + (st.mean !== null ? `  ${st.mean.toFixed(0)} ± ${st.sd.toFixed(0)} HU` : ""), x0, y0 - 5);
    }
  }
  if (state.drag && state.drag.mode === "new") {
    const d = state.drag;
    ctx.strokeStyle = "#39ff6a";
    ctx.setLineDash([5, 3]);
    ctx.strokeRect(d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    ctx.setLineDash([]);
  }
  const [level, width] = state.window;
  $("wl-level").value = Math.round(level); $("wl-width").value = Math.round(width);
  $("slice-line").textContent = `slice ${state.k + 1} / ${series().slices}` +
    (Number.isFinite(pos) ? `  position ${pos.toFixed(1)} mm` : "") + `  W ${Math.round(width)} L ${Math.round(level)}  zoom ${state.zoom.toFixed(2)}`;
  const n = state.boxes.length, np = state.boxes.filter((b) => b.confirmed === false).length;
  $("box-line").textContent = `${n} box${n === 1 ? "" : "es"}${np ? ` (${np} proposed, not confirmed)` : ""} ${state.saveError ? "NOT SAVED" : state.pending ? "saving..." : "saved"}` +
    (n ? ` on ${new Set(state.boxes.map((b) => b.sop_instance_uid)).size} slice(s)` : "") +
    (state.saveError ? `: ${state.saveError}` : "");
  $("box-line").className = state.saveError ? "error" : "";
  showHu();
  for (const tr of document.querySelectorAll("#box-list tbody tr")) tr.classList.toggle("here", Number(tr.dataset.k) === state.k && tr.dataset.uid === series().series_uid);
}

function renderBoxList() {
  if (!state.study) return;
  const rows = state.boxes.map((b, i) => [b, i, boxStats(b)]).filter(([, , st]) => st)
    .sort((a, b) => a[2].k - b[2].k).map(([b, i, st]) => {
      const del = el("button", { title: "delete this box" }, "✕");
      del.addEventListener("click", (ev) => { ev.stopPropagation(); changeBoxes(() => state.boxes.splice(i, 1)); });
      let ok = null;
      if (b.confirmed === false) {
        ok = el("button", { title: "confirm this proposal", className: "confirm-one" }, "✓");
        ok.addEventListener("click", (ev) => { ev.stopPropagation(); changeBoxes(() => { state.boxes[i].confirmed = true; }); });
      }
      const by = (b.history && b.history.length ? b.history.join(" → ") + " → " : "") + (b.source || "person");
      const tr = el("tr", { dataset: { k: st.k, uid: st.s.series_uid }, className: b.confirmed === false ? "proposed" : "" },
        el("td", {}, `${st.s.phase || "?"} ${st.k + 1}`), el("td", {}, `${st.w.toFixed(1)} x ${st.h.toFixed(1)}`),
        el("td", {}, st.mean === null ? "..." : `${st.mean.toFixed(0)} ± ${st.sd.toFixed(0)}`),
        el("td", {}, b.confirmed === false ? `proposed (${by})` : by), el("td", {}, ok, del));
      tr.addEventListener("click", () => {
        const idx = state.study.series.indexOf(st.s);
        if (idx !== state.series) showSeries(idx);
        state.k = st.k; state.selected = i; draw();
      });
      return tr;
    });
  document.querySelector("#box-list tbody").replaceChildren(...rows);
  draw();
}

// ---------------------------------------------------------------- boxes
// A failed save stays on the page (the box line turns red and says why) until a later save of
// all boxes succeeds: every save sends every box, so nothing drawn after a failure is dropped.
let saving = Promise.resolve();
function saveBoxes() {
  state.gradeSeq++;   // a grade still being computed no longer matches the boxes
  if (state.result) { state.result = null; state.signed = null; renderResult(); say("the boxes changed: grade again", true); }
  const body = state.boxes.map((b) => ({ sop_instance_uid: b.sop_instance_uid, x_min: b.x_min, y_min: b.y_min,
    x_max: b.x_max, y_max: b.y_max, source: b.source || "person", confirmed: b.confirmed !== false, history: b.history || [] }));
  state.pending = (state.pending || 0) + 1;   // the page says "saving" until the server has them
  const id = state.study.study_id;
  // If-Match: the version this page last saw; another tab's save in between is refused (409), and
  // this page then reloads the study's boxes rather than overwrite that tab's work
  const meta = {};
  saving = saving.then(() => api("PUT", `/api/studies/${id}/boxes`, body, undefined, { "If-Match": state.boxesEtag || '"0"' }, meta))
    .then((saved) => {
      const failed = state.saveError;
      state.pending--; state.boxesEtag = meta.etag; if (!state.pending) state.boxes = saved; state.saveError = null; renderBoxList();
      // the conflict or the failed save is resolved: its message goes (any other message stays)
      if ($("message").textContent.includes("changed elsewhere") || (failed && $("message").textContent === failed)) say("");
    })
    .catch(async (e) => {
      state.pending--;
      if (e.status === 409) {   // stale: show what the other tab saved
        const msg = e.message;
        await loadStudy(id);
        say(msg + " (reloaded; your last change was not saved)");
        return;
      }
      state.saveError = e.message; say(e.message); draw();
    });
  return saving;
}

const snapshot = () => state.boxes.map((b) => ({ ...b }));
function changeBoxes(fn, before) {   // every change is undoable: the boxes before it go on the history
  state.history.push(before || snapshot());
  state.future = [];
  fn();
  state.selected = Math.min(state.selected, state.boxes.length - 1);
  saveBoxes();   // first: the box line then says "saving..." until the server has them, never "saved" before
  renderBoxList();
}
function undo() { if (!state.history.length) return; state.future.push(snapshot()); state.boxes = state.history.pop(); state.selected = -1; saveBoxes(); renderBoxList(); }
function redo() { if (!state.future.length) return; state.history.push(snapshot()); state.boxes = state.future.pop(); state.selected = -1; saveBoxes(); renderBoxList(); }

const canvas = $("canvas");
function canvasPoint(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
canvas.addEventListener("mousedown", (ev) => {
  if (!state.study) return;
  canvas.focus();
  ev.preventDefault();
  const [x, y] = canvasPoint(ev);
  if (ev.button === 2) { state.drag = { mode: "window", x, y, start: [...state.window] }; return; }   // right: W/L
  if (ev.button === 1) { state.drag = { mode: "pan", x, y, start: [...state.pan] }; return; }         // middle: pan
  if (ev.button !== 0) return;                                                                          // left: boxes
  for (const [b, i] of sliceBoxes().reverse()) {
    const [x0, y0, x1, y1] = boxRect(b);
    const corner = [[x0, y0], [x1, y0], [x0, y1], [x1, y1]].findIndex(([cx, cy]) => Math.abs(cx - x) < 8 && Math.abs(cy - y) < 8);
    if (corner >= 0) {   // resize: the opposite corner stays
      const [ax, ay] = [[x1, y1], [x0, y1], [x1, y0], [x0, y0]][corner];
      state.selected = i; state.drag = { mode: "resize", i, ax, ay, start: { ...b }, before: snapshot() }; draw(); return;
    }
    if (x > x0 && x < x1 && y > y0 && y < y1) {
      state.selected = i; state.drag = { mode: "move", i, x, y, start: { ...b }, before: snapshot() }; draw(); return;
    }
  }
  state.selected = -1;
  state.drag = { mode: "new", x0: x, y0: y, x1: x, y1: y };
});

canvas.addEventListener("mousemove", (ev) => {
  if (!state.study) return;
  state.cursor = canvasPoint(ev);
  if (!state.drag) showHu();
});
canvas.addEventListener("mouseleave", () => { state.cursor = null; showHu(); });

function showHu() {   // the HU under the cursor (again when the slice's pixels arrive)
  if (!state.cursor || !state.study) { $("hu-line").textContent = ""; return; }
  const g = geometry(), [ix, iy] = g.toImage(...state.cursor), v = huAt(g.s, state.k, ix, iy);
  $("hu-line").textContent = v === null ? "" : `(${Math.floor(ix)}, ${Math.floor(iy)})  ${v} HU`;
}

window.addEventListener("mousemove", (ev) => {
  const d = state.drag;
  if (!d) return;
  const [x, y] = canvasPoint(ev);
  const g = geometry();
  if (d.mode === "window") {   // horizontal: width, vertical: level (as in OHIF)
    state.window = [d.start[0] + (y - d.y), Math.max(1, d.start[1] + (x - d.x) * 2)];
    $("preset").value = "";
  } else if (d.mode === "pan") state.pan = [d.start[0] + x - d.x, d.start[1] + y - d.y];
  else if (d.mode === "new") { d.x1 = x; d.y1 = y; }
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
  if (d.mode === "window" || d.mode === "pan") { draw(); return; }
  if (d.mode === "resize" || d.mode === "move") {
    const b = state.boxes[d.i];
    if (d.mode === "resize" && (b.x_max - b.x_min < 1 || b.y_max - b.y_min < 1)) {   // a corner onto the opposite one
      Object.assign(b, d.start);
      say("a box needs an area of at least one pixel each way; it keeps its size");
      draw();
      return;
    }
    if (["x_min", "y_min", "x_max", "y_max"].every((c) => b[c] === d.start[c])) { draw(); return; }   // a click
    const wasProposal = b.confirmed === false;
    if (b.source && b.source !== "person") b.history = [...(b.history || []), b.source];
    b.source = "person";
    b.confirmed = true;
    changeBoxes(() => {}, d.before);
    // a moved proposal is a key box now: the proposals around it are made again from the keys
    if (wasProposal && state.lastPropose) guarded(() => proposeBoxes(state.lastPropose));
    return;
  }
  if (d.mode === "new") {
    if (Math.abs(d.x1 - d.x0) < 4 || Math.abs(d.y1 - d.y0) < 4) { draw(); return; }   // a click, not a box
    const g = geometry();
    const [ax, ay] = g.toImage(d.x0, d.y0), [bx, by] = g.toImage(d.x1, d.y1);
    if (Math.abs(bx - ax) < 1 || Math.abs(by - ay) < 1) { draw(); return; }   // no area in the image
    changeBoxes(() => {
      state.boxes.push({ sop_instance_uid: g.s.sop_instance_uids[state.k], x_min: Math.min(ax, bx), y_min: Math.min(ay, by),
        x_max: Math.max(ax, bx), y_max: Math.max(ay, by), source: "person" });
      state.selected = state.boxes.length - 1;
    });
  }
});

function step(delta) {
  if (!state.study) return;
  state.k = Math.min(Math.max(state.k + delta, 0), series().slices - 1);
  state.selected = -1;
  draw();
}

canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  if (ev.ctrlKey) { state.zoom = Math.min(Math.max(state.zoom * (ev.deltaY > 0 ? 0.9 : 1.1), 0.25), 16); draw(); }
  else step(ev.deltaY > 0 ? 1 : -1);
}, { passive: false });
canvas.addEventListener("keydown", (ev) => {
  const page = Math.max(1, Math.round(series().slices / 10));
  const keys = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -page, PageDown: page };
  if (ev.key in keys) { step(keys[ev.key]); ev.preventDefault(); }
  else if (ev.key === "Home") { step(-1e9); ev.preventDefault(); }
  else if (ev.key === "End") { step(1e9); ev.preventDefault(); }
  else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { (ev.shiftKey ? redo : undo)(); ev.preventDefault(); }
  else if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "y") { redo(); ev.preventDefault(); }
  else if (ev.key === "Enter" && state.selected >= 0 && state.boxes[state.selected].confirmed === false) {
    const i = state.selected;
    changeBoxes(() => { state.boxes[i].confirmed = true; });
    ev.preventDefault();
  }
  else if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected >= 0) {
    const i = state.selected;
    state.selected = -1;
    changeBoxes(() => state.boxes.splice(i, 1));
  }
});

// ---------------------------------------------------------------- assisted boxes
// The server proposes boxes from the confirmed ones: the proposal model's walk from one box (serve
// --roi-model) or the interpolation between key boxes, and with "all phases" the other phases
// (patient coordinates + rigid registration). Proposals stay dashed until confirmed.
async function proposeBoxes(opts) {
  if (!state.study) return;
  const body = opts || { phase: series().phase || null, method: $("propose-method").value, propagate: $("propose-all").checked };
  state.lastPropose = body;
  await saving;   // the keys the server reads are the ones on the page
  say("proposing boxes...", true);
  const t0 = performance.now();
  const meta = {};
  const r = await api("POST", `/api/studies/${state.study.study_id}/propose`, body, undefined, undefined, meta);
  state.boxesEtag = meta.etag;   // the proposals are a new version of the boxes
  state.history.push(snapshot()); state.future = [];
  state.boxes = r.boxes;
  if (state.result) { state.result = null; state.signed = null; renderResult(); }
  renderBoxList();
  const made = Object.entries(r.proposed).map(([src, n]) => `${n} by ${src}`).join(", ") || "none";
  const moved = Object.entries(r.info.phases || {}).filter(([, i]) => i.moved_mm).map(([p, i]) => `${p} moved ${i.moved_mm[3].toFixed(1)} mm`);
  const notes = Object.values(r.info.phases || {}).map((i) => i.note).filter(Boolean);
  say(`proposed boxes (${made}) in ${((performance.now() - t0) / 1000).toFixed(1)} s` + (moved.length ? `; ${moved.join(", ")}` : "") +
    (notes.length ? `; ${notes.join("; ")}` : "") + ". Check them and confirm.", true);
}

function confirmAll() {
  if (!state.boxes.some((b) => b.confirmed === false)) { say("no proposals to confirm", true); return; }
  changeBoxes(() => { for (const b of state.boxes) b.confirmed = true; });
  say("every proposal confirmed", true);
}

// ---------------------------------------------------------------- grading and outputs
function showCard() {
  const m = currentModel();
  if (!m) return;
  const c = m.card, t = c.test;
  $("card").replaceChildren(el("b", {}, m.id), `: ${c.architecture} on the ${c.phase} phase, trained ${c.trained}; ` +
    `${c.data.train_patients}/${c.data.validation_patients}/${c.data.test_patients} train/validation/test patients; ` +
    `test patient AUC ${t && t.auc != null && t.ci95 && t.ci95[0] != null ? `${t.auc.toFixed(3)} (95% CI ${t.ci95[0].toFixed(2)}-${t.ci95[1].toFixed(2)}, n=${t.n})` : "n/a"}; ` +
    `threshold ${c.threshold.threshold.toFixed(2)} (${c.threshold.source}); runs on ${m.backend || "n/a"}. `,
    el("i", {}, `${c.disclaimer}.`));
  // a model that has not shown it separates the grades says so in red, before and after grading
  const w = m.trust && m.trust.warning;
  $("trust-warning").hidden = !w;
  $("trust-warning").textContent = w ? w[0].toUpperCase() + w.slice(1) + "." : "";
}

// The grade comes first (no heat map, no box-robustness resampling: well under a second); the
// heat map and the robustness range follow in the background and replace it when they arrive,
// unless the boxes changed meanwhile.
async function grade() {
  say("grading...", true);
  const sid = state.study.study_id, model = currentModel().id, seq = ++state.gradeSeq;
  const t0 = performance.now();
  const include_proposed = $("include-proposed").checked;
  const fast = await api("POST", `/api/studies/${sid}/predict`, { model, cam: false, box_k: 0, include_proposed });
  if (seq !== state.gradeSeq) return;
  state.result = fast; state.signed = null;
  state.gradeSeconds = (performance.now() - t0) / 1000;
  renderResult();
  const idx = state.study.series.findIndex((s) => s.phase === fast.phase);
  if (idx >= 0 && idx !== state.series) showSeries(idx); else draw();
  if (!fast.assessable) { say("not assessable: see the reasons under the result"); return; }
  say(`graded in ${state.gradeSeconds.toFixed(2)} s; computing the heat map and the box-robustness range...`, true);
  const full = await api("POST", `/api/studies/${sid}/predict`, { model, cam: true, include_proposed });
  if (seq !== state.gradeSeq) return;
  state.result = full;
  renderResult(); draw();
  say("graded (heat map and box robustness ready)", true);
  refreshWorklist().catch(() => {});
}

function renderResult() {
  const r = state.result;
  $("outputs").hidden = !r || !r.assessable;
  $("trust-warning").hidden = Boolean(r) || !(currentModel() && currentModel().trust && currentModel().trust.warning);
  if (!r) { $("result").replaceChildren(); $("signed-line").textContent = ""; return; }
  const trust = r.trust || {};
  if (!r.assessable) {
    $("result").replaceChildren(el("div", { className: "decision na", id: "decision" }, r.decision),
      el("p", { className: "error" }, ...r.plausibility.problems.flatMap((w, i) => (i ? [el("br"), w] : [w]))));
    return;
  }
  const rows = r.slices.map((s) => {
    const tr = el("tr", { dataset: { sop: s.sop_instance_uid } }, el("td", {}, s.source), el("td", {}, s.prob_high.toFixed(3)),
      el("td", {}, s.laterality || ""), el("td", {}, s.drawn_by || ""));
    tr.addEventListener("click", () => { state.k = series().sop_instance_uids.indexOf(tr.dataset.sop); draw(); });
    return tr;
  });
  // the probability with the digits of the decision's wording, so the two never disagree
  const digits = Math.max(4, r.digits || 0);
  $("result").replaceChildren(
    el("div", { className: `decision ${r.grade}`, id: "decision" }, r.decision),
    el("div", {}, "patient P(high grade) ", el("span", { id: "prob" }, r.prob_high.toFixed(digits)), ` from ${r.slices.length} slice(s)`),
    r.boxes ? el("div", { id: "box-summary" }, r.boxes.text + (r.boxes.include_proposed ? " (unconfirmed proposals graded on request)" : "")) : null,
    r.box_robustness ? el("div", { id: "robustness", title: r.box_robustness.method }, r.box_robustness.text) :
      el("div", { className: "hint", id: "robustness-pending" }, "box-robustness range: computing..."),
    el("p", { id: "trust" }, trust.text || ""),
    trust.warning ? el("div", { className: "danger", id: "result-warning" }, trust.warning[0].toUpperCase() + trust.warning.slice(1) + ".") : null,
    r.warnings.length ? el("p", { className: "hint", id: "warnings" }, ...r.warnings.flatMap((w, i) => (i ? [el("br"), w] : [w]))) : null,
    el("table", {}, el("tr", {}, el("th", {}, "Slice"), el("th", {}, "P(high)"), el("th", {}, "Side"), el("th", {}, "Box by")), ...rows));
  $("signed-line").textContent = state.signed ? `Signed by ${state.signed.observer} at ${state.signed.time}` : "Not signed off (the SR says UNVERIFIED).";
  const q = `?model=${encodeURIComponent(r.model.id)}`, base = `/api/studies/${state.study.study_id}`;
  $("report").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/report" + q, null)); };
  $("sr").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/sr" + q, `ccrcc-grade-${state.study.study_id}.dcm`)); };
  $("export").onclick = (ev) => { ev.preventDefault(); guarded(() => openBlob(base + "/export", `cohort-${state.study.study_id}.zip`)); };
  $("send").onclick = () => guarded(sendResults);
  $("sr-store").onclick = () => guarded(async () => {
    const s = await api("POST", base + "/sr/store", { model: r.model.id });
    say("SR stored in the PACS (" + s.sop_instance_uid + ")", true);
  });
}

// ---------------------------------------------------------------- worklist
const STATUS_TEXT = { receiving: "receiving...", complete: "phases assigned", boxed: "boxed", graded: "graded",
  sent: "sent to the PACS", failed: "failed" };
async function refreshWorklist() {
  const studies = await api("GET", "/api/studies");
  const rows = studies.map((s) => {
    const p = s.patient || {};
    const phases = s.series.filter((x) => x.phase).length;
    // narrow panel: who on the first line, when / from where / phases on the second; the status beside
    const open = state.study && state.study.study_id === s.study_id ? " wl-open" : "";
    const tr = el("tr", { className: "wl-" + s.status + open, dataset: { study: s.study_id }, title: s.error || "" },
      el("td", {}, `${p.name || "(no name)"}${p.patient_id ? " · " + p.patient_id : ""}`,
        el("div", { className: "hint" }, `${p.study_date || "no date"} · ${s.source} · ${phases} phase${phases === 1 ? "" : "s"}`)),
      el("td", { className: "wl-status" }, STATUS_TEXT[s.status] || s.status,
        s.error ? el("div", { className: "error" }, s.error) : null,
        state.cfg.ohif_port && s.study_uid ? el("div", {}, ohifLink(s.study_uid)) : null));
    if (s.series.length) tr.addEventListener("click", () => guarded(() => loadStudy(s.study_id)));
    return tr;
  });
  $("worklist").querySelector("tbody").replaceChildren(...rows);
  $("worklist-empty").hidden = studies.length > 0;
}

// the study in the OHIF viewer (serve --ohif, its own port on this host); the access token goes as a
// cookie, which the browser sends to every port of this host
function ohifLink(studyUid) {
  const a = el("a", { href: `${location.protocol}//${location.hostname}:${state.cfg.ohif_port}/viewer?StudyInstanceUIDs=${encodeURIComponent(studyUid)}`,
    target: "_blank", rel: "noopener", className: "ohif-link", title: "open the study, with our SR and key image, in OHIF" }, "OHIF");
  a.addEventListener("click", (ev) => {
    ev.stopPropagation();
    if (state.token) document.cookie = `ccrcc_token=${encodeURIComponent(state.token)}; path=/; SameSite=Strict`;
  });
  return a;
}

async function sendResults() {
  const r = state.result;
  if (!r) throw new Error("grade first");
  const s = await api("POST", `/api/studies/${state.study.study_id}/send`, { model: r.model.id });
  if (s.status === "sent") say(`sent ${s.sent.length} object(s) (SR, key image) to ${s.destination}`, true);
  else say(s.error || "sending failed; it is retried");
  await refreshWorklist();
}

async function signOff() {
  const name = $("observer").value.trim();
  if (name.length < 2) throw new Error("type your name to sign (as Family Given, or Family^Given)");
  if (!state.result || !state.result.box_robustness) throw new Error("wait until the grade is complete (heat map and box robustness), then sign");
  localStorage.setItem("ccrcc-observer", name);
  state.signed = await api("POST", `/api/studies/${state.study.study_id}/signoff`, { model: state.result.model.id, observer: name });
  renderResult();
  say("signed off: the SR is now VERIFIED by " + state.signed.observer, true);
}

async function openBlob(url, filename) {
  const blob = await api("GET", url, undefined, "blob");
  const href = URL.createObjectURL(blob);
  if (!filename) { window.open(href, "_blank"); return; }
  const a = document.createElement("a");
  a.href = href; a.download = filename; document.body.appendChild(a); a.click(); a.remove();
}

function setWindow(level, width) {
  if (!Number.isFinite(level) || !Number.isFinite(width) || width < 1) { say("window: a level and a width of at least 1"); return; }
  state.window = [level, width];
  draw();
}

// ---------------------------------------------------------------- wiring
$("files").addEventListener("change", (ev) => guarded(() => upload(ev.target.files)));
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
  guarded(async () => upload(await droppedFiles(ev.dataTransfer)));
});
$("view-series").addEventListener("change", (ev) => showSeries(Number(ev.target.value)));
$("model").addEventListener("change", showCard);
$("grade").addEventListener("click", () => guarded(grade));
$("sign").addEventListener("click", () => guarded(signOff));
$("undo").addEventListener("click", undo);
$("propose").addEventListener("click", () => guarded(() => proposeBoxes()));
$("confirm-all").addEventListener("click", confirmAll);
$("redo").addEventListener("click", redo);
$("show-cam").addEventListener("change", draw);
$("four-up").addEventListener("change", layout);
$("fit").addEventListener("click", () => { state.zoom = 1; state.pan = [0, 0]; draw(); });
$("preset").addEventListener("change", (ev) => { if (ev.target.value) setWindow(...ev.target.value.split(",").map(Number)); ev.target.blur(); });
for (const id of ["wl-level", "wl-width"]) {
  $(id).addEventListener("change", () => setWindow(Number($("wl-level").value), Number($("wl-width").value)));
}
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
