// Turning what the API answered into page elements. Everything from the API (results, output,
// messages, file names) is put in with textContent or as attribute values, never as HTML.

const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
// SVG is not shown inline: opened on its own from a blob: URL it would be a document of this
// origin that can run script. Everything else is offered as a download only.

function isRecord(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isScalar(value) {
  return value === null || typeof value !== "object";
}

/**
 * A result that reads as a table: {columns, rows} (rows are arrays of cell values), or null.
 * - a list of records: [{"a": 1, "b": 2}, ...] (columns: every key, in first-seen order);
 * - a dict of columns: {"a": [1, 2], "b": [3, 4]} (lists of one length);
 * - a dict of dicts, as pandas' DataFrame.to_dict() gives: {"a": {"x": 1}, "b": {"x": 2}}
 *   (the inner keys become the rows, shown in a first column).
 */
export function tableOf(value) {
  if (Array.isArray(value) && value.length > 0 && value.every(isRecord)) {
    const columns = [...new Set(value.flatMap((row) => Object.keys(row)))];
    if (columns.length === 0) return null;
    return { columns, rows: value.map((row) => columns.map((c) => (c in row ? row[c] : ""))) };
  }
  if (!isRecord(value)) return null;
  const columns = Object.keys(value);
  if (columns.length === 0) return null;
  const lists = columns.map((c) => value[c]);
  if (lists.every(Array.isArray)) {
    const length = lists[0].length;
    if (length === 0 || !lists.every((list) => list.length === length && list.every(isScalar))) return null;
    return { columns, rows: Array.from({ length }, (_, i) => lists.map((list) => list[i])) };
  }
  if (lists.every((inner) => isRecord(inner) && Object.values(inner).every(isScalar))) {
    const index = [...new Set(lists.flatMap((inner) => Object.keys(inner)))];
    if (index.length === 0) return null;
    return {
      columns: ["", ...columns],
      rows: index.map((key) => [key, ...lists.map((inner) => (key in inner ? inner[key] : ""))]),
    };
  }
  return null;
}

function cellText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function table({ columns, rows }) {
  const wrap = element("div", undefined, "table-wrap");
  wrap.tabIndex = 0;  // scrollable by keyboard when wider than the screen
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", "Result table");
  const node = element("table");
  node.append(element("caption", `${rows.length} row${rows.length === 1 ? "" : "s"}`));
  const head = element("tr");
  for (const column of columns) {
    const th = element("th", column);
    th.scope = "col";
    head.append(th);
  }
  node.append(element("thead"));
  node.tHead.append(head);
  const body = element("tbody");
  for (const row of rows) {
    const tr = element("tr");
    for (const cell of row) tr.append(element("td", cellText(cell)));
    body.append(tr);
  }
  node.append(body);
  wrap.append(node);
  return wrap;
}

/** The result: a table when it reads as one (its JSON one click away), else pretty JSON. */
export function renderResult(container, value) {
  const pretty = JSON.stringify(value, null, 2);
  const shape = tableOf(value);
  if (shape === null) {
    container.replaceChildren(element("pre", pretty, "json"));
    return;
  }
  const details = element("details");
  details.append(element("summary", "As JSON"), element("pre", pretty, "json"));
  container.replaceChildren(table(shape), details);
}

/** The script's line an error points at: the last `File "<script>", line N` of the traceback
 * (where it was raised), else a syntax error's "line N: ..." message; null if neither. */
export function errorLine(error) {
  const frames = [...String(error.traceback ?? "").matchAll(/File "<script>", line (\d+)/g)];
  if (frames.length > 0) return Number(frames[frames.length - 1][1]);
  const found = /^line (\d+):/.exec(String(error.message ?? ""));
  return found ? Number(found[1]) : null;
}

function decode(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * The files a run wrote: raster images inline, every file as a download. Returns the blob:
 * URLs made, for the caller to revoke when the next run replaces them.
 */
export function renderFiles(list, files) {
  const urls = [];
  const items = [];
  for (const file of files) {
    if (!isRecord(file) || typeof file.name !== "string" || typeof file.content !== "string") continue;
    let bytes;
    try {
      bytes = decode(file.content);
    } catch {
      items.push(element("li", `${file.name}: its content is not valid base64`, "warning"));
      continue;
    }
    const type = String(file.media_type ?? "");
    const item = element("li");
    const download = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    urls.push(download);
    if (INLINE_IMAGES.has(type)) {
      const shown = URL.createObjectURL(new Blob([bytes], { type }));
      urls.push(shown);
      const figure = element("figure");
      const image = element("img");
      image.src = shown;
      image.alt = file.name;
      figure.append(image);
      item.append(figure);
    }
    const link = element("a", file.name);
    link.href = download;
    link.download = file.name.split("/").pop();
    item.append(link, element("span", ` ${size(bytes.length)}, ${type || "unknown type"}`, "hint"));
    items.push(item);
  }
  list.replaceChildren(...items);
  return urls;
}

/** "12 ms", "1.9 MB"; "n/a" when the host could not say (null). */
export function usage(value, unit) {
  return typeof value === "number" ? `${value} ${unit}` : "n/a";
}
