// ferflow web demo: upload a photo or stream webcam frames to POST /predict, draw the boxes
// and labels over the image and one bar per class for each face. Plain JS, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), webcam: $("webcam"), apikey: $("apikey"), status: $("status"), stage: $("stage"),
  photo: $("photo"), video: $("video"), overlay: $("overlay"), faces: $("faces"), model: $("model"),
};
const FRAME_INTERVAL_MS = 300; // webcam: a few frames per second, one request in flight at most
let stream = null;
let timer = null;
let busy = false;
let photoUrl = null;

function setStatus(text, isError = false) {
  els.status.textContent = text;
  els.status.classList.toggle("error", isError);
}

function headers() {
  const key = els.apikey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModelInfo() {
  try {
    const r = await fetch("/model", { headers: headers() });
    if (r.status === 401) {
      els.model.textContent = "model: enter the API key to use this server";
      return;
    }
    const m = await r.json();
    els.model.textContent = `model: ${m.name} ${m.version} — classes: ${m.classes.join(", ")}`;
  } catch (e) {
    els.model.textContent = "model: unavailable";
  }
}

async function predict(blob, filename) {
  const form = new FormData();
  form.append("image", blob, filename);
  const started = performance.now();
  const r = await fetch("/predict", { method: "POST", body: form, headers: headers() });
  let body;
  try {
    body = await r.json();
  } catch (e) {
    throw new Error(`HTTP ${r.status}: the server did not answer JSON`);
  }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  body.ms = Math.round(performance.now() - started);
  return body;
}

function render(result, width, height) {
  els.overlay.replaceChildren();
  els.faces.replaceChildren();
  result.faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.label = face.label;
    box.dataset.box = face.box.join(",");
    Object.assign(box.style, {
      left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
      width: `${(100 * w) / width}%`, height: `${(100 * h) / height}%`,
    });
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = `${i + 1}: ${face.label} ${Math.round(100 * face.scores[face.label])}%`;
    box.appendChild(tag);
    els.overlay.appendChild(box);

    const card = document.createElement("div");
    card.className = "face";
    card.dataset.label = face.label;
    const title = document.createElement("h3");
    title.textContent = `Face ${i + 1}: ${face.label}`;
    card.appendChild(title);
    const ranked = Object.entries(face.scores).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of ranked) {
      const row = document.createElement("div");
      row.className = name === face.label ? "bar top" : "bar";
      const label = document.createElement("span");
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      track.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = `${(100 * p).toFixed(1)}%`;
      row.append(label, track, pct);
      card.appendChild(row);
    }
    els.faces.appendChild(card);
  });
  const n = result.faces.length;
  setStatus(`${n === 0 ? "no face found" : n === 1 ? "1 face" : `${n} faces`} · ${result.ms} ms · ` +
    `model ${result.model.name} ${result.model.version}`);
}

async function analyzeFile(file) {
  if (!file) return;
  stopWebcam();
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  els.video.hidden = true;
  els.photo.hidden = false;
  els.stage.hidden = false;
  els.overlay.replaceChildren();
  els.faces.replaceChildren();
  await new Promise((resolve) => {
    els.photo.onload = resolve;
    els.photo.onerror = resolve; // the server explains what is wrong with the file
    els.photo.src = photoUrl;
  });
  setStatus("analysing…");
  try {
    const result = await predict(file, file.name || "upload");
    render(result, els.photo.naturalWidth, els.photo.naturalHeight);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function sendFrame() {
  if (busy || !stream || els.video.videoWidth === 0) return;
  busy = true;
  const canvas = document.createElement("canvas");
  canvas.width = els.video.videoWidth;
  canvas.height = els.video.videoHeight;
  canvas.getContext("2d").drawImage(els.video, 0, 0);
  try {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    const result = await predict(blob, "frame.jpg");
    if (stream) render(result, canvas.width, canvas.height);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    busy = false;
  }
}

async function startWebcam() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("this browser gives no webcam access (it needs https or localhost)", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    setStatus(`webcam unavailable: ${e.message}`, true);
    return;
  }
  els.video.srcObject = stream;
  els.photo.hidden = true;
  els.video.hidden = false;
  els.stage.hidden = false;
  els.webcam.textContent = "Stop the webcam";
  els.webcam.classList.add("active");
  setStatus("webcam on: sending a few frames per second");
  timer = setInterval(sendFrame, FRAME_INTERVAL_MS);
}

function stopWebcam() {
  if (timer) clearInterval(timer);
  timer = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  els.video.srcObject = null;
  els.webcam.textContent = "Use the webcam";
  els.webcam.classList.remove("active");
}

els.file.addEventListener("change", () => analyzeFile(els.file.files[0]));
els.webcam.addEventListener("click", () => (stream ? stopWebcam() : startWebcam()));
els.apikey.addEventListener("change", loadModelInfo);
document.addEventListener("dragover", (e) => {
  e.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  analyzeFile(e.dataTransfer.files[0]);
});
loadModelInfo();
