"""The jobs page for people (GET /): recent jobs with state, progress, errors, timings and a thumbnail of each
finished study's mask, refreshing every 2 s. Everything it loads is served by this service.

Its style and script are files of their own (/static/page.css, /static/page.js): the Content-Security-Policy
allows nothing inline and nothing from elsewhere. The page holds no data itself: its
script reads /v1/jobs with the bearer token the user types in (kept in the tab's sessionStorage) or passes in
the URL fragment (`/#token=...`, never sent to the server, removed from the address bar at once).
Text from jobs is inserted with textContent, never as HTML.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>litemedsam-fleet gateway: jobs</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/page.css"></head>
<body>
<h1>litemedsam-fleet gateway</h1>
<p><a href="/docs">API documentation</a> &middot; <a href="/viewer">Viewer</a> &middot;
<span id="summary">loading…</span></p>
<form id="auth" hidden><label>API token <input id="token" type="password" autocomplete="off" size="40"></label>
<button type="submit">Show jobs</button></form>
<table><thead><tr><th>job</th><th>created</th><th>study</th><th>state</th><th>progress</th><th>timings (s)</th>
<th>error / stored SEG</th><th>mask</th></tr></thead><tbody id="jobs"></tbody></table>
<script src="/static/page.js"></script></body></html>
"""


PAGE_CSS = """body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 14px; }
.ok { color: #17753a; } .error { color: #b3261e; } .running { color: #1a5fb4; } .queued { color: #666; }
.err { max-width: 34em; white-space: pre-wrap; } img.thumb { max-width: 160px; max-height: 160px; }
#auth { margin-bottom: 1em; } code { font-size: 12px; }
"""

PAGE_JS = """"use strict";
const KEY = "litemedsam-gateway-token";
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  sessionStorage.setItem(KEY, fragment.get("token"));
  history.replaceState(null, "", location.pathname + location.search);
}
const thumbs = new Map();
function token() { return sessionStorage.getItem(KEY) || ""; }
function cell(row, text, cls) {
  const td = document.createElement("td"); td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls; row.appendChild(td); return td;
}
function seconds(value) { return value == null ? "" : value.toFixed(1); }
async function thumbnail(job, td) {
  let url = thumbs.get(job.id);
  if (!url) {
    const response = await fetch("/v1/jobs/" + job.id + "/thumbnail.png",
                                 {headers: {Authorization: "Bearer " + token()}});
    if (!response.ok) return;
    url = URL.createObjectURL(await response.blob());
    thumbs.set(job.id, url);
  }
  const img = document.createElement("img");
  img.className = "thumb"; img.alt = "mask of " + (job.study || job.id);
  img.onload = () => img.setAttribute("data-loaded", "1");
  img.src = url; td.appendChild(img);
}
function render(jobs) {
  const body = document.getElementById("jobs");
  body.replaceChildren();
  const counts = {};
  for (const job of jobs) {
    counts[job.state] = (counts[job.state] || 0) + 1;
    const row = document.createElement("tr"); row.id = "job-" + job.id; row.setAttribute("data-state", job.state);
    cell(row, job.id.slice(0, 12)).title = job.id;
    cell(row, new Date(job.created_at * 1000).toLocaleString());
    cell(row, (job.study || "") + (job.modality ? " (" + job.modality + ")" : ""));
    cell(row, job.state, job.state);
    const p = job.progress || {};
    cell(row, p.total ? p.done + " / " + p.total + " slices" : "");
    const t = job.timings || {};
    cell(row, ["fetch", "segment", "store", "total"].filter(k => t[k] != null)
                .map(k => k + " " + seconds(t[k])).join(", "));
    const stored = job.stored
      ? "SEG " + job.stored.sop_uid + (job.stored.already_present ? " (already stored)" : "") : "";
    cell(row, job.error || stored, job.error ? "err error" : "err");
    const td = cell(row, "");
    if (job.state === "ok" && job.results && job.results.npz) thumbnail(job, td);
    body.appendChild(row);
  }
  document.getElementById("summary").textContent = jobs.length + " recent jobs: " +
    Object.entries(counts).map(([state, n]) => n + " " + state).join(", ");
}
async function refresh() {
  if (!token()) {
    document.getElementById("auth").hidden = false;
    document.getElementById("summary").textContent = "a token is needed";
    return;
  }
  try {
    const response = await fetch("/v1/jobs?limit=50", {headers: {Authorization: "Bearer " + token()}});
    if (response.status === 401) { sessionStorage.removeItem(KEY); document.getElementById("auth").hidden = false;
      document.getElementById("summary").textContent = "the token was refused"; return; }
    if (!response.ok) {  // 403 (no read scope), 429 (over the rate): say why, keep the token
      document.getElementById("summary").textContent = (await response.json()).detail; return; }
    render(await response.json());
  } catch (error) { document.getElementById("summary").textContent = "the service does not answer: " + error; }
}
document.getElementById("auth").addEventListener("submit", event => {
  event.preventDefault(); sessionStorage.setItem(KEY, document.getElementById("token").value);
  document.getElementById("auth").hidden = true; refresh();
});
refresh();
setInterval(refresh, 2000);
"""

DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>litemedsam-fleet gateway: API</title>
<link rel="stylesheet" href="/static/swagger/swagger-ui.css">
<link rel="icon" type="image/png" href="/static/swagger/favicon-32x32.png"></head>
<body><div id="swagger-ui"></div>
<script src="/static/swagger/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>
"""

DOCS_JS = """"use strict";
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout", validatorUrl: null});
"""
