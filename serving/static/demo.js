// ferflow web demo: upload a photo or stream webcam frames to POST /predict, draw the boxes
// and labels over the image and one bar per class for each face. In webcam mode faces are
// tracked from frame to frame and their class probabilities smoothed over time, as
// `ferflow analyze --smooth` does, and a timeline plots the main face's last 20 s. A photo's
// result can be downloaded as the server's JSON; example photos come from GET /examples.
// Plain JS, no dependencies (the page works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  file: $("file"), webcam: $("webcam"), apikey: $("apikey"), status: $("status"), stage: $("stage"),
  photo: $("photo"), video: $("video"), overlay: $("overlay"), faces: $("faces"), model: $("model"),
  live: $("live"), timeline: $("timeline"), legend: $("legend"), frame: $("frame"),
  download: $("download"), exampleList: $("example-list"), noExamples: $("no-examples"),
};
const MIN_DISPLAY_PX = 320; // a smaller photo is scaled up to this on its longer side
const FRAME_INTERVAL_MS = 300; // webcam: a few frames per second, one request in flight at most
// The defaults of `ferflow analyze` (ferflow/footage.py AnalyzeConfig, Tracker).
const SMOOTH_S = 0.5; // time constant of the moving average
const MIN_IOU = 0.3; // a face continues a track when the boxes overlap this much
const MAX_GAP_S = 1.0; // a track survives this long without a matching face
const TIMELINE_S = 20; // the timeline shows the last 20 s
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"]; // matplotlib's tab10, as in `ferflow analyze --plots`
let stream = null;
let timer = null;
let busy = false;
let photoUrl = null;
let downloadUrl = null;
let classes = null; // from GET /model; the first result's score keys when that is refused

// --- tracking and smoothing (pure; window.ferflowDemo exposes them) -------------------------

function iou(a, b) {
  const [ax, ay, aw, ah] = a;
  const [bx, by, bw, bh] = b;
  const iw = Math.max(0, Math.min(ax + aw, bx + bw) - Math.max(ax, bx));
  const ih = Math.max(0, Math.min(ay + ah, by + bh) - Math.max(ay, by));
  const inter = iw * ih;
  const union = aw * ah + bw * bh - inter;
  return union > 0 ? inter / union : 0;
}

// The weight of a new frame dt seconds after the last one: 1 - exp(-dt/tau).
function emaWeight(dtS, tauS = SMOOTH_S) {
  return tauS > 0 ? 1 - Math.exp(-Math.max(dtS, 0) / tauS) : 1;
}

class Tracker {
  constructor(minIou = MIN_IOU, maxGapS = MAX_GAP_S, tauS = SMOOTH_S) {
    Object.assign(this, { minIou, maxGapS, tauS, tracks: new Map(), nextId: 0 });
  }

  // Greedy matching of this frame's boxes to the live tracks, best overlap first; returns
  // one track id per box. Tracks unmatched for over maxGapS are dropped first.
  update(boxes, timeS) {
    for (const [id, t] of this.tracks) if (timeS - t.lastS > this.maxGapS) this.tracks.delete(id);
    const pairs = [];
    boxes.forEach((b, i) => this.tracks.forEach((t, id) => pairs.push([iou(b, t.box), i, id])));
    pairs.sort((p, q) => q[0] - p[0]);
    const ids = boxes.map(() => null);
    const taken = new Set();
    for (const [overlap, i, id] of pairs) {
      if (overlap < this.minIou) break;
      if (ids[i] === null && !taken.has(id)) {
        ids[i] = id;
        taken.add(id);
      }
    }
    boxes.forEach((box, i) => {
      if (ids[i] === null) {
        ids[i] = this.nextId++;
        this.tracks.set(ids[i], { box, lastS: timeS, smooth: null, smoothS: timeS });
      }
      Object.assign(this.tracks.get(ids[i]), { box, lastS: timeS });
    });
    return ids;
  }

  // The exponential moving average of one track's probabilities (an array in class order).
  smooth(id, probs, timeS) {
    const t = this.tracks.get(id);
    if (t.smooth === null) {
      t.smooth = probs.slice();
    } else {
      const w = emaWeight(timeS - t.smoothS, this.tauS);
      t.smooth = t.smooth.map((s, k) => (1 - w) * s + w * probs[k]);
    }
    t.smoothS = timeS;
    return t.smooth;
  }
}

// --- the timeline: the main face's smoothed probabilities over the last TIMELINE_S ----------

const timeline = {
  points: [], // {t, track, raw, smooth} (arrays in class order); smooth null: no face (a gap)
  received: 0, // points with a face since the webcam started

  reset() {
    this.points = [];
    this.received = 0;
    this.draw();
  },

  add(timeS, face) {
    const smooth = face ? classes.map((c) => face.smoothScores[c]) : null;
    this.points.push({ t: timeS, track: face ? face.track : null, raw: face ? face.raw : null, smooth });
    if (smooth) this.received += 1;
    while (this.points.length && this.points[0].t < timeS - TIMELINE_S) this.points.shift();
    els.timeline.dataset.points = String(this.received);
    this.draw(timeS);
  },

  draw(now = performance.now() / 1000) {
    const c = els.timeline;
    const ctx = c.getContext("2d");
    const { width: w, height: h } = c;
    const pad = { l: 30, r: 8, t: 8, b: 18 };
    const x = (t) => pad.l + ((t - (now - TIMELINE_S)) / TIMELINE_S) * (w - pad.l - pad.r);
    const y = (p) => pad.t + (1 - p) * (h - pad.t - pad.b);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#6b7385";
    ctx.strokeStyle = "#e7e9f0";
    ctx.lineWidth = 1;
    for (const p of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(pad.l, y(p));
      ctx.lineTo(w - pad.r, y(p));
      ctx.stroke();
      ctx.fillText(p.toFixed(1), 4, y(p) + 3);
    }
    ctx.fillText(`-${TIMELINE_S} s`, pad.l, h - 4);
    ctx.fillText("now", w - pad.r - 20, h - 4);
    (classes || []).forEach((_, k) => {
      ctx.strokeStyle = COLOURS[k % COLOURS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let last = null; // the track of the previous point: a new main face starts a new line
      for (const pt of this.points) {
        if (pt.smooth && pt.track === last) ctx.lineTo(x(pt.t), y(pt.smooth[k]));
        else if (pt.smooth) ctx.moveTo(x(pt.t), y(pt.smooth[k]));
        last = pt.smooth ? pt.track : null;
      }
      ctx.stroke();
    });
  },
};

function setClasses(names) {
  classes = names;
  els.legend.replaceChildren(...names.map((name, k) => {
    const item = document.createElement("span");
    item.className = "item";
    item.style.setProperty("--colour", COLOURS[k % COLOURS.length]);
    item.textContent = name;
    return item;
  }));
}

let tracker = new Tracker();

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
    setClasses(m.classes);
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

// Each face's raw label and scores; webcam faces also carry `track`, and the smoothed
// `smoothLabel` and `smoothScores`, which are then shown instead (the raw label small).
function render(result, width, height) {
  els.overlay.replaceChildren();
  els.faces.replaceChildren();
  result.faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const smoothed = face.smoothScores !== undefined;
    const shown = smoothed ? face.smoothLabel : face.label;
    const scores = smoothed ? face.smoothScores : face.scores;
    const name = smoothed ? `#${face.track}` : `${i + 1}`;
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.label = face.label;
    if (smoothed) {
      box.dataset.smoothLabel = face.smoothLabel;
      box.dataset.track = String(face.track);
    }
    box.dataset.box = face.box.join(",");
    Object.assign(box.style, {
      left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
      width: `${(100 * w) / width}%`, height: `${(100 * h) / height}%`,
    });
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = `${name}: ${shown} ${Math.round(100 * scores[shown])}%`;
    box.appendChild(tag);
    els.overlay.appendChild(box);

    const card = document.createElement("div");
    card.className = "face";
    card.dataset.label = face.label;
    if (smoothed) card.dataset.smoothLabel = face.smoothLabel;
    const title = document.createElement("h3");
    title.textContent = `Face ${name}: ${shown}`;
    if (smoothed) {
      const raw = document.createElement("small");
      raw.className = "raw";
      raw.textContent = `smoothed ${SMOOTH_S} s · this frame: ${face.label} ` +
        `${Math.round(100 * face.scores[face.label])}%`;
      title.append(" ", raw);
    }
    card.appendChild(title);
    const ranked = Object.entries(scores).sort((a, b) => b[1] - a[1]);
    for (const [cls, p] of ranked) {
      const row = document.createElement("div");
      row.className = cls === shown ? "bar top" : "bar";
      const label = document.createElement("span");
      label.textContent = cls;
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
  keepTagsInside();
  const n = result.faces.length;
  setStatus(`${n === 0 ? "no face found" : n === 1 ? "1 face" : `${n} faces`} · ${result.ms} ms · ` +
    `model ${result.model.name} ${result.model.version}`);
}

// Moves each face's tag inside the frame: inside its box when there is no room above it,
// and left along the box when it would stick out on the right (a narrow photo).
function keepTagsInside() {
  const frame = els.frame.getBoundingClientRect();
  for (const tag of els.overlay.querySelectorAll(".tag")) {
    if (tag.getBoundingClientRect().top < frame.top) tag.classList.add("inside");
    const t = tag.getBoundingClientRect();
    const shift = Math.min(t.right - frame.right, t.left - frame.left);
    if (shift > 0) tag.style.left = `${-3 - shift}px`;
  }
}

// Photos smaller than MIN_DISPLAY_PX are shown larger (boxes are in percent: they follow).
function sizePhoto(img) {
  const longer = Math.max(img.naturalWidth, img.naturalHeight);
  const scale = longer > 0 && longer < MIN_DISPLAY_PX ? MIN_DISPLAY_PX / longer : 1;
  img.style.width = scale > 1 ? `${Math.round(img.naturalWidth * scale)}px` : "";
}

// The download button offers the server's answer for the photo shown, as a JSON file.
function setDownload(result, filename) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = null;
  els.download.hidden = result === null;
  if (result === null) return;
  const { ms, ...body } = result; // ms is the demo's own timing, not part of the answer
  const blob = new Blob([JSON.stringify(body, null, 2) + "\n"], { type: "application/json" });
  downloadUrl = URL.createObjectURL(blob);
  els.download.href = downloadUrl;
  els.download.download = `${filename.replace(/\.[^.]*$/, "") || "photo"}.ferflow.json`;
}

async function analyzeFile(file) {
  if (!file) return;
  stopWebcam();
  setDownload(null);
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  els.video.hidden = true;
  els.live.hidden = true;
  els.photo.hidden = true; // until it has loaded: no broken-image icon
  els.overlay.replaceChildren();
  els.faces.replaceChildren();
  setStatus("analysing…");
  const loaded = await new Promise((resolve) => {
    els.photo.onload = () => resolve(true);
    els.photo.onerror = () => resolve(false); // the server explains what is wrong with the file
    els.photo.src = photoUrl;
  });
  if (loaded) sizePhoto(els.photo);
  els.photo.hidden = !loaded;
  els.stage.hidden = !loaded;
  try {
    const result = await predict(file, file.name || "upload");
    render(result, els.photo.naturalWidth, els.photo.naturalHeight);
    setDownload(result, file.name || "upload");
  } catch (e) {
    setStatus(e.message, true);
  }
}

// The example photos the server offers (GET /examples), as thumbnail buttons.
async function loadExamples() {
  let list = [];
  try {
    const r = await fetch("/examples");
    if (r.ok) list = (await r.json()).examples;
  } catch (e) {
    list = [];
  }
  els.noExamples.hidden = list.length > 0;
  els.exampleList.replaceChildren(...list.map(({ name, url }, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = name;
    button.dataset.example = name;
    const img = document.createElement("img");
    img.src = url;
    img.alt = `example photo ${i + 1}`;
    button.appendChild(img);
    button.addEventListener("click", async () => {
      try {
        const r = await fetch(url);
        if (!r.ok) throw new Error(`example ${name}: HTTP ${r.status}`);
        const blob = await r.blob();
        analyzeFile(new File([blob], name, { type: blob.type }));
      } catch (e) {
        setStatus(e.message, true);
      }
    });
    return button;
  }));
}

async function sendFrame() {
  if (busy || !stream || els.video.videoWidth === 0) return;
  busy = true;
  const canvas = document.createElement("canvas");
  canvas.width = els.video.videoWidth;
  canvas.height = els.video.videoHeight;
  canvas.getContext("2d").drawImage(els.video, 0, 0);
  try {
    const timeS = performance.now() / 1000; // when the frame was taken
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
    const result = await predict(blob, "frame.jpg");
    if (!stream) return;
    smoothFaces(result.faces, timeS);
    render(result, canvas.width, canvas.height);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    busy = false;
  }
}

// Tracks the faces of one webcam frame, adds their smoothed scores, and gives the timeline
// the largest face's.
function smoothFaces(faces, timeS) {
  if (!classes && faces.length) setClasses(Object.keys(faces[0].scores));
  const ids = tracker.update(faces.map((f) => f.box), timeS);
  faces.forEach((face, i) => {
    const raw = classes.map((c) => face.scores[c]);
    const smooth = tracker.smooth(ids[i], raw, timeS);
    face.track = ids[i];
    face.raw = raw;
    face.smoothScores = Object.fromEntries(classes.map((c, k) => [c, smooth[k]]));
    face.smoothLabel = classes[smooth.indexOf(Math.max(...smooth))];
  });
  const main = faces.reduce((a, f) => (!a || f.box[2] * f.box[3] > a.box[2] * a.box[3] ? f : a), null);
  timeline.add(timeS, main);
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
  setDownload(null); // a webcam frame's answer is gone a moment later
  tracker = new Tracker();
  timeline.reset();
  els.photo.hidden = true;
  els.video.hidden = false;
  els.live.hidden = false;
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

els.file.addEventListener("change", () => {
  const file = els.file.files[0];
  els.file.value = ""; // choosing the same photo again (after the webcam) analyses it again
  analyzeFile(file);
});
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
loadExamples();
window.ferflowDemo = { iou, emaWeight, Tracker, timeline };
