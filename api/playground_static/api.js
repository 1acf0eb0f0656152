// Calls to the service's public API, relative to the page (so a path prefix in front works).
// When the service answers 401 `unauthorized`, the caller's askKey() is asked for a key, which
// is kept in sessionStorage (this tab only) and sent in the Authorization header from then
// on: never in a URL.

const KEY = "pysandbox.apiKey";

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** One answer: {status, body} (body: the parsed JSON, or null when the answer was not JSON). */
async function send(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "same-origin",
  });
  const text = await response.text();
  try {
    return { status: response.status, body: JSON.parse(text) };
  } catch {
    return { status: response.status, body: null };
  }
}

/**
 * Call the API; on 401 `unauthorized` ask for a key (askKey(message) resolves to a key, or
 * null when the person declines) and try again with it.
 */
export async function call(method, path, body, askKey) {
  for (;;) {
    const answer = await send(method, path, body);
    if (answer.status !== 401 || answer.body?.error?.code !== "unauthorized") return answer;
    const key = await askKey(String(answer.body.error.message ?? ""));
    if (!key) return answer;
    sessionStorage.setItem(KEY, key);
  }
}
