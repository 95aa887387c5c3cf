// voicepipe studio: one prompt at a time, recorded from the microphone as lossless 16-bit WAV, checked by the
// server at once. Plain JS, no build step. Every take is written to IndexedDB before it is uploaded and removed
// only once the server has stored it, so a closed tab or a server restart loses nothing.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  prompts: [], takes: [], idx: 0, progress: null, last: null, lastBlobUrl: null,
  ctx: null, stream: null, node: null, chunks: [], nSamples: 0, state: "idle", stopResolve: null,
  peakHold: 0, peakAt: 0, clipAt: 0, uploading: 0,
};

// ------------------------------------------------------------------ IndexedDB: takes not yet stored by the server
const DB_NAME = "voicepipe-studio";
function db() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore("pending", { keyPath: "key" });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function idb(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("pending", mode);
    const out = fn(tx.objectStore("pending"));
    tx.oncomplete = () => resolve(out && out.result !== undefined ? out.result : undefined);
    tx.onerror = () => reject(tx.error);
  });
}
const pendingPut = (rec) => idb("readwrite", (s) => s.put(rec));
const pendingDel = (key) => idb("readwrite", (s) => s.delete(key));
const pendingAll = () => idb("readonly", (s) => s.getAll());

// ------------------------------------------------------------------ server
async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.error) || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

async function loadSession() {
  const s = await api("/api/session");
  S.session = s;
  S.prompts = s.prompts;
  S.takes = s.takes;
  S.progress = s.progress;
  $("who").textContent = `${s.speaker} / ${s.session} \u00b7 ${s.script_name} (${s.prompts.length} prompts, ${s.language})`;
  document.title = `studio \u00b7 ${s.speaker}/${s.session}`;
}

// ------------------------------------------------------------------ rendering
function keptIds() { return new Set(S.takes.filter((t) => t.status === "kept").map((t) => t.prompt_id)); }
function takesOf(pid) { return S.takes.filter((t) => t.prompt_id === pid); }
function firstTodo(from = 0) {
  const kept = keptIds();
  for (let i = 0; i < S.prompts.length; i++) {
    const j = (from + i) % S.prompts.length;
    if (!kept.has(S.prompts[j].id)) return j;
  }
  return from;
}

function renderPrompt() {
  const p = S.prompts[S.idx];
  const n = takesOf(p.id).length;
  const kept = keptIds().has(p.id);
  $("prompt-meta").textContent = `Prompt ${S.idx + 1} of ${S.prompts.length}` + (n ? ` \u00b7 ${n} take${n > 1 ? "s" : ""}` : "")
    + (kept ? " \u00b7 kept" : "");
  $("prompt-text").textContent = p.text;
  $("prompt-text").dataset.promptId = p.id;
}

function renderProgress() {
  const g = S.progress;
  if (!g) return;
  const frac = Math.min(1, g.kept_minutes / g.target_minutes);
  $("minutes-fill").style.width = `${(frac * 100).toFixed(1)}%`;
  $("minutes-text").textContent = `${g.kept_minutes.toFixed(1)} of ${g.target_minutes} min \u00b7 ${g.prompts_done}/${g.prompts_total} prompts`
    + ` \u00b7 ${g.recorded_minutes.toFixed(1)} min recorded`;
  const c = g.coverage;
  $("phon-fill").style.width = `${(c.phoneme_fraction * 100).toFixed(1)}%`;
  $("phon-text").textContent = `${c.phonemes}/${c.phonemes_total} phonemes \u00b7 ${c.diphones}/${c.diphones_total} diphones`;
  $("missing").textContent = c.missing_phonemes.length && c.phonemes
    ? `Not yet recorded: ${c.missing_phonemes.slice(0, 40).join(" ")}` : "";
}

function renderRecent() {
  const ol = $("recent");
  ol.innerHTML = "";
  for (const t of S.takes.slice(-12).reverse()) {
    const li = document.createElement("li");
    li.className = t.status;
    li.textContent = `${t.prompt_index + 1}. ${t.text.slice(0, 42)}${t.text.length > 42 ? "\u2026" : ""} (${t.status})`;
    ol.appendChild(li);
  }
}

function fmtMeasures(m) {
  const out = [];
  const add = (k, v) => { if (v !== undefined && v !== null) out.push(`<span>${k} <b>${v}</b></span>`); };
  add("length", m.duration_s !== undefined ? `${m.duration_s.toFixed(1)} s` : undefined);
  add("peak", m.peak_dbfs !== undefined ? `${m.peak_dbfs} dBFS` : undefined);
  add("loudness", m.speech_lufs !== undefined && m.speech_lufs !== null ? `${m.speech_lufs} LUFS` : undefined);
  add("SNR", m.snr_db !== undefined && m.snr_db !== null ? `${m.snr_db} dB` : undefined);
  if (m.dnsmos) add("DNSMOS", `${m.dnsmos.ovrl} (bak ${m.dnsmos.bak})`);
  add("rate", m.rate_per_s !== undefined ? `${m.rate_per_s} ${m.rate_unit}/s` : undefined);
  if (m.wer !== undefined && m.wer !== null) add("WER", `${Math.round(m.wer * 100)}%`);
  let html = out.join(" ");
  if (m.asr_text !== undefined) html += `<div>heard: \u201c${escapeHtml(m.asr_text)}\u201d</div>`;
  return html;
}
function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

function showTake(take) {
  S.last = take;
  $("result").hidden = false;
  const v = $("verdict");
  v.dataset.verdict = take.verdict;
  v.textContent = take.verdict === "keep"
    ? (take.issues.length ? "Good take (see the notes) \u2014 keep it: Enter" : "Good take \u2014 keep it: Enter")
    : "Redo recommended \u2014 Backspace to record it again (Enter keeps it anyway)";
  const ul = $("issues");
  ul.innerHTML = "";
  for (const i of take.issues) {
    const li = document.createElement("li");
    li.className = i.severity;
    li.dataset.code = i.code;
    li.textContent = i.message;
    ul.appendChild(li);
  }
  $("measures").innerHTML = fmtMeasures(take.measures || {});
  if (!S.lastBlobUrl || S.lastBlobFor !== take.id) {
    $("player").src = `/api/takes/${encodeURIComponent(take.id)}/audio`;
  }
  $("play").disabled = false;
  const undecided = take.status === "pending";
  $("keep").disabled = !undecided && take.status === "kept";
  $("redo").disabled = !undecided && take.status === "redo";
}

function hideResult() { $("result").hidden = true; S.last = null; $("keep").disabled = true; $("redo").disabled = true; }

function setStatus(state, text) {
  S.state = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
  $("record").disabled = state === "recording" || state === "checking";
  $("stop").disabled = state !== "recording";
}

function goTo(i) {
  if (S.state === "recording" || S.state === "checking") return;
  S.idx = Math.max(0, Math.min(S.prompts.length - 1, i));
  renderPrompt();
  const ts = takesOf(S.prompts[S.idx].id);
  const last = ts[ts.length - 1];
  if (last && last.status !== "redo") { showTake(last); } else { hideResult(); }
  setStatus("idle", last && last.status === "pending" ? "This take waits for keep or redo."
    : "Press R or Space to record the sentence above.");
  if (last && last.status === "pending" && last.checking) reviewTake(last);
}

// ------------------------------------------------------------------ microphone and level meter
async function openMic() {
  if (S.ctx) { if (S.ctx.state === "suspended") await S.ctx.resume(); return; }
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error("this page needs a secure context (http://localhost or https) and a browser with AudioWorklet");
  }
  S.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  });
  S.ctx = new AudioContext();
  await S.ctx.audioWorklet.addModule("/static/recorder-worklet.js");
  const src = S.ctx.createMediaStreamSource(S.stream);
  S.node = new AudioWorkletNode(S.ctx, "recorder", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1,
    channelCountMode: "explicit" });
  const mute = S.ctx.createGain();
  mute.gain.value = 0;
  src.connect(S.node).connect(mute).connect(S.ctx.destination);
  S.node.port.onmessage = (e) => {
    const d = e.data;
    if (d.level) meter(d.level);
    if (d.samples) {
      S.chunks.push(d.samples);
      S.nSamples += d.samples.length;
      const secs = S.nSamples / S.ctx.sampleRate;
      $("rec-time").dataset.seconds = secs.toFixed(2);
      if (S.state === "recording") $("status").textContent = `Recording\u2026 ${secs.toFixed(1)} s \u2014 Space to stop`;
    }
    if (d.done && S.stopResolve) { S.stopResolve(); S.stopResolve = null; }
  };
}

function meter({ peak, rms }) {
  const db = (x) => 20 * Math.log10(Math.max(x, 1e-6));
  const pos = (d) => Math.max(0, Math.min(1, (d + 60) / 60));
  const now = performance.now();
  if (peak >= S.peakHold || now - S.peakAt > 1500) { S.peakHold = peak; S.peakAt = now; }
  if (peak >= 0.99) S.clipAt = now;
  const w = pos(db(rms) + 3) * 100;  // RMS + 3 dB: about the level of a sine's peak
  const fill = $("meter-fill");
  fill.style.width = `${w}%`;
  fill.style.setProperty("--w", `${w > 0 ? (100 / w) * 100 : 100}%`);
  $("meter-peak").style.left = `calc(${pos(db(S.peakHold)) * 100}% - 2px)`;
  $("meter-db").textContent = S.peakHold < 3e-5 ? "silent" : `${db(S.peakHold).toFixed(1)} dBFS`;
  $("clip-led").classList.toggle("on", now - S.clipAt < 2000);
}

// ------------------------------------------------------------------ recording
async function startRecording() {
  if (S.state === "recording" || S.state === "checking") return;
  try {
    await openMic();
  } catch (e) {
    setStatus("error", `Microphone unavailable: ${e.message}`);
    return;
  }
  S.chunks = [];
  S.nSamples = 0;
  $("rec-time").dataset.seconds = "0";
  hideResult();
  S.node.port.postMessage("start");
  setStatus("recording", "Recording\u2026 0.0 s \u2014 Space to stop");
}

async function stopRecording() {
  if (S.state !== "recording") return;
  const done = new Promise((resolve) => { S.stopResolve = resolve; });
  S.node.port.postMessage("stop");
  await done;
  const wav = encodeWav(S.chunks, S.ctx.sampleRate);
  S.chunks = [];
  const p = S.prompts[S.idx];
  const rec = { key: `${S.session.speaker}/${S.session.session}/${Date.now()}`, speaker: S.session.speaker,
    session: S.session.session, promptId: p.id, blob: wav, created: new Date().toISOString() };
  try { await pendingPut(rec); } catch (e) { console.warn("IndexedDB unavailable", e); }
  if (S.lastBlobUrl) URL.revokeObjectURL(S.lastBlobUrl);
  S.lastBlobUrl = URL.createObjectURL(wav);
  $("player").src = S.lastBlobUrl;
  $("play").disabled = false;
  setStatus("checking", "Checking the take\u2026");
  await upload(rec, true);
}

function encodeWav(chunks, sr) {
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + 2 * n, true); str(8, "WAVE"); str(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, sr, true);
  v.setUint32(28, sr * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true); str(36, "data");
  v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++, o += 2) {
      const s = Math.max(-1, Math.min(1, c[i]));
      v.setInt16(o, s < 0 ? Math.round(s * 32768) : Math.round(s * 32767), true);
    }
  }
  return new Blob([buf], { type: "audio/wav" });
}

async function upload(rec, interactive) {
  S.uploading++;
  try {
    const out = await api(`/api/takes?prompt_id=${encodeURIComponent(rec.promptId)}`, {
      method: "POST", headers: { "Content-Type": rec.blob.type || "audio/wav" }, body: rec.blob });
    await pendingDel(rec.key).catch(() => {});
    mergeTake(out.take);
    S.progress = out.progress;
    renderProgress();
    renderRecent();
    $("net").textContent = "";
    if (interactive) {
      S.lastBlobFor = out.take.id;
      renderPrompt();
      reviewTake(out.take);
    }
    return true;
  } catch (e) {
    if (e.status && e.status < 500) {  // the server refused this audio: keeping it would not help
      await pendingDel(rec.key).catch(() => {});
      if (interactive) setStatus("error", `Not stored: ${e.message}`);
    } else {
      $("net").textContent = "server unreachable: takes are kept in this browser and uploaded when it is back";
      if (interactive) setStatus("error", "Saved in this browser; it will be uploaded when the server is back.");
    }
    return false;
  } finally {
    S.uploading--;
  }
}

// the fast checks answer at once; while the words and DNSMOS are still being checked, poll the take
function reviewTake(take) {
  showTake(take);
  if (take.checking) {
    setStatus("listening", take.verdict === "redo"
      ? "This take has problems \u2014 redo it (Backspace); still listening for the words\u2026"
      : "Levels are fine; listening for the words\u2026");
    clearTimeout(S.pollTimer);
    S.pollTimer = setTimeout(() => pollTake(take.id), 600);
    return;
  }
  setStatus("review", take.verdict === "keep" ? "Checked: keep it (Enter) or redo (Backspace)."
    : "Checked: this take has problems \u2014 redo it (Backspace) or keep it anyway (Enter).");
}

async function pollTake(id) {
  if (!S.last || S.last.id !== id || S.state === "recording") return;
  try {
    const out = await api(`/api/takes/${encodeURIComponent(id)}`);
    mergeTake(out.take);
    if (S.last && S.last.id === id) reviewTake(out.take);
  } catch (e) {
    S.pollTimer = setTimeout(() => pollTake(id), 2000);
  }
}

function mergeTake(t) {
  const i = S.takes.findIndex((x) => x.id === t.id);
  if (i >= 0) S.takes[i] = t; else S.takes.push(t);
}

async function flushPending() {
  let recs = [];
  try { recs = await pendingAll(); } catch (e) { return; }
  for (const r of recs) {
    if (r.speaker !== S.session.speaker || r.session !== S.session.session) continue;
    if (!(await upload(r, false))) break;
  }
}

// ------------------------------------------------------------------ keep / redo
async function decide(keep) {
  const t = S.last;
  if (!t || S.state === "recording" || S.state === "checking") return;
  try {
    const out = await api(`/api/takes/${encodeURIComponent(t.id)}/decision`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ keep }) });
    // keeping one take of a prompt sends its other kept takes back to redo: reload the list
    await loadSession();
    S.progress = out.progress;
    renderProgress();
    renderRecent();
    if (keep) {
      goTo(firstTodo(S.idx));
      setStatus("idle", "Kept. Next prompt \u2014 press R or Space to record.");
    } else {
      hideResult();
      renderPrompt();
      setStatus("idle", "Marked for redo \u2014 press R or Space to record it again.");
    }
  } catch (e) {
    setStatus("error", `Could not save the decision: ${e.message}`);
  }
}

function play() {
  const a = $("player");
  if (!a.src) return;
  a.currentTime = 0;
  a.play().catch(() => {});
}

// ------------------------------------------------------------------ keys and buttons
document.addEventListener("keydown", (e) => {
  if (e.target && ["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
  if (e.repeat) return;
  const k = e.key;
  if (k === " " || k === "Spacebar") {
    e.preventDefault();
    if (S.state === "recording") stopRecording(); else startRecording();
  } else if (k === "r" || k === "R") {
    e.preventDefault();
    if (S.state === "recording") stopRecording(); else startRecording();
  } else if (k === "s" || k === "S" || k === "Escape") {
    stopRecording();
  } else if (k === "Enter" || k === "k" || k === "K") {
    e.preventDefault();
    decide(true);
  } else if (k === "Backspace" || k === "x" || k === "X" || k === "Delete") {
    e.preventDefault();
    decide(false);
  } else if (k === "p" || k === "P") {
    play();
  } else if (k === "ArrowRight") {
    goTo(S.idx + 1);
  } else if (k === "ArrowLeft") {
    goTo(S.idx - 1);
  }
});
$("record").onclick = () => startRecording();
$("stop").onclick = () => stopRecording();
$("keep").onclick = () => decide(true);
$("redo").onclick = () => decide(false);
$("play").onclick = () => play();
$("prev").onclick = () => goTo(S.idx - 1);
$("next").onclick = () => goTo(S.idx + 1);
for (const b of document.querySelectorAll("button")) b.addEventListener("keydown", (e) => {
  if (e.key === " " || e.key === "Enter") e.preventDefault();  // keys act on the page, not the focused button
});

window.addEventListener("beforeunload", (e) => {
  if (S.state === "recording" || S.uploading > 0) { e.preventDefault(); e.returnValue = ""; }
});
setInterval(() => { if (S.session && S.state !== "recording" && S.state !== "checking") flushPending(); }, 10000);

// ------------------------------------------------------------------ start
(async function main() {
  try {
    await loadSession();
  } catch (e) {
    setStatus("error", `Cannot reach the studio server: ${e.message}`);
    return;
  }
  await flushPending();
  await loadSession();
  renderProgress();
  renderRecent();
  // resume: the prompt of an undecided last take, else the first prompt not yet kept
  const last = S.takes[S.takes.length - 1];
  const at = last && last.status === "pending" ? S.prompts.findIndex((p) => p.id === last.prompt_id) : -1;
  goTo(at >= 0 ? at : firstTodo(0));
  document.body.dataset.ready = "1";
})();
