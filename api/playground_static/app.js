// The playground: builds the request from the form, runs it (sync, or async and polling the
// job), and shows the answer. No framework and no build step: plain modules served as they are.

import { call, forgetKey, storedKey } from "./api.js";
import { Editor } from "./editor.js";
import { EXAMPLES, probeScript } from "./examples.js";
import { errorLine, renderFiles, renderResult, usage } from "./render.js";
import { SessionCells } from "./session.js";

const POLL_MS = 250;
const $ = (id) => document.getElementById(id);

const editor = new Editor($("script"), $("gutter"), $("mark-band"));
const form = $("run-form");
let blobUrls = [];
let runCount = 0;  // a newer run makes an older one stop updating the page
let job = null;    // the async job being polled: {id, run}

// ---------------------------------------------------------------- API key (401 unauthorized)

let keyAsked = null;  // one prompt at a time: the package probe and a run may both meet a 401

function askKey(message) {
  keyAsked ??= promptKey(message).finally(() => { keyAsked = null; });
  return keyAsked;
}

function promptKey(message) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = message || "This service asks for an API key.";
  $("key").value = "";
  return new Promise((resolve) => {
    const done = (key) => {
      $("key-form").onsubmit = null;
      $("key-cancel").onclick = null;
      dialog.onclose = null;
      dialog.close();
      $("forget-key").hidden = !storedKey() && !key;
      resolve(key);
    };
    $("key-form").onsubmit = (event) => { event.preventDefault(); done($("key").value.trim() || null); };
    $("key-cancel").onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
  });
}

function api(method, path, body) {
  return call(method, path, body, askKey);
}

$("forget-key").hidden = !storedKey();
$("forget-key").addEventListener("click", () => {
  forgetKey();
  $("forget-key").hidden = true;
  $("status").textContent = "API key forgotten.";
});

// ---------------------------------------------------------------- examples

function fillExamples(available) {
  const select = $("example");
  const options = EXAMPLES.map((example, index) => {
    if (example.needs && !available[example.needs]) return null;
    const option = document.createElement("option");
    option.value = String(index);
    option.textContent = example.name;
    return option;
  }).filter(Boolean);
  const chosen = select.value;
  select.replaceChildren(...options);
  if (chosen) select.value = chosen;
}

function loadExample(index) {
  const example = EXAMPLES[index];
  editor.value = example.script;
  $("input").value = example.input ?? "";
  $("stdin").value = example.stdin ?? "";
  $("timeout").value = example.timeout ?? "";
  clearInputError();
}

$("example").addEventListener("change", () => loadExample(Number($("example").value)));

/** List the examples that need an optional package only when the jail can import it. */
async function probePackages() {
  const needed = [...new Set(EXAMPLES.map((e) => e.needs).filter(Boolean))];
  try {
    const answer = await api("POST", "execute", { script: probeScript(needed) });
    if (answer.status === 200 && answer.body && typeof answer.body.result === "object") {
      fillExamples(answer.body.result ?? {});
    }
  } catch {
    // The service is unreachable: the first run says so.
  }
}

// ---------------------------------------------------------------- the request

function clearInputError() {
  $("input-error").hidden = true;
  $("input").removeAttribute("aria-invalid");
}

function base64Of(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** The POST /execute body from the form, or null (with the field marked) when it is invalid. */
async function requestBody() {
  const body = { script: editor.value };
  const inputText = $("input").value.trim();
  if (inputText !== "") {
    try {
      body.input = JSON.parse(inputText);
    } catch (error) {
      $("input-error").textContent = `The input is not JSON: ${error.message}`;
      $("input-error").hidden = false;
      $("input").setAttribute("aria-invalid", "true");
      $("input").focus();
      return null;
    }
  }
  clearInputError();
  if ($("stdin").value !== "") body.stdin = $("stdin").value;
  const chosen = [...$("files").files];
  if (chosen.length > 0) {
    body.files = {};
    for (const file of chosen) {
      body.files[file.name] = { content: base64Of(await file.arrayBuffer()), encoding: "base64" };
    }
  }
  if ($("timeout").value !== "") body.timeout = Number($("timeout").value);
  if ($("memory").value !== "") body.memory_mb = Number($("memory").value);
  return body;
}

// ---------------------------------------------------------------- showing an answer

function clearOutput() {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
  editor.clearMark();
  $("editor-mark").hidden = true;
  $("error").hidden = true;
  $("error-traceback").hidden = true;
  $("result-section").hidden = true;
  $("files-section").hidden = true;
  $("truncated").hidden = true;
  $("files-truncated").hidden = true;
  for (const id of ["stdout", "stderr", "result", "files-out", "error-code", "error-message", "error-traceback"]) {
    $(id).replaceChildren();
  }
  for (const id of ["duration", "cpu", "memory-used"]) $(id).textContent = "–";
}

function showError(error) {
  $("error-code").textContent = String(error.code ?? "error");
  $("error-message").textContent = String(error.message ?? "");
  if (error.traceback) {
    $("error-traceback").textContent = String(error.traceback);
    $("error-traceback").hidden = false;
  }
  $("error").hidden = false;
  const line = errorLine(error);
  if (line !== null && editor.mark(line)) {
    $("editor-mark").textContent = `Error on line ${line}: marked in the editor, the caret is on it.`;
    $("editor-mark").hidden = false;
  }
}

/** Show a run's answer: a sync body (200 or an error) or an ended job's state. */
function showAnswer(status, body) {
  clearOutput();
  if (body === null || typeof body !== "object") {
    showError({ code: `HTTP ${status}`, message: "The service answered something that is not JSON." });
    $("status").textContent = `Failed (HTTP ${status}).`;
    return;
  }
  if (body.error) {
    showError(body.error);
    $("status").textContent = body.error.code === "canceled" ? "Canceled." : `Failed: ${body.error.code}.`;
  } else {
    $("result-section").hidden = false;
    renderResult($("result"), body.result);
    $("status").textContent = "Finished.";
  }
  $("stdout").textContent = String(body.stdout ?? "");
  $("stderr").textContent = String(body.stderr ?? "");
  $("truncated").hidden = body.output_truncated !== true;
  $("duration").textContent = usage(body.duration_ms, "ms");
  $("cpu").textContent = usage(body.cpu_ms, "ms");
  $("memory-used").textContent = usage(body.peak_memory_mb, "MB");
  if (Array.isArray(body.files) && body.files.length > 0) {
    blobUrls = renderFiles($("files-out"), body.files);
    $("files-section").hidden = false;
  }
  $("files-truncated").hidden = body.files_truncated !== true;
  if (!$("files-truncated").hidden) $("files-section").hidden = false;
  revealStatus();
}

/** On a narrow screen the output is below the form: bring the answer into view. */
function revealStatus() {
  const box = $("status").getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) $("status").scrollIntoView({ block: "start" });
}

// ---------------------------------------------------------------- running

function setBusy(busy) {
  $("run").disabled = busy;
  form.setAttribute("aria-busy", String(busy));
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function poll(id, run) {
  for (;;) {
    await sleep(POLL_MS);
    if (run !== runCount) return;
    const answer = await api("GET", `jobs/${encodeURIComponent(id)}`);
    if (run !== runCount) return;
    const state = answer.body?.status;
    if (answer.status === 200 && (state === "queued" || state === "running")) {
      $("status").textContent = state === "queued" ? `Queued (job ${id})…` : `Running (job ${id})…`;
      continue;
    }
    showAnswer(answer.status, answer.body);
    return;
  }
}

async function runScript() {
  if ($("run").disabled) return;
  const body = await requestBody();
  if (body === null) return;
  runCount += 1;
  const run = runCount;
  const queued = form.elements.mode.value === "async";
  setBusy(true);
  clearOutput();
  $("status").textContent = queued ? "Queueing…" : "Running…";
  try {
    if (!queued) {
      const answer = await api("POST", "execute", body);
      showAnswer(answer.status, answer.body);
      return;
    }
    const answer = await api("POST", "execute?async=1", body);
    if (answer.status !== 202 || typeof answer.body?.id !== "string") {
      showAnswer(answer.status, answer.body);
      return;
    }
    job = { id: answer.body.id, run };
    $("cancel").hidden = false;
    $("status").textContent = `Queued (job ${job.id})…`;
    await poll(job.id, run);
  } catch (error) {
    clearOutput();
    showError({ code: "unreachable", message: `The service could not be reached: ${error.message}` });
    $("status").textContent = "Failed: the service could not be reached.";
  } finally {
    if (run === runCount) {
      job = null;
      $("cancel").hidden = true;
      setBusy(false);
    }
  }
}

$("cancel").addEventListener("click", async () => {
  if (job === null) return;
  const { id, run } = job;
  $("status").textContent = `Cancelling job ${id}…`;
  let answer;
  try {
    answer = await api("DELETE", `jobs/${encodeURIComponent(id)}`);
  } catch {
    return;  // unreachable: the poll says so
  }
  // 409 job_finished: it ended first; the poll shows how.
  if (answer.status === 200 && run === runCount) {
    runCount += 1;
    showAnswer(answer.status, answer.body);
    job = null;
    $("cancel").hidden = true;
    setBusy(false);
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  runScript();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("key-dialog").open) {
    event.preventDefault();
    runScript();
  }
});

fillExamples({});
loadExample(0);
probePackages();
new SessionCells(api);
