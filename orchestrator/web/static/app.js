"use strict";
// The restoration page: plain DOM, no framework, so it loads fast on a phone and needs
// nothing from the internet.

const $ = (id) => document.getElementById(id);
const state = { config: null, upload: null, tasks: [], preview: null, jobId: null, polling: null, startedFor: null, polls: 0 };

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `request failed (${status})`);
    this.status = status;
    this.body = body;
  }
}

function token() { return sessionStorage.getItem("token") || ""; }

async function api(method, path, body, raw) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let payload;
  if (raw !== undefined) { payload = raw; headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, { method, headers, body: payload });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) askForToken(data.error);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function say(text, ok) {
  const box = $("message");
  box.textContent = text;
  box.classList.toggle("ok", Boolean(ok));
  box.hidden = !text;
}

function askForToken(why) {
  $("token-section").hidden = false;
  if (why && token()) say(`The token was not accepted: ${why}`);
  $("token").focus();
}

// ---- upload ---------------------------------------------------------------------------

function uploadKey(file) { return `upload:${file.name}:${file.size}:${file.lastModified}`; }

async function startUpload(file) {
  say("");
  $("upload-progress").hidden = false;
  $("upload-resume").hidden = true;
  state.file = file;
  try {
    const info = await existingUpload(file) || await api("POST", "/api/uploads", { name: file.name, size: file.size });
    localStorage.setItem(uploadKey(file), info.id);
    state.upload = await sendChunks(file, info);
    $("upload-text").textContent = `Uploaded ${file.name} (${megabytes(file.size)}).`;
    await uploaded();
  } catch (error) {
    $("upload-text").textContent = `The upload stopped: ${error.message}`;
    $("upload-resume").hidden = false;
  }
}

async function existingUpload(file) {
  const id = localStorage.getItem(uploadKey(file));
  if (!id) return null;
  try { return await api("GET", `/api/uploads/${id}`); } catch (error) { return null; }
}

async function sendChunks(file, info) {
  let offset = info.received, failures = 0;
  const size = state.config.chunk_bytes;
  while (offset < file.size) {
    showUpload(file, offset);
    try {
      const reply = await api("PUT", `/api/uploads/${info.id}?offset=${offset}`, undefined, file.slice(offset, offset + size));
      offset = reply.received;
      failures = 0;
    } catch (error) {
      // The server says where it stands; a flaky connection is retried a few times.
      if (error.body && error.body.received !== undefined) offset = error.body.received;
      else if (++failures > 4 || error.status === 401 || error.status === 413) throw error;
      else await sleep(1000 * failures);
    }
  }
  showUpload(file, offset);
  return { ...info, received: offset, complete: true };
}

function showUpload(file, offset) {
  $("upload-bar").value = file.size ? offset / file.size : 1;
  $("upload-text").textContent = `Uploading ${file.name}: ${megabytes(offset)} of ${megabytes(file.size)}`;
}

async function uploaded() {
  for (const id of ["inspect-section", "choose-section", "preview-section", "job-section"]) $(id).hidden = false;
  setStartable();
  $("preview-result").hidden = true;
  $("job").hidden = true;
  await runInspect();
}

// ---- inspect --------------------------------------------------------------------------

async function runInspect() {
  $("findings").innerHTML = "<li>Looking at the video…</li>";
  try {
    const result = await api("POST", `/api/uploads/${state.upload.id}/inspect`, { tasks: state.tasks });
    showFindings(result.report);
    $("inspect-text").textContent = result.text;
    $("preview-at").max = Math.max(0, result.report.video.duration_s - 0.5);
  } catch (error) {
    $("findings").innerHTML = "";
    for (const id of ["inspect-section", "choose-section", "preview-section", "job-section"]) $(id).hidden = true;
    say(`We could not read this video: ${error.message}`);
  }
}

function showFindings(report) {
  const v = report.video, items = [];
  items.push(`${v.width}×${v.height} ${v.codec}, ${v.duration_s.toFixed(1)} s at ${rate(v.frame_rate)} frames/s${v.variable_frame_rate ? " (varying)" : ""}`);
  items.push(v.interlaced ? `Interlaced (${v.field_order === "tff" ? "top" : "bottom"} field first): it will be deinterlaced` : "Progressive (not interlaced)");
  items.push(`Picture shape ${v.display_aspect_ratio} (pixel shape ${v.sample_aspect_ratio})${v.rotation ? `, rotated ${v.rotation}°` : ""}`);
  items.push(`Real detail about ${report.native_resolution.width}×${report.native_resolution.height}`);
  items.push(`${report.shots.count} shot${report.shots.count === 1 ? "" : "s"}`);
  for (const span of report.black_and_white) items.push(`Black and white from ${span.from_s.toFixed(1)} s to ${span.to_s.toFixed(1)} s`);
  for (const scene of report.grey_scenes || []) items.push(`Colour for ${scene.from_s.toFixed(1)}–${scene.to_s.toFixed(1)} s: ${scene.colour}`);
  for (const o of report.overlays || []) items.push(`Burned-in text (a date stamp?) from ${o.from_s.toFixed(1)} s to ${o.to_s.toFixed(1)} s at ${o.box[0]},${o.box[1]} (${o.box[2]}×${o.box[3]})`);
  const bands = Object.entries(report.damaged_bands || {}).filter(([, px]) => px > 0);
  if (bands.length) items.push(`Damaged edges: ${bands.map(([side, px]) => `${side} ${px} px`).join(", ")} (of the ${v.width}×${v.height} frame)`);
  items.push(report.audio.length ? `${report.audio.length} sound track${report.audio.length > 1 ? "s" : ""} (kept as they are)` : "No sound");
  $("findings").replaceChildren(...items.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
}

// ---- presets and tasks ------------------------------------------------------------------

function buildChoices() {
  const { presets, tasks, task_labels: labels } = state.config;
  const presetBox = $("presets"), taskBox = $("tasks");
  for (const [key, preset] of Object.entries(presets)) presetBox.append(choice("radio", "preset", key, preset.label));
  presetBox.append(choice("radio", "preset", "custom", "My own choice of tasks"));
  for (const task of tasks) taskBox.append(choice("checkbox", "task", task, labels[task] || task));
  presetBox.addEventListener("change", (event) => applyPreset(event.target.value));
  taskBox.addEventListener("change", () => { readTasks(); markCustom(); });
  applyPreset(state.config.default_preset || Object.keys(presets)[0]);
}

function choice(type, name, value, text) {
  const label = document.createElement("label"), input = document.createElement("input");
  Object.assign(input, { type, name, value, id: `${name}-${value}` });
  label.append(input, text);
  return label;
}

function applyPreset(key) {
  $(`preset-${key}`).checked = true;
  if (key === "custom") return;
  const chosen = state.config.presets[key].tasks;
  for (const box of document.querySelectorAll("input[name=task]")) box.checked = chosen.includes(box.value);
  readTasks();
}

function markCustom() {
  const match = Object.entries(state.config.presets).find(([, p]) => sameTasks(p.tasks, state.tasks));
  $(`preset-${match ? match[0] : "custom"}`).checked = true;
}

function sameTasks(a, b) { return a.length === b.length && a.every((t) => b.includes(t)); }

// Burned-in overlays (date stamps): removed by the outpaint stage, or kept.
function overlayChoice() {
  return document.querySelector("input[name=overlays]:checked")?.value || "remove";
}

function readTasks() {
  state.tasks = [...document.querySelectorAll("input[name=task]:checked")].map((box) => box.value);
}

// ---- preview ----------------------------------------------------------------------------

async function runPreview(event) {
  event.preventDefault();
  if (!state.tasks.length) return say("Choose at least one task.");
  const button = $("preview-button");
  button.disabled = true;
  $("preview-status").textContent = "Restoring the preview… this can take a minute.";
  try {
    const body = { at: Number($("preview-at").value), seconds: Number($("preview-seconds").value), tasks: state.tasks, overlays: overlayChoice() };
    state.preview = await api("POST", `/api/uploads/${state.upload.id}/preview`, body);
    showPreview(state.preview);
    $("preview-status").textContent = `Preview of ${body.seconds} s from ${body.at} s: slide to compare.`;
  } catch (error) {
    $("preview-status").textContent = "";
    say(`The preview failed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

function showPreview(preview) {
  $("before-img").src = preview.before;
  $("after-img").src = preview.after;
  $("preview-video").src = preview.video;
  $("preview-link").href = preview.video;
  $("preview-result").hidden = false;
  setWipe($("wipe").value);
}

function setWipe(value) {
  $("before-img").style.clipPath = `inset(0 ${100 - value}% 0 0)`;
  $("compare-line").style.left = `${value}%`;
  $("wipe").setAttribute("aria-valuetext", `${value}% original, ${100 - value}% restored`);
}

// ---- the job ----------------------------------------------------------------------------

async function startJob() {
  if (!state.tasks.length) return say("Choose at least one task.");
  state.startedFor = state.upload.id;
  setStartable();
  try {
    const references = await uploadReferences();
    const job = await api("POST", "/api/jobs", { upload: state.upload.id, tasks: state.tasks, references, overlays: overlayChoice() });
    say("The job has started. You can close this page and come back: it keeps running.", true);
    follow(job.id);
  } catch (error) {
    state.startedFor = null;
    setStartable();
    say(`The job could not start: ${error.message}`);
  }
  refreshJobs();
}

// One job at a time per upload: Start comes back once that job has ended.
function setStartable() {
  const busy = state.startedFor !== null && state.upload && state.startedFor === state.upload.id;
  $("start-button").disabled = busy;
  $("start-button").title = busy ? "This video is being restored; wait for the job to end or cancel it" : "";
}

// The colour reference images, uploaded like the video (small: one chunk each).
async function uploadReferences() {
  const ids = [];
  for (const file of $("references").files) {
    const info = await api("POST", "/api/uploads", { name: file.name, size: file.size });
    await sendChunks(file, info);
    ids.push(info.id);
  }
  return ids;
}

function follow(jobId) {
  state.jobId = jobId;
  clearTimeout(state.polling);
  $("job-section").hidden = false;
  $("job").hidden = false;
  $("download").hidden = true;
  $("thumb-figure").hidden = true;
  $("latest-figure").hidden = true;
  state.latestClip = null;
  $("stage-table").tBodies[0].replaceChildren();
  $("stage-table").hidden = true;
  poll();
}

async function poll() {
  const jobId = state.jobId;
  try {
    const job = await api("GET", `/api/jobs/${encodeURIComponent(jobId)}`);
    if (jobId !== state.jobId) return;
    showJob(job);
    if (job.finished) return finished(job);
    if (++state.polls % 3 === 0) refreshJobs();  // the list keeps up with the job shown
  } catch (error) {
    $("job-text").textContent = `Cannot reach the job: ${error.message}`;
  }
  state.polling = setTimeout(poll, 1000);
}

function showJob(job) {
  const percent = job.fraction === null ? null : Math.round(job.fraction * 100);
  const parts = [`${job.input_name}: ${words(job.state)}${job.queue_position ? ` (${queueWords(job.queue_position)})` : ""}`];
  if (percent !== null) parts.push(`${percent}% (${job.frames_done} of ${job.frames_total} frames)`);
  if (job.clips_total && job.state === "RUNNING") parts.push(`scene ${Math.min(job.clips_done + 1, job.clips_total)} of ${job.clips_total}`);
  if (job.eta_seconds !== null && !job.finished) parts.push(`about ${clock(job.eta_seconds)} left`);
  if (job.error && job.state === "FAILED") parts.push(`error: ${job.error}`);
  $("job-text").textContent = parts.join(" · ");
  $("job-bar").value = job.fraction || (job.state === "SUCCEEDED" ? 1 : 0);
  // A finished job's status may no longer carry rates: keep the last ones seen.
  if (job.stages.length) $("stage-table").tBodies[0].replaceChildren(...job.stages.map(stageRow));
  $("stage-table").hidden = !$("stage-table").tBodies[0].rows.length;
  $("cancel-button").hidden = job.finished;
  showThumbnail(job);
  if (job.latest_clip && job.latest_clip !== state.latestClip && job.state !== "SUCCEEDED") showLatestClip(job);
}

// While the job runs, its latest finished scene can be watched (a small, short video).
async function showLatestClip(job) {
  state.latestClip = job.latest_clip;
  try {
    const latest = await api("POST", `/api/jobs/${encodeURIComponent(job.id)}/latest`);
    if (job.id !== state.jobId) return;
    $("latest-video").src = latest.url;
    const number = Number(latest.clip.replace(/\D/g, "")) + 1;
    $("latest-caption").textContent = `The latest finished scene (${number} of ${job.clips_total || "?"}), as restored`;
    $("latest-figure").hidden = false;
  } catch (error) {
    state.latestClip = null;  // tried again at the next poll
  }
}

function stageRow(stage) {
  const row = document.createElement("tr");
  for (const text of [stage.name, String(stage.frames), stage.fps.toFixed(1)]) row.append(Object.assign(document.createElement("td"), { textContent: text }));
  return row;
}

function showThumbnail(job) {
  // The job service may not send frames while it works; the preview shows what to expect.
  let src = job.thumbnail, caption = "Latest restored frame";
  if (!src && state.preview && !job.finished) { src = state.preview.after; caption = "From your preview (the job's own frames appear when its first scene is done)"; }
  if (!src) { $("thumb-figure").hidden = true; return; }
  if ($("thumb").getAttribute("src") !== src) $("thumb").src = src;
  $("thumb-caption").textContent = caption;
  $("thumb-figure").hidden = false;
}

async function finished(job) {
  refreshJobs();
  if (state.startedFor !== null) { state.startedFor = null; setStartable(); }
  if (job.state === "CANCELLED") say("The job was cancelled.", true);
  else if (job.state === "FAILED") say(`The job failed: ${job.error || "no reason given"}`);
  if (job.state !== "SUCCEEDED") return;
  say("The job has finished: the restored video is below.", true);
  $("job-text").textContent += " · preparing the download…";
  try {
    const download = await api("POST", `/api/jobs/${encodeURIComponent(job.id)}/download`);
    $("download-link").href = download.url;
    $("download-link").textContent = `Download ${download.name} (${megabytes(download.size)})`;
    $("result-video").poster = download.thumbnail || "";
    $("result-video").src = download.url;
    $("download").hidden = false;
    $("latest-figure").hidden = true;
    showJob({ ...job, thumbnail: download.thumbnail || job.thumbnail });
  } catch (error) {
    say(`The result could not be fetched: ${error.message}`);
  }
}

async function cancelJob() {
  if (!state.jobId) return;
  try {
    const job = await api("POST", `/api/jobs/${encodeURIComponent(state.jobId)}/cancel`);
    showJob(job);
    if (job.finished) { clearTimeout(state.polling); finished(job); }
  } catch (error) {
    say(`Could not cancel: ${error.message}`);
  }
}

// ---- the job list -------------------------------------------------------------------------

async function refreshJobs() {
  try {
    const { jobs } = await api("GET", "/api/jobs");
    jobs.sort((a, b) => b.created - a.created);
    $("jobs-table").tBodies[0].replaceChildren(...jobs.map(jobRow));
    $("jobs-empty").hidden = jobs.length > 0;
  } catch (error) {
    if (error.status !== 401) $("jobs-empty").textContent = `The job list is not available: ${error.message}`;
  }
}

function jobRow(job) {
  const row = document.createElement("tr");
  const progress = job.fraction === null ? "–" : `${Math.round(job.fraction * 100)}%`;
  const picture = document.createElement("td");
  if (job.thumbnail) picture.append(Object.assign(document.createElement("img"), { src: job.thumbnail, alt: "", className: "job-thumb" }));
  row.append(picture);
  const state = job.queue_position ? `${words(job.state)} (${queueWords(job.queue_position)})` : words(job.state);
  for (const text of [job.input_name, state, progress]) row.append(Object.assign(document.createElement("td"), { textContent: text }));
  const cell = document.createElement("td"), button = document.createElement("button");
  button.type = "button";
  button.textContent = "Show";
  button.setAttribute("aria-label", `Show the job for ${job.input_name}`);
  button.addEventListener("click", () => { $("job-section").hidden = false; follow(job.id); $("job-title").scrollIntoView(); });
  cell.append(button);
  row.append(cell);
  return row;
}

// ---- small things -------------------------------------------------------------------------

const STATE_WORDS = { QUEUED: "waiting to start", RUNNING: "restoring", SUCCEEDED: "finished", FAILED: "failed", CANCELLED: "cancelled" };
function words(name) { return STATE_WORDS[name] || name.toLowerCase(); }
function queueWords(position) { return position === 1 ? "next in line" : `${position - 1} job${position > 2 ? "s" : ""} ahead`; }
function megabytes(bytes) { return `${(bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0)} MB`; }
function clock(seconds) { const s = Math.round(seconds); return s < 90 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`; }
function rate(text) { const [n, d] = String(text).split("/").map(Number); return d ? (n / d).toFixed(2).replace(/\.?0+$/, "") : text; }
function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function wireDrop() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files.length) startUpload(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) startUpload(e.target.files[0]); });
  $("upload-resume").addEventListener("click", () => state.file && startUpload(state.file));
}

async function main() {
  state.config = await api("GET", "/api/config");
  if (state.config.token_required && !token()) askForToken();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("token", $("token").value.trim());
    $("token-section").hidden = true;
    say("");
    refreshJobs();
  });
  buildChoices();
  wireDrop();
  $("preview-form").addEventListener("submit", runPreview);
  $("wipe").addEventListener("input", (e) => setWipe(e.target.value));
  $("start-button").addEventListener("click", startJob);
  $("cancel-button").addEventListener("click", cancelJob);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  refreshJobs();
}

main().catch((error) => say(`The page could not start: ${error.message}`));
