// The script editor: a plain <textarea> with a line-number gutter that can mark one line.
//
// Why no editor library (CodeMirror, Monaco): the page is served from the image with no build
// step and fetches nothing from elsewhere, so a library would have to be vendored here as
// hundreds of KB of bundled code to keep up to date. Line numbers, a marked error line, Tab
// indentation and keeping the indentation on Enter are all a playground needs.

const INDENT = "    ";

/** The 0-based offset in `text` where 1-based line `line` starts (the end if there are fewer). */
export function lineStart(text, line) {
  let offset = 0;
  for (let n = 1; n < line; n += 1) {
    const next = text.indexOf("\n", offset);
    if (next < 0) return text.length;
    offset = next + 1;
  }
  return offset;
}

export class Editor {
  constructor(textarea, gutter, band) {
    this.textarea = textarea;
    this.gutter = gutter;
    this.band = band;
    this.lines = 0;
    this.marked = null;
    this.escaped = false;
    textarea.addEventListener("input", () => { this.clearMark(); this.refresh(); });
    textarea.addEventListener("scroll", () => this.sync());
    textarea.addEventListener("keydown", (event) => this.onKey(event));
    this.refresh();
  }

  get value() { return this.textarea.value; }

  set value(text) {
    this.textarea.value = text;
    this.clearMark();
    this.refresh();
  }

  /** Redraw the gutter when the number of lines changed. */
  refresh() {
    const count = this.textarea.value.split("\n").length;
    if (count !== this.lines) {
      const numbers = [];
      for (let n = 1; n <= count; n += 1) {
        const item = document.createElement("div");
        item.textContent = String(n);
        if (n === this.marked) item.className = "marked";
        numbers.push(item);
      }
      this.gutter.replaceChildren(...numbers);
      this.lines = count;
    }
    this.sync();
  }

  /** Keep the gutter and the marked band aligned with the text when it scrolls. */
  sync() {
    this.gutter.scrollTop = this.textarea.scrollTop;
    if (this.marked !== null) {
      const style = getComputedStyle(this.textarea);
      const top = parseFloat(style.paddingTop) + (this.marked - 1) * parseFloat(style.lineHeight);
      this.band.style.transform = `translateY(${top - this.textarea.scrollTop}px)`;
    }
  }

  /** Mark 1-based `line` (an error's line) in the gutter and move the caret to its start. */
  mark(line) {
    this.clearMark();
    if (!Number.isInteger(line) || line < 1 || line > this.lines) return false;
    this.marked = line;
    this.gutter.children[line - 1].className = "marked";
    this.band.hidden = false;
    const start = lineStart(this.textarea.value, line);
    this.textarea.setSelectionRange(start, start);
    const style = getComputedStyle(this.textarea);
    const lineHeight = parseFloat(style.lineHeight);
    const wanted = (line - 1) * lineHeight;
    if (wanted < this.textarea.scrollTop || wanted > this.textarea.scrollTop + this.textarea.clientHeight - lineHeight) {
      this.textarea.scrollTop = Math.max(0, wanted - this.textarea.clientHeight / 2);
    }
    this.sync();
    return true;
  }

  clearMark() {
    if (this.marked !== null && this.gutter.children[this.marked - 1]) {
      this.gutter.children[this.marked - 1].className = "";
    }
    this.marked = null;
    this.band.hidden = true;
  }

  /** Tab indents (Esc first lets Tab move the focus on: no keyboard trap); Enter keeps the indent. */
  onKey(event) {
    if (event.key === "Escape") { this.escaped = true; return; }
    const escaped = this.escaped;
    this.escaped = false;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Tab" && !event.shiftKey && !escaped) {
      event.preventDefault();
      this.insert(INDENT);
    } else if (event.key === "Enter") {
      const text = this.textarea.value;
      const start = this.textarea.selectionStart;
      const line = text.slice(text.lastIndexOf("\n", start - 1) + 1, start);
      const indent = line.match(/^[ \t]*/)[0] + (line.trimEnd().endsWith(":") ? INDENT : "");
      event.preventDefault();
      this.insert(`\n${indent}`);
    }
  }

  /** Insert text at the caret as typing would (so undo keeps working). */
  insert(text) {
    this.textarea.focus();
    if (!document.execCommand("insertText", false, text)) {
      this.textarea.setRangeText(text, this.textarea.selectionStart, this.textarea.selectionEnd, "end");
      this.textarea.dispatchEvent(new Event("input"));
    }
  }
}
