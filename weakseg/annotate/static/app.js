// weakseg annotate: the page. Plain JavaScript, no build step.
//
// The scribble of the open image is an H×W Uint8Array at the image's size (class id, 255 = not annotated): exactly
// the PNG the server writes, so what is shown is what training reads. A brush of width w stamps the pixels (dr, dc)
// with dr² + dc² ≤ (w/2)² around every pixel of the pointer's path (w = 1: one pixel, w = 3: a 3×3 square, like the
// ScribbleSup converter's line widths); the path between two pointer positions is the BLPSeg DDA line. Undo/redo
// keep, per stroke, the changed pixel indices with their old and new values.
"use strict";

const IGNORE = 255;
const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

const S = {
  classes: [], palette: [], images: [], index: -1, overlay: false,
  W: 0, H: 0, label: null, pixels: null, tags: new Set(), skipped: false, dirty: false,
  undo: [], redo: [], stroke: null, last: null,
  cls: 1, eraser: false, brush: 3, offsets: [],
  scale: 1, tx: 0, ty: 0, pan: null, spaceDown: false,
  layers: {}, busy: false, version: 0,
};
const MAX_HISTORY = 200;

// ---------------------------------------------------------------------------------------------------------------
// server
async function api(path, options = {}) {
  const headers = Object.assign({"X-Weakseg-Token": TOKEN}, options.headers || {});
  const resp = await fetch(path, Object.assign({}, options, {headers}));
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}

const imageUrl = (id, what) => "/api/images/" + encodeURIComponent(id) + "/" + what;

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
  document.body.dataset.status = kind || "ok";
}

function showProgress(p) {
  $("progress").textContent = `annotated ${p.annotated} / ${p.total}` + (p.skipped ? ` (${p.skipped} skipped)` : "");
}

// ---------------------------------------------------------------------------------------------------------------
// run-length code, row-major: [value, run, value, run, ...] (weakseg.annotate.store.rle_encode)
function rleEncode(arr) {
  const out = [];
  let v = arr[0], n = 0;
  for (let i = 0; i < arr.length; i++) {
    if (arr[i] === v) { n++; } else { out.push(v, n); v = arr[i]; n = 1; }
  }
  if (arr.length) out.push(v, n);
  return out;
}

function rleDecode(rle, size) {
  const arr = new Uint8Array(size);
  let k = 0;
  for (let i = 0; i < rle.length; i += 2) { arr.fill(rle[i], k, k + rle[i + 1]); k += rle[i + 1]; }
  return arr;
}

// ---------------------------------------------------------------------------------------------------------------
// painting
function brushOffsets(w) {
  const r2 = (w / 2) * (w / 2), R = Math.floor(w / 2), out = [];
  for (let dr = -R; dr <= R; dr++) for (let dc = -R; dc <= R; dc++) if (dr * dr + dc * dc <= r2) out.push([dr, dc]);
  return out;
}

function setPixel(p, value) {
  const s = S.stroke;
  if (S.label[p] === value) return;
  if (!s.changed.has(p)) s.changed.set(p, S.label[p]);
  S.label[p] = value;
  paintPixel(p, value);
}

function paintPixel(p, value) {
  const q = 4 * p;
  if (value === IGNORE) { S.pixels.data[q + 3] = 0; return; }
  const c = S.palette[value] || [255, 255, 255];
  S.pixels.data[q] = c[0]; S.pixels.data[q + 1] = c[1]; S.pixels.data[q + 2] = c[2]; S.pixels.data[q + 3] = 255;
}

function stamp(r, c, value, box) {
  for (const [dr, dc] of S.offsets) {
    const rr = r + dr, cc = c + dc;
    if (rr < 0 || cc < 0 || rr >= S.H || cc >= S.W) continue;
    setPixel(rr * S.W + cc, value);
  }
  const R = Math.floor(S.brush / 2);
  box.r0 = Math.min(box.r0, r - R); box.r1 = Math.max(box.r1, r + R);
  box.c0 = Math.min(box.c0, c - R); box.c1 = Math.max(box.c1, c + R);
}

// the BLPSeg DDA line (weakseg.data.scribble_xml.polyline_pixels): both ends, and for m = max(|Δr|, |Δc|) > 1 the
// pixels trunc(r1 + i·Δr/m), trunc(c1 + i·Δc/m), i = 0..m−1
function segment(r1, c1, r2, c2, value) {
  const box = {r0: Infinity, r1: -Infinity, c0: Infinity, c1: -Infinity};
  stamp(r1, c1, value, box);
  stamp(r2, c2, value, box);
  const dr = r2 - r1, dc = c2 - c1, m = Math.max(Math.abs(dr), Math.abs(dc));
  if (m > 1) {
    for (let i = 0; i < m; i++) stamp(Math.trunc(r1 + (i * dr) / m), Math.trunc(c1 + (i * dc) / m), value, box);
  }
  redraw(box);
}

function redraw(box) {
  const ctx = $("scribble-layer").getContext("2d");
  const c0 = Math.max(0, box.c0), r0 = Math.max(0, box.r0);
  const c1 = Math.min(S.W - 1, box.c1), r1 = Math.min(S.H - 1, box.r1);
  if (c1 < c0 || r1 < r0) return;
  ctx.putImageData(S.pixels, 0, 0, c0, r0, c1 - c0 + 1, r1 - r0 + 1);
}

function redrawAll() {
  for (let p = 0; p < S.label.length; p++) paintPixel(p, S.label[p]);
  $("scribble-layer").getContext("2d").putImageData(S.pixels, 0, 0);
}

function eventPixel(e) {
  const rect = $("scribble-layer").getBoundingClientRect();
  const c = Math.floor(((e.clientX - rect.left) / rect.width) * S.W);
  const r = Math.floor(((e.clientY - rect.top) / rect.height) * S.H);
  return [Math.min(S.H - 1, Math.max(0, r)), Math.min(S.W - 1, Math.max(0, c))];
}

function strokeValue() { return S.eraser ? IGNORE : S.cls; }

function beginStroke(e) {
  S.stroke = {changed: new Map(), value: strokeValue()};
  const [r, c] = eventPixel(e);
  S.last = [r, c];
  segment(r, c, r, c, S.stroke.value);
}

function moveStroke(e) {
  const [r, c] = eventPixel(e);
  segment(S.last[0], S.last[1], r, c, S.stroke.value);
  S.last = [r, c];
}

function endStroke() {
  const s = S.stroke;
  S.stroke = null;
  if (!s || s.changed.size === 0) return;
  const idx = Int32Array.from(s.changed.keys()), old = Uint8Array.from(s.changed.values());
  pushHistory({idx, old, value: s.value});
  renderTags();  // a scribbled class shows as present (the server adds it to the tags)
  markDirty();
}

function pushHistory(step) {
  S.undo.push(step);
  if (S.undo.length > MAX_HISTORY) S.undo.shift();
  S.redo = [];
}

function applyStep(step, forward) {
  for (let k = 0; k < step.idx.length; k++) {
    const p = step.idx[k], v = forward ? (step.values ? step.values[k] : step.value) : step.old[k];
    S.label[p] = v;
    paintPixel(p, v);
  }
  $("scribble-layer").getContext("2d").putImageData(S.pixels, 0, 0);
  renderTags();
  markDirty();
}

function undo() { const s = S.undo.pop(); if (s) { applyStep(s, false); S.redo.push(s); } }
function redo() { const s = S.redo.pop(); if (s) { applyStep(s, true); S.undo.push(s); } }

function clearAll() {
  const idx = [], old = [];
  for (let p = 0; p < S.label.length; p++) if (S.label[p] !== IGNORE) { idx.push(p); old.push(S.label[p]); }
  if (!idx.length) return;
  const step = {idx: Int32Array.from(idx), old: Uint8Array.from(old), value: IGNORE};
  pushHistory(step);
  applyStep(step, true);
}

function markDirty() { S.dirty = true; S.version++; setStatus("unsaved changes", "dirty"); }

// ---------------------------------------------------------------------------------------------------------------
// view: zoom and pan (the stage is translated, then scaled, from its top-left corner)
function applyView() {
  $("stage").style.transform = `translate(${S.tx}px, ${S.ty}px) scale(${S.scale})`;
  $("zoom-value").textContent = Math.round(S.scale * 100) + " %";
}

function fit() {
  const vp = $("viewport").getBoundingClientRect();
  S.scale = Math.min((vp.width - 20) / S.W, (vp.height - 20) / S.H);
  S.tx = (vp.width - S.W * S.scale) / 2;
  S.ty = (vp.height - S.H * S.scale) / 2;
  applyView();
}

function zoomAt(factor, cx, cy) {
  const vp = $("viewport").getBoundingClientRect();
  const x = cx === undefined ? vp.width / 2 : cx - vp.left, y = cy === undefined ? vp.height / 2 : cy - vp.top;
  const s = Math.min(64, Math.max(0.05, S.scale * factor));
  S.tx = x - ((x - S.tx) * s) / S.scale;
  S.ty = y - ((y - S.ty) * s) / S.scale;
  S.scale = s;
  applyView();
}

// ---------------------------------------------------------------------------------------------------------------
// panel
function renderClasses() {
  const ul = $("classes");
  ul.textContent = "";
  S.classes.forEach((name, i) => {
    const li = document.createElement("li");
    const label = document.createElement("label");
    label.dataset.cls = i;
    const radio = document.createElement("input");
    radio.type = "radio"; radio.name = "cls"; radio.value = i; radio.id = "cls-" + i;
    radio.addEventListener("change", () => selectClass(i));
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${S.palette[i].join(",")})`;
    const text = document.createElement("span");
    text.textContent = name;
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = i < 9 ? String(i + 1) : i === 9 ? "0" : "";
    label.append(radio, sw, text, key);
    li.append(label);
    ul.append(li);
  });
}

function selectClass(i) {
  if (i < 0 || i >= S.classes.length) return;
  S.cls = i;
  S.eraser = false;
  $("eraser").checked = false;
  for (const el of document.querySelectorAll("#classes label")) el.classList.toggle("active", +el.dataset.cls === i);
  $("cls-" + i).checked = true;
}

function renderTags() {
  const ul = $("tags");
  ul.textContent = "";
  const scribbled = scribbledClasses();
  S.classes.forEach((name, i) => {
    if (i === 0) return;  // background is always present
    const li = document.createElement("li");
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.id = "tag-" + i; box.checked = S.tags.has(i) || scribbled.has(i);
    box.disabled = scribbled.has(i);  // a scribbled class is present: the server adds it anyway
    box.addEventListener("change", () => { box.checked ? S.tags.add(i) : S.tags.delete(i); markDirty(); });
    label.append(box, " " + name);
    li.append(label);
    ul.append(li);
  });
}

function scribbledClasses() {
  const seen = new Set();
  if (!S.label) return seen;
  for (let p = 0; p < S.label.length; p++) if (S.label[p] !== IGNORE) seen.add(S.label[p]);
  return seen;
}

function setBrush(w) {
  S.brush = Math.min(51, Math.max(1, w));
  S.offsets = brushOffsets(S.brush);
  $("brush").value = S.brush;
  $("brush-value").textContent = S.brush + " px";
}

function renderJump() {
  const sel = $("jump");
  sel.textContent = "";
  S.images.forEach((im, i) => {
    const o = document.createElement("option");
    o.value = i;
    o.textContent = (im.status === "annotated" ? "✓ " : im.status === "skipped" ? "– " : "   ") + im.id;
    sel.append(o);
  });
  sel.value = S.index;
}

function setImageStatus(i, status) {
  S.images[i].status = status;
  const o = $("jump").options[i];
  if (o) o.textContent = (status === "annotated" ? "✓ " : status === "skipped" ? "– " : "   ") + S.images[i].id;
  $("skip").textContent = status === "skipped" ? "Unskip" : "Skip";
}

// ---------------------------------------------------------------------------------------------------------------
// images
async function loadBitmap(url) {
  const blob = await (await api(url)).blob();
  return createImageBitmap(blob);
}

async function openImage(i) {
  if (i < 0 || i >= S.images.length || S.busy) return;
  if (S.dirty && !(await save())) return;
  S.busy = true;
  const id = S.images[i].id;
  setStatus("loading…");
  try {
    const [ann, bitmap] = await Promise.all([api(imageUrl(id, "annotation")).then((r) => r.json()),
                                             loadBitmap(imageUrl(id, "image"))]);
    if (bitmap.width !== ann.width || bitmap.height !== ann.height) {
      throw new Error(`the browser decoded ${bitmap.width}×${bitmap.height}, the image is ${ann.width}×${ann.height}`);
    }
    S.index = i; S.W = ann.width; S.H = ann.height;
    S.label = rleDecode(ann.rle, S.W * S.H);
    S.tags = new Set(ann.tags);
    S.undo = []; S.redo = []; S.layers = {}; S.dirty = false;
    for (const id of ["image-layer", "overlay-layer", "scribble-layer"]) {
      const cv = $(id);
      cv.width = S.W; cv.height = S.H;
      cv.style.width = S.W + "px"; cv.style.height = S.H + "px";
    }
    $("image-layer").getContext("2d").drawImage(bitmap, 0, 0);
    S.pixels = new ImageData(S.W, S.H);
    redrawAll();
    renderTags();
    $("jump").value = i;
    setImageStatus(i, ann.status);
    fit();
    await drawOverlay();
    setStatus("saved");
    document.body.dataset.ready = id;
  } catch (err) {
    setStatus("error: " + err.message, "error");
  } finally {
    S.busy = false;
  }
}

async function save() {
  if (!S.label) return true;
  const i = S.index, id = S.images[i].id, version = S.version;
  setStatus("saving…", "dirty");
  try {
    const body = {width: S.W, height: S.H, rle: rleEncode(S.label), tags: [...S.tags].sort((a, b) => a - b)};
    const r = await (await api(imageUrl(id, "annotation"), {
      method: "PUT", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})).json();
    S.dirty = S.version !== version;  // strokes drawn while the request was on its way are still unsaved
    setImageStatus(i, r.status);
    showProgress(r.progress);
    if (S.dirty) setStatus("unsaved changes", "dirty"); else setStatus("saved");
    document.body.dataset.saved = id + ":" + Date.now();
    return true;
  } catch (err) {
    setStatus("not saved: " + err.message, "error");
    return false;
  }
}

async function toggleSkip() {
  const i = S.index, id = S.images[i].id;
  const skipped = S.images[i].status !== "skipped";
  try {
    if (S.dirty && !(await save())) return;
    const r = await (await api(imageUrl(id, "skip"), {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({skipped})})).json();
    setImageStatus(i, r.status);
    showProgress(r.progress);
    if (skipped) await openImage(i + 1);
  } catch (err) {
    setStatus("error: " + err.message, "error");
  }
}

function nextTodo() {
  for (let k = 1; k <= S.images.length; k++) {
    const j = (S.index + k) % S.images.length;
    if (S.images[j].status === "todo") return openImage(j);
  }
  setStatus("every image is annotated or skipped");
}

// ---------------------------------------------------------------------------------------------------------------
// model layers (--ckpt)
async function drawOverlay() {
  if (!S.overlay) return;
  const want = ["prediction", "uncertainty"].filter((l) => $("show-" + l).checked);
  const ctx = $("overlay-layer").getContext("2d");
  const id = S.images[S.index].id;
  try {
    for (const l of want) {
      if (!S.layers[l]) {
        $("model-status").textContent = "computing…";
        S.layers[l] = await loadBitmap(imageUrl(id, "overlay/" + l));
      }
    }
    $("model-status").textContent = "";
  } catch (err) {
    $("model-status").textContent = "error: " + err.message;
  }
  if (S.images[S.index].id !== id) return;
  ctx.clearRect(0, 0, S.W, S.H);
  for (const l of want) if (S.layers[l]) ctx.drawImage(S.layers[l], 0, 0);
  $("overlay-layer").style.opacity = $("overlay-opacity").value / 100;
}

// ---------------------------------------------------------------------------------------------------------------
// input
function bindPointer() {
  const vp = $("viewport");
  vp.addEventListener("contextmenu", (e) => e.preventDefault());
  vp.addEventListener("pointerdown", (e) => {
    if (!S.label || S.busy) return;
    vp.setPointerCapture(e.pointerId);
    if (e.button === 1 || e.button === 2 || (e.button === 0 && S.spaceDown)) {
      S.pan = {x: e.clientX, y: e.clientY, tx: S.tx, ty: S.ty};
      vp.classList.add("panning");
    } else if (e.button === 0) {
      beginStroke(e);
    }
    e.preventDefault();
  });
  vp.addEventListener("pointermove", (e) => {
    if (S.pan) {
      S.tx = S.pan.tx + e.clientX - S.pan.x; S.ty = S.pan.ty + e.clientY - S.pan.y;
      applyView();
    } else if (S.stroke) {
      moveStroke(e);
    }
  });
  const up = () => {
    if (S.pan) { S.pan = null; vp.classList.remove("panning"); }
    if (S.stroke) endStroke();
  };
  vp.addEventListener("pointerup", up);
  vp.addEventListener("pointercancel", up);
  vp.addEventListener("wheel", (e) => {
    e.preventDefault();
    zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX, e.clientY);
  }, {passive: false});
}

function bindKeys() {
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "SELECT") return;
    if (e.target.type === "range" && e.key.startsWith("Arrow")) return;  // the slider's own keys
    const k = e.key, ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && k.toLowerCase() === "s") { e.preventDefault(); save(); return; }
    if (ctrl && k.toLowerCase() === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); return; }
    if (ctrl && k.toLowerCase() === "y") { e.preventDefault(); redo(); return; }
    if (ctrl || e.altKey) return;
    if (k === " ") { S.spaceDown = true; $("viewport").classList.add("panning"); e.preventDefault(); return; }
    if (/^[0-9]$/.test(k)) { selectClass(k === "0" ? 9 : +k - 1); return; }
    const actions = {
      e: () => { S.eraser = !S.eraser; $("eraser").checked = S.eraser; },
      "[": () => setBrush(S.brush - (S.brush > 3 ? 2 : 1)), "]": () => setBrush(S.brush + (S.brush >= 3 ? 2 : 1)),
      n: () => openImage(S.index + 1), ArrowRight: () => openImage(S.index + 1),
      p: () => openImage(S.index - 1), ArrowLeft: () => openImage(S.index - 1),
      t: nextTodo, k: toggleSkip, f: fit,
      "+": () => zoomAt(1.25), "=": () => zoomAt(1.25), "-": () => zoomAt(1 / 1.25),
      m: () => toggleLayer("prediction"), u: () => toggleLayer("uncertainty"),
    };
    const fn = actions[k] || actions[k.toLowerCase()];
    if (fn) { e.preventDefault(); fn(); }
  });
  document.addEventListener("keyup", (e) => {
    if (e.key === " ") { S.spaceDown = false; $("viewport").classList.remove("panning"); }
  });
}

function toggleLayer(l) {
  if (!S.overlay) return;
  $("show-" + l).checked = !$("show-" + l).checked;
  drawOverlay();
}

function bindPanel() {
  $("prev").addEventListener("click", () => openImage(S.index - 1));
  $("next").addEventListener("click", () => openImage(S.index + 1));
  $("next-todo").addEventListener("click", nextTodo);
  $("skip").addEventListener("click", toggleSkip);
  $("save").addEventListener("click", save);
  $("jump").addEventListener("change", (e) => openImage(+e.target.value));
  $("eraser").addEventListener("change", (e) => { S.eraser = e.target.checked; });
  $("brush").addEventListener("input", (e) => setBrush(+e.target.value));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearAll);
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.25));
  $("zoom-fit").addEventListener("click", fit);
  $("scribble-opacity").addEventListener("input", (e) => { $("scribble-layer").style.opacity = e.target.value / 100; });
  $("show-prediction").addEventListener("change", drawOverlay);
  $("show-uncertainty").addEventListener("change", drawOverlay);
  $("overlay-opacity").addEventListener("input", (e) => { $("overlay-layer").style.opacity = e.target.value / 100; });
  window.addEventListener("resize", () => { if (S.label) fit(); });
  window.addEventListener("beforeunload", (e) => { if (S.dirty) { e.preventDefault(); e.returnValue = ""; } });
  // blur buttons after a click so that keyboard shortcuts keep working
  for (const b of document.querySelectorAll("button")) b.addEventListener("mouseup", () => b.blur());
}

async function main() {
  bindPanel(); bindPointer(); bindKeys();
  setBrush(3);
  $("scribble-layer").style.opacity = $("scribble-opacity").value / 100;
  try {
    const session = await (await api("/api/session")).json();
    S.classes = session.classes; S.palette = session.palette; S.images = session.images; S.overlay = session.overlay;
    // VOC's background colour is black, invisible on dark photos: the page shows it in cyan (the PNG keeps ids)
    if (S.palette[0].every((v) => v === 0)) S.palette[0] = [0, 220, 255];
    $("model-section").hidden = !S.overlay;
    if (S.overlay) $("show-uncertainty").checked = true;
    renderClasses();
    selectClass(S.classes.length > 1 ? 1 : 0);
    renderJump();
    showProgress(session.progress);
    await openImage(Math.max(0, S.images.findIndex((im) => im.id === session.resume)));
  } catch (err) {
    setStatus("error: " + err.message, "error");
  }
}

main();
