// The playground's session mode: cells run in order against one session (POST /sessions), each
// cell's answer shown under it, and a button that restarts the session. What a cell defines,
// the next one sees; the session is started by the first cell run and ended by a restart.

import { renderResult, usage } from "./render.js";

const $ = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

export class SessionCells {
  /** api(method, path, body) calls the service; status: the session's status line. */
  constructor(api) {
    this.api = api;
    this.sessionId = null;
    this.running = false;
    this.cells = [];
    $("add-cell").addEventListener("click", () => this.add("").focus());
    $("run-all").addEventListener("click", () => this.runAll());
    $("restart-session").addEventListener("click", () => this.restart());
    this.add("import pandas as pd\nframe = pd.DataFrame({\"k\": [\"a\", \"b\", \"a\"], \"v\": [1, 2, 3]})\nlen(frame)");
    this.add("frame.groupby(\"k\")[\"v\"].sum().to_dict()");
  }

  /** A new cell at the end, with this code; its textarea. */
  add(code) {
    const number = this.cells.length + 1;
    const item = element("li", undefined, "cell");
    const label = element("label", `Cell ${number}`);
    const area = element("textarea");
    area.id = `cell-${number}`;
    area.rows = 4;
    area.spellcheck = false;
    area.value = code;
    label.htmlFor = area.id;
    const run = element("button", `Run cell ${number}`);
    run.type = "button";
    const output = element("div", undefined, "cell-output");
    output.setAttribute("aria-live", "polite");
    output.setAttribute("aria-label", `Cell ${number} output`);
    item.append(label, area, run, output);
    $("cells").append(item);
    const cell = { area, run, output };
    run.addEventListener("click", () => this.runCells([cell]));
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        event.stopPropagation();  // not the page's own Ctrl+Enter, which runs the script above
        this.runCells([cell]);
      }
    });
    this.cells.push(cell);
    return area;
  }

  status(text) {
    $("session-status").textContent = text;
  }

  /** The open session's id, starting one when there is none; null (with the reason shown) if it failed. */
  async session() {
    if (this.sessionId !== null) return this.sessionId;
    this.status("Starting a session…");
    const answer = await this.api("POST", "sessions", {});
    if (answer.status !== 201 || typeof answer.body?.id !== "string") {
      const error = answer.body?.error ?? { code: `HTTP ${answer.status}`, message: "" };
      this.status(`Could not start a session: ${error.code} ${error.message ?? ""}`.trim());
      return null;
    }
    this.sessionId = answer.body.id;
    this.status(`Session ${this.sessionId} is open.`);
    return this.sessionId;
  }

  async runAll() {
    await this.runCells(this.cells);
  }

  async runCells(cells) {
    if (this.running) return;
    this.running = true;
    for (const button of document.querySelectorAll("#session-pane button")) button.disabled = true;
    try {
      for (const cell of cells) {
        if (!(await this.runCell(cell))) break;
      }
    } catch (error) {
      this.status(`The service could not be reached: ${error.message}`);
    } finally {
      this.running = false;
      for (const button of document.querySelectorAll("#session-pane button")) button.disabled = false;
    }
  }

  /** Run one cell and show its answer under it; false when the cells after it should not run. */
  async runCell(cell) {
    cell.output.replaceChildren(element("p", "Running…", "hint"));
    const id = await this.session();
    if (id === null) {
      cell.output.replaceChildren();
      return false;
    }
    const answer = await this.api("POST", `sessions/${encodeURIComponent(id)}/execute`,
                                  { script: cell.area.value });
    this.show(cell, answer);
    const state = answer.body?.session ?? null;
    const ended = answer.status === 410 ? answer.body?.error?.reason : (state?.state === "ended" ? state.reason : null);
    if (ended) {
      this.sessionId = null;
      this.status(`The session ended (${ended}): the next cell starts a new one, without the state.`);
      return false;
    }
    const calls = state?.usage?.calls;
    if (state) this.status(`Session ${id} is open: ${calls} call${calls === 1 ? "" : "s"} so far.`);
    return answer.status === 200;
  }

  show(cell, answer) {
    const body = answer.body;
    const parts = [];
    if (body === null || typeof body !== "object") {
      parts.push(element("p", `HTTP ${answer.status}: the service answered something that is not JSON.`, "error"));
      cell.output.replaceChildren(...parts);
      return;
    }
    if (body.error) {
      const box = element("div", undefined, "error");
      box.append(element("strong", String(body.error.code ?? "error")), element("span", ` ${body.error.message ?? ""}`));
      if (body.error.traceback) box.append(element("pre", String(body.error.traceback)));
      parts.push(box);
    } else {
      const result = element("div", undefined, "cell-result");
      renderResult(result, body.result);
      parts.push(result);
    }
    for (const stream of ["stdout", "stderr"]) {
      if (body[stream]) parts.push(element("pre", String(body[stream]), `stream ${stream}`));
    }
    if (typeof body.duration_ms === "number") {
      parts.push(element("p", `${usage(body.duration_ms, "ms")}, CPU ${usage(body.cpu_ms, "ms")}`, "hint"));
    }
    cell.output.replaceChildren(...parts);
  }

  /** End the session (its state goes with it) and clear every cell's output. */
  async restart() {
    if (this.running) return;
    const id = this.sessionId;
    this.sessionId = null;
    for (const cell of this.cells) cell.output.replaceChildren();
    if (id !== null) {
      try {
        await this.api("DELETE", `sessions/${encodeURIComponent(id)}`);
      } catch {
        // unreachable: the session ends by itself when idle
      }
    }
    this.status("Restarted: the next cell run starts a new session.");
  }
}
