// Talking to the JSON API from the browser: the CSRF header on unsafe requests,
// problem+json errors as ApiError (with the request id).
export const CSRF_HEADER = "X-CSRF-Token";

// The page's token, rendered by the server into every page (bound to the session; before
// a session, the value of the HttpOnly double-submit cookie). Never read from a cookie.
export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

export class ApiError extends Error {
  constructor(message, { status = 0, requestId = null, detail = null, errors = null, title = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.requestId = requestId;
    this.detail = detail;
    this.errors = errors;
    this.title = title;
  }

  /** Build from a failed response (reads a problem document when there is one). */
  static async from(resp, what) {
    let requestId = resp.headers.get("X-Request-ID");
    let detail = null, errors = null, title = null;
    const type = resp.headers.get("content-type") || "";
    if (type.includes("json")) {
      try {
        const body = await resp.json();
        title = body.title || null;
        detail = body.detail || null;
        errors = Array.isArray(body.errors) ? body.errors : null;
        requestId = body.request_id || requestId;
      } catch { /* not JSON after all */ }
    }
    const why = detail || title || `HTTP ${resp.status}`;
    return new ApiError(`${what}: ${why} (HTTP ${resp.status})`, { status: resp.status, requestId, detail, errors, title });
  }
}

/** fetch + JSON; throws ApiError for non-2xx answers and network failures. */
export async function apiFetch(url, { method = "GET", body, headers = {}, what } = {}) {
  const h = { Accept: "application/json", ...headers };
  if (!["GET", "HEAD"].includes(method)) h[CSRF_HEADER] = csrfToken();
  let payload;
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const label = what || `${method} ${url}`;
  let resp;
  try {
    resp = await fetch(url, { method, headers: h, body: payload, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(`${label}: the server could not be reached (${err.message})`);
  }
  if (!resp.ok) throw await ApiError.from(resp, label);
  if (resp.status === 204) return null;
  return resp.json();
}
