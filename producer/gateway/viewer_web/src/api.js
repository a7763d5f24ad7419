// Requests to this service only (relative URLs), with the bearer token the user gave. The token lives in the
// tab's sessionStorage; `/viewer#token=...` sets it (a fragment never reaches a server) and is removed at once.
const KEY = "litemedsam-gateway-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function setTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    setToken(fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function detail(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `HTTP ${status}`;
}

export async function api(method, path, body, kind = "json") {
  const headers = { Authorization: `Bearer ${token()}` };
  const init = { method, headers };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      parsed = null;
    }
    throw new ApiError(response.status, `${method} ${path.split("?")[0]}: ${detail(parsed, response.status)}`);
  }
  if (response.status === 204) return null;
  return kind === "blob" ? response.blob() : response.json();
}
