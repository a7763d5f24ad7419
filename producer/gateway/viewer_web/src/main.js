// The viewer page: Cornerstone3D shows the series (stack viewport, DICOMweb through the service's read-only proxy),
// its tools scroll, zoom, pan, window and draw the box; the masks of the interactive session (/v1/sessions, see
// the README) are painted on a canvas laid over the viewport in the image's own pixel grid.
// Every request goes to this service: the DICOMweb proxy under /v1/viewer/dicomweb/{server}/..., the sessions API.
import * as core from "@cornerstonejs/core";
import * as loader from "@cornerstonejs/dicom-image-loader";
import * as tools from "@cornerstonejs/tools";
import { api, ApiError, setTokenFromFragment, token, setToken } from "./api.js";
import { decodeRle, imageToWorld, position, presetRange, sortInstances, worldToImage } from "./geometry.js";

const $ = (id) => document.getElementById(id);
const ENGINE_ID = "viewer-engine";
const VIEWPORT_ID = "stack";
const TOOLGROUP_ID = "viewer-tools";

const state = {
  servers: [],
  server: null, // index of the configured DICOMweb root the open series comes from
  imageIds: [], // in the session's slice order (z)
  sliceUids: null,
  planes: [], // per z: {position: [x, y, z], normal} from the metadata
  session: null, // the session document
  labels: new Map(), // name -> {name, number, colour, opacity, visible, volume, masks: Map<z, Uint8Array>, clicks, box}
  active: null,
  mode: "window",
  shape: null, // [H, W] of one slice
};
window.viewerState = state; // for tests and the console: read-only use

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

// ------------------------------------------------------------------------------------------------ set-up
let viewport;

async function setUp() {
  await core.init();
  loader.init({
    maxWebWorkers: 1,
    beforeSend: () => ({ Authorization: `Bearer ${token()}` }),
  });
  tools.init();
  for (const Tool of [
    tools.PanTool,
    tools.ZoomTool,
    tools.WindowLevelTool,
    tools.StackScrollTool,
    tools.RectangleROITool,
    tools.ReferenceLinesTool,
  ]) {
    tools.addTool(Tool);
  }
  const engine = new core.RenderingEngine(ENGINE_ID);
  engine.enableElement({
    viewportId: VIEWPORT_ID,
    type: core.Enums.ViewportType.STACK,
    element: $("viewport"),
    defaultOptions: { background: [0, 0, 0] },
  });
  viewport = engine.getViewport(VIEWPORT_ID);
  core.volumeLoader.registerVolumeLoader(
    "cornerstoneStreamingImageVolume",
    core.cornerstoneStreamingImageVolumeLoader,
  );
  const group = tools.ToolGroupManager.createToolGroup(TOOLGROUP_ID);
  for (const Tool of [tools.PanTool, tools.ZoomTool, tools.WindowLevelTool, tools.StackScrollTool, tools.RectangleROITool]) {
    group.addTool(Tool.toolName);
  }
  group.addViewport(VIEWPORT_ID, ENGINE_ID);
  group.setToolActive(tools.StackScrollTool.toolName, { bindings: [{ mouseButton: tools.Enums.MouseBindings.Wheel }] });
  group.setToolActive(tools.PanTool.toolName, { bindings: [{ mouseButton: tools.Enums.MouseBindings.Auxiliary }] });
  setMode("window");
  const capabilities = core.getRenderingCapabilities();
  const rendering = core.getShouldUseCPURendering()
    ? "CPU rendering (no WebGL)"
    : `WebGL rendering: ${capabilities.renderer}${capabilities.softwareRasterizer ? ", a software rasterizer" : ""}`;
  document.body.dataset.rendering = core.getShouldUseCPURendering() ? "cpu" : "gpu";
  document.body.dataset.renderer = capabilities.renderer || "";
  const element = $("viewport");
  element.addEventListener(core.Enums.Events.IMAGE_RENDERED, () => {
    paintOverlay();
    showSliceInfo();
  });
  element.addEventListener(core.Enums.Events.STACK_NEW_IMAGE, () => {
    showSliceInfo();
    // the reference line's tool hears camera changes of its own group's views only: tell it the axial slice moved
    const lines = tools.ToolGroupManager.getToolGroup("ortho-tools");
    if (lines && !$("ortho").hidden) {
      lines.setToolConfiguration(tools.ReferenceLinesTool.toolName, { sourceViewportId: VIEWPORT_ID });
    }
  });
  element.addEventListener("contextmenu", (event) => event.preventDefault());
  element.addEventListener("mousedown", clickPrompt, true);
  core.eventTarget.addEventListener(tools.Enums.Events.ANNOTATION_COMPLETED, boxDrawn);
  core.eventTarget.addEventListener(core.Enums.Events.IMAGE_LOAD_FAILED, (event) => {
    const { imageId, error } = event.detail || {};
    const status = error?.status || error?.request?.status || error?.xhr?.status;
    const z = state.imageIds.indexOf(imageId);
    const why = status === 429 ? "HTTP 429: the service's request limit per user (--rate-limit) was reached" : status ? `HTTP ${status}` : String(error?.message || error || "failed");
    $("load-error").textContent = `slice ${z + 1} could not be loaded (${why})`;
    $("load-error").hidden = false;
    document.body.dataset.loadFailed = String(status || "error");
  });
  new ResizeObserver(() => {
    engine.resize(true, true);
    paintOverlay();
  }).observe($("viewport-wrap"));
  return rendering;
}

function setMode(mode) {
  state.mode = mode;
  const group = tools.ToolGroupManager.getToolGroup(TOOLGROUP_ID);
  const { Primary, Secondary } = tools.Enums.MouseBindings;
  group.setToolPassive(tools.WindowLevelTool.toolName);
  group.setToolPassive(tools.RectangleROITool.toolName);
  group.setToolPassive(tools.ZoomTool.toolName);
  if (mode === "window") group.setToolActive(tools.WindowLevelTool.toolName, { bindings: [{ mouseButton: Primary }] });
  if (mode === "box") group.setToolActive(tools.RectangleROITool.toolName, { bindings: [{ mouseButton: Primary }] });
  if (mode !== "click") group.setToolActive(tools.ZoomTool.toolName, { bindings: [{ mouseButton: Secondary }] });
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.checked = radio.value === mode;
  document.body.dataset.mode = mode;
}

// ------------------------------------------------------------------------------------------------ PACS
async function loadServers() {
  state.servers = await api("GET", "/v1/viewer/servers");
  const select = $("server");
  select.replaceChildren(
    ...state.servers.map((server) => new Option(server.root, String(server.id))),
  );
  if (!state.servers.length) say("no DICOMweb server is configured for this service (--dicomweb-credentials)");
  const structures = await api("GET", "/v1/viewer/structures");
  $("structures").replaceChildren(...structures.map((s) => new Option(s.name)));
}

function attr(dataset, tag) {
  const element = dataset[tag];
  if (!element || !element.Value || !element.Value.length) return "";
  const value = element.Value[0];
  return typeof value === "object" && value !== null ? value.Alphabetic || "" : String(value);
}

function listButtons(list, items, label, uid, onPick) {
  list.replaceChildren(
    ...items.map((item) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.uid = uid(item);
      button.textContent = label(item);
      button.addEventListener("click", () => onPick(item));
      li.appendChild(button);
      return li;
    }),
  );
}

async function searchStudies(event) {
  event.preventDefault();
  const server = $("server").value;
  const text = $("patient").value.trim();
  const params = new URLSearchParams({ limit: "50" });
  if (text) params.set(/^[0-9-]+$/.test(text) ? "PatientID" : "PatientName", text.includes("*") ? text : `*${text}*`);
  try {
    const studies = await api("GET", `/v1/viewer/dicomweb/${server}/studies?${params}`);
    say(`${studies.length} studies found`);
    listButtons(
      $("studies"),
      studies,
      (s) => `${attr(s, "00100010") || "(no name)"} · ${attr(s, "00081030") || attr(s, "00080020") || attr(s, "0020000D")}`,
      (s) => attr(s, "0020000D"),
      (s) => listSeries(server, attr(s, "0020000D")),
    );
    $("series-list").replaceChildren();
  } catch (error) {
    say(String(error.message || error), true);
  }
}

async function listSeries(server, study) {
  try {
    const series = await api("GET", `/v1/viewer/dicomweb/${server}/studies/${study}/series`);
    listButtons(
      $("series-list"),
      series,
      (s) => `${attr(s, "00080060")} #${attr(s, "00200011")} ${attr(s, "0008103E")} (${attr(s, "00201209")} images)`,
      (s) => attr(s, "0020000E"),
      (s) => openSeries(Number(server), study, attr(s, "0020000E")),
    );
    $("study-uid").value = study;
  } catch (error) {
    say(String(error.message || error), true);
  }
}

const UID = /^[0-9]+(\.[0-9]+)*$/;

async function openSeries(server, study, series) {
  if (!UID.test(study) || !UID.test(series) || study.length > 64 || series.length > 64) {
    return say("study and series UIDs are digits and dots, at most 64 characters", true);
  }
  const started = performance.now();
  clearSession();
  state.server = server;
  say("opening the series…");
  const base = `/v1/viewer/dicomweb/${server}/studies/${study}/series/${series}`;
  let instances;
  try {
    instances = sortInstances(await api("GET", `${base}/metadata`));
  } catch (error) {
    say(String(error.message || error), true);
    return;
  }
  if (!instances.length) {
    say("the series holds no images", true);
    return;
  }
  $("study-uid").value = study;
  $("series-uid").value = series;
  const imageIds = instances.map((instance) => {
    const sop = attr(instance, "00080018");
    const imageId = `wadors:${location.origin}${base}/instances/${sop}/frames/1`;
    loader.wadors.metaDataManager.add(imageId, instance);
    return imageId;
  });
  try {
    await showStack(imageIds, instances.map((i) => attr(i, "00080018")));
  } catch (error) {
    return say(`the series cannot be shown (${error.message || error}): is it an image series?`, true);
  }
  document.body.dataset.openMs = String(Math.round(performance.now() - started));
  $("open-panel").open = false; // room for the prompt controls at 1280 x 800; a click opens it again
  say(`series open: ${imageIds.length} slices`);
  startSession({ dicomweb: { root: state.servers[server].root, study, series } });
}

async function showStack(imageIds, sliceUids) {
  $("load-error").hidden = true;
  state.imageIds = imageIds;
  state.sliceUids = sliceUids;
  const middle = Math.floor(imageIds.length / 2);
  await viewport.setStack(imageIds, middle);
  tools.utilities.stackPrefetch.enable($("viewport"));
  viewport.render();
  const slider = $("slice-slider");
  slider.max = String(imageIds.length - 1);
  slider.value = String(middle);
  slider.disabled = false;
  $("viewport").focus();
}

async function uploadFiles(event) {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length) return say("choose files first", true);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  clearSession();
  state.server = null;
  say(`uploading ${files.length} files…`);
  await startSession(form);
  if (!state.session) return;
  // The engine's own 8-bit slices, in its order: what the prompts refer to.
  const depth = state.session.shape.length === 3 ? state.session.shape[0] : 1;
  const imageIds = Array.from({ length: depth }, (_, z) => `session:${state.session.id}/${z}`);
  await showStack(imageIds, null);
}

// An image loader for the session's PNG slices (uploads: NIfTI, npz, DICOM files without a PACS).
function loadSessionSlice(imageId) {
  const [id, z] = imageId.slice("session:".length).split("/");
  const promise = (async () => {
    const response = await fetch(`/v1/sessions/${id}/slices/${z}.png`, {
      headers: { Authorization: `Bearer ${token()}` },
    });
    if (!response.ok) throw new Error(`slice ${z}: HTTP ${response.status}`);
    const bitmap = await createImageBitmap(await response.blob());
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d");
    context.drawImage(bitmap, 0, 0);
    const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const pixels = new Uint8Array(bitmap.width * bitmap.height);
    for (let i = 0; i < pixels.length; i++) pixels[i] = rgba[4 * i];
    const spacing = state.session.spacing || [1, 1, 1];
    return {
      imageId,
      minPixelValue: 0,
      maxPixelValue: 255,
      slope: 1,
      intercept: 0,
      windowCenter: 128,
      windowWidth: 256,
      getPixelData: () => pixels,
      rows: bitmap.height,
      columns: bitmap.width,
      height: bitmap.height,
      width: bitmap.width,
      color: false,
      rgba: false,
      numberOfComponents: 1,
      columnPixelSpacing: spacing[0],
      rowPixelSpacing: spacing[1],
      sizeInBytes: pixels.length,
      invert: false,
      dataType: "Uint8Array",
      voiLUTFunction: "LINEAR",
    };
  })();
  return { promise };
}

function sessionMetadata(type, imageId) {
  if (!imageId.startsWith("session:") || !state.session) return undefined;
  const z = Number(imageId.split("/")[1]);
  const [h, w] = state.session.shape.slice(-2);
  const spacing = state.session.spacing || [1, 1, 1];
  if (type === "imagePlaneModule") {
    return {
      frameOfReferenceUID: `session-${state.session.id}`,
      rows: h,
      columns: w,
      imageOrientationPatient: [1, 0, 0, 0, 1, 0],
      rowCosines: [1, 0, 0],
      columnCosines: [0, 1, 0],
      imagePositionPatient: [0, 0, z * spacing[2]],
      sliceThickness: spacing[2],
      pixelSpacing: [spacing[1], spacing[0]],
      rowPixelSpacing: spacing[1],
      columnPixelSpacing: spacing[0],
    };
  }
  if (type === "imagePixelModule") {
    return { samplesPerPixel: 1, photometricInterpretation: "MONOCHROME2", rows: h, columns: w, bitsAllocated: 8, bitsStored: 8, highBit: 7, pixelRepresentation: 0 };
  }
  if (type === "generalSeriesModule") return { modality: state.session.modality || "OT" };
  if (type === "voiLutModule") return { windowCenter: [128], windowWidth: [256] };
  if (type === "modalityLutModule") return { rescaleSlope: 1, rescaleIntercept: 0 };
  return undefined;
}

// ------------------------------------------------------------------------------------------------ session
let opening = 0; // counts series opened: a session answer for an earlier one is dropped (and deleted)

async function startSession(body) {
  const ticket = ++opening;
  try {
    const session = await api("POST", "/v1/sessions", body);
    if (ticket !== opening) {
      api("DELETE", `/v1/sessions/${session.id}`).catch(() => {});
      return;
    }
    if (session.slice_uids && state.sliceUids && !reorderBySession(session.slice_uids)) {
      api("DELETE", `/v1/sessions/${session.id}`).catch(() => {});
      setPrompting(false);
      return say("viewing only: the session's slices are not this series' images, so prompts would miss", true);
    }
    state.session = session;
    state.shape = session.shape.slice(-2);
    document.body.dataset.session = session.id;
    setPrompting(true);
    say(`session ready (${session.modality || "?"}, ${session.shape.join(" × ")})`);
  } catch (error) {
    if (ticket !== opening) return;
    setPrompting(false);
    const reason = error instanceof ApiError && error.status === 404 ? "this service has no interactive sessions" : String(error.message || error);
    say(`viewing only: ${reason}`, !(error instanceof ApiError && error.status === 404));
  }
}

// The session's z order is the engine's (sorted along the slice normal); the stack follows it exactly.
function reorderBySession(sliceUids) {
  const byUid = new Map(state.sliceUids.map((uid, index) => [uid, state.imageIds[index]]));
  if (sliceUids.length !== state.sliceUids.length || sliceUids.some((uid) => !byUid.has(uid))) return false;
  const current = state.sliceUids[viewport.getCurrentImageIdIndex()];
  state.imageIds = sliceUids.map((uid) => byUid.get(uid));
  state.sliceUids = sliceUids.slice();
  viewport.setStack(state.imageIds, Math.max(0, sliceUids.indexOf(current)));
  return true;
}

function clearSession() {
  if (!$("ortho").hidden) toggleOrtho();
  if (state.session) api("DELETE", `/v1/sessions/${state.session.id}`).catch(() => {});
  state.session = null;
  state.labels.clear();
  state.active = null;
  renderLabels();
  setPrompting(false);
  $("stored").replaceChildren();
  delete document.body.dataset.session;
}

function setPrompting(enabled) {
  for (const id of ["undo", "redo", "store", "download-seg", "download-nifti"]) $(id).disabled = !enabled;
}

function currentZ() {
  return viewport ? viewport.getCurrentImageIdIndex() : 0;
}

function plane() {
  return core.metaData.get("imagePlaneModule", viewport.getCurrentImageId());
}

function imagePoint(canvasPoint) {
  const [x, y] = worldToImage(plane(), viewport.canvasToWorld(canvasPoint));
  const [h, w] = state.shape;
  return [Math.min(w - 1, Math.max(0, Math.floor(x))), Math.min(h - 1, Math.max(0, Math.floor(y)))];
}

async function interact(body) {
  if (!state.session) return say("open a series with a session first", true);
  const started = performance.now();
  document.body.dataset.busy = "1";
  try {
    const result = await api("POST", `/v1/sessions/${state.session.id}/interactions`, body);
    applyResult(result);
    const waited = (performance.now() - started) / 1000;
    $("latency").textContent = `mask in ${waited.toFixed(2)} s (engine ${result.seconds.toFixed(2)} s)`;
    document.body.dataset.lastMs = String(Math.round(waited * 1000));
    return result;
  } catch (error) {
    say(String(error.message || error), true);
  } finally {
    delete document.body.dataset.busy;
  }
}

function labelFor(name) {
  if (!state.labels.has(name)) {
    state.labels.set(name, { name, number: 0, colour: [255, 0, 0], opacity: 0.45, visible: true, volume: null, masks: new Map(), clicks: [], box: null });
  }
  return state.labels.get(name);
}

async function saveColour(label) {
  if (!state.session || !label.number) return;
  document.body.dataset.busy = "1";
  try {
    const saved = await api("PATCH", `/v1/sessions/${state.session.id}/labels/${label.number}`, { colour: label.colour });
    label.colour = saved.colour;
    document.body.dataset.colourSaved = `${label.number}:${saved.colour.join(",")}`;
  } catch (error) {
    say(String(error.message || error), true);
  } finally {
    delete document.body.dataset.busy;
    paintOverlay();
  }
}

function applyResult(result) {
  const label = labelFor(result.label);
  label.number = result.number;
  label.colour = result.colour; // the session's: the structure table's, or the one chosen here
  label.volume = result.volume_ml;
  const size = state.shape[0] * state.shape[1];
  for (const z of result.changed) {
    const rle = result.masks[String(z)];
    if (rle) label.masks.set(z, decodeRle(rle, size));
    else label.masks.delete(z);
  }
  state.active = result.label;
  renderLabels();
  paintOverlay();
  document.body.dataset.masks = String([...state.labels.values()].reduce((n, l) => n + l.masks.size, 0));
}

function boxDrawn(event) {
  const annotation = event.detail.annotation;
  if (!annotation || annotation.metadata.toolName !== tools.RectangleROITool.toolName) return;
  const points = annotation.data.handles.points.map((world) => worldToImage(plane(), world));
  tools.annotation.state.removeAnnotation(annotation.annotationUID);
  viewport.render();
  if (!state.session || !state.shape) return say("the box needs an interactive session: open a series first", true);
  const [h, w] = state.shape;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const clamp = (v, hi) => Math.min(hi, Math.max(0, v));
  const x0 = clamp(Math.floor(Math.min(...xs)), w - 1);
  const x1 = clamp(Math.ceil(Math.max(...xs)) - 1, w - 1);
  const y0 = clamp(Math.floor(Math.min(...ys)), h - 1);
  const y1 = clamp(Math.ceil(Math.max(...ys)) - 1, h - 1);
  if (x1 <= x0 || y1 <= y0) return say("the box is too small", true);
  const name = $("label-name").value.trim() || "label";
  const z = currentZ();
  let box = [x0, y0, x1, y1];
  if (state.session && state.session.shape.length === 3) {
    const first = $("z-first").value === "" ? z : Number($("z-first").value);
    const last = $("z-last").value === "" ? z : Number($("z-last").value);
    box = [x0, y0, Math.min(first, last, z), x1, y1, Math.max(first, last, z)];
  }
  labelFor(name).box = box;
  labelFor(name).clicks = [];
  interact({ label: name, box });
}

function clickPrompt(event) {
  if (state.mode !== "click" || (event.button !== 0 && event.button !== 2)) return;
  event.preventDefault();
  event.stopPropagation();
  if (!state.session || !state.shape) return say("open a series with a session first", true);
  const rect = $("viewport").getBoundingClientRect();
  const [x, y] = imagePoint([event.clientX - rect.left, event.clientY - rect.top]);
  const positive = event.button === 0 && !event.shiftKey;
  const name = state.active || $("label-name").value.trim() || "label";
  const point = state.session.shape.length === 3 ? [x, y, currentZ()] : [x, y];
  labelFor(name).clicks.push({ point, positive });
  interact({ label: name, click: { point, positive } });
}

async function history(kind) {
  if (!state.session || !state.active) return;
  try {
    const result = await api("POST", `/v1/sessions/${state.session.id}/${kind}`, { label: state.active });
    applyResult(result);
  } catch (error) {
    say(String(error.message || error), true);
  }
}

async function store() {
  const formats = $("with-rtstruct").checked ? ["seg", "rtstruct"] : ["seg"];
  say("storing…");
  try {
    const result = await api("POST", `/v1/sessions/${state.session.id}/store`, { formats });
    $("stored").replaceChildren(
      ...result.stored.map((item) => {
        const li = document.createElement("li");
        li.textContent = `${item.kind.toUpperCase()} ${item.sop_instance_uid} (series ${item.series_instance_uid})`;
        return li;
      }),
    );
    say("stored in the PACS");
  } catch (error) {
    say(String(error.message || error), true);
  }
}

async function download(format) {
  try {
    const blob = await api("GET", `/v1/sessions/${state.session.id}/result?format=${format}`, undefined, "blob");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.session.id}.${format === "seg" ? "dcm" : "nii.gz"}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    say(String(error.message || error), true);
  }
}

// ------------------------------------------------------------------------------------------------ display
function renderLabels() {
  const body = $("labels").tBodies[0];
  body.replaceChildren(
    ...[...state.labels.values()].map((label) => {
      const row = document.createElement("tr");
      row.className = label.name === state.active ? "active" : "";
      const name = document.createElement("td");
      const pick = document.createElement("button");
      pick.type = "button";
      pick.textContent = `${label.number}: ${label.name}`;
      pick.addEventListener("click", () => {
        state.active = label.name;
        $("label-name").value = label.name;
        renderLabels();
      });
      name.appendChild(pick);
      const show = document.createElement("input");
      show.type = "checkbox";
      show.checked = label.visible;
      show.setAttribute("aria-label", `show ${label.name}`);
      show.addEventListener("change", () => {
        label.visible = show.checked;
        paintOverlay();
      });
      const colour = document.createElement("input");
      colour.type = "color";
      colour.value = "#" + label.colour.map((c) => c.toString(16).padStart(2, "0")).join("");
      colour.setAttribute("aria-label", `colour of ${label.name}`);
      colour.addEventListener("input", () => {
        label.colour = [1, 3, 5].map((i) => parseInt(colour.value.slice(i, i + 2), 16));
        paintOverlay();
      });
      // the chosen colour is the session's: the SEG's and the RTSTRUCT's colour of this label too
      colour.addEventListener("change", () => saveColour(label));
      const opacity = document.createElement("input");
      opacity.type = "range";
      opacity.min = "0";
      opacity.max = "1";
      opacity.step = "0.05";
      opacity.value = String(label.opacity);
      opacity.setAttribute("aria-label", `opacity of ${label.name}`);
      opacity.addEventListener("input", () => {
        label.opacity = Number(opacity.value);
        paintOverlay();
      });
      const cells = [name, show, colour, opacity].map((child) => {
        if (child.tagName === "TD") return child;
        const td = document.createElement("td");
        td.appendChild(child);
        return td;
      });
      const volume = document.createElement("td");
      volume.textContent = label.volume == null ? "–" : label.volume.toFixed(2);
      row.append(...cells, volume);
      return row;
    }),
  );
}

function toCanvas(x, y) {
  return viewport.worldToCanvas(imageToWorld(plane(), [x, y]));
}

// Where image coordinates (x = column, y = row, pixel corners at integers) are on the page, in CSS pixels: what
// the overlay uses; tests and the console read it as viewerState.imageToPage.
state.imageToPage = (x, y) => {
  const rect = $("viewport").getBoundingClientRect();
  const [cx, cy] = toCanvas(x, y);
  return [rect.left + cx, rect.top + cy];
};

function paintOverlay() {
  const canvas = $("overlay");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!viewport || !state.shape || !viewport.getCurrentImageId()) return;
  const z = currentZ();
  const [h, w] = state.shape;
  const origin = toCanvas(0, 0);
  const alongX = toCanvas(1, 0);
  const alongY = toCanvas(0, 1);
  context.setTransform(
    ratio * (alongX[0] - origin[0]),
    ratio * (alongX[1] - origin[1]),
    ratio * (alongY[0] - origin[0]),
    ratio * (alongY[1] - origin[1]),
    ratio * origin[0],
    ratio * origin[1],
  );
  context.imageSmoothingEnabled = false;
  for (const label of state.labels.values()) {
    if (!label.visible) continue;
    const mask = label.masks.get(z);
    if (mask) {
      const pixels = new ImageData(w, h);
      const [r, g, b] = label.colour;
      const alpha = Math.round(255 * label.opacity);
      for (let i = 0; i < mask.length; i++) {
        if (mask[i]) {
          pixels.data[4 * i] = r;
          pixels.data[4 * i + 1] = g;
          pixels.data[4 * i + 2] = b;
          pixels.data[4 * i + 3] = alpha;
        }
      }
      const layer = new OffscreenCanvas(w, h);
      layer.getContext("2d").putImageData(pixels, 0, 0);
      context.drawImage(layer, 0, 0);
    }
    const pixel = 1 / Math.max(1e-6, Math.hypot(alongX[0] - origin[0], alongX[1] - origin[1]));
    if (label.box) {
      const b = label.box;
      const inside = b.length === 4 || (z >= b[2] && z <= b[5]);
      if (inside) {
        const [x0, y0, x1, y1] = b.length === 4 ? b : [b[0], b[1], b[3], b[4]];
        context.strokeStyle = `rgb(${label.colour.join(",")})`;
        context.lineWidth = 1.5 * pixel;
        context.setLineDash([4 * pixel, 3 * pixel]);
        context.strokeRect(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
        context.setLineDash([]);
      }
    }
    for (const click of label.clicks) {
      if (click.point.length === 3 && click.point[2] !== z) continue;
      context.fillStyle = click.positive ? "#3ddc84" : "#ff5252";
      context.strokeStyle = "#000";
      context.lineWidth = pixel;
      context.beginPath();
      context.arc(click.point[0] + 0.5, click.point[1] + 0.5, 4 * pixel, 0, 2 * Math.PI);
      context.fill();
      context.stroke();
    }
  }
}

function showSliceInfo() {
  if (!viewport || !state.imageIds.length) return;
  const z = currentZ();
  $("slice-slider").value = String(z);
  const imageId = viewport.getCurrentImageId();
  const plane = core.metaData.get("imagePlaneModule", imageId);
  const where = plane && plane.imagePositionPatient ? position(plane) : null;
  $("slice-info").textContent =
    `slice ${z + 1} / ${state.imageIds.length}` + (where == null ? "" : ` · ${where.toFixed(1)} mm`);
  $("slice-info").dataset.z = String(z);
  const voi = viewport.getProperties().voiRange;
  if (voi) {
    const width = voi.upper - voi.lower;
    $("voi-info").textContent = `W ${Math.round(width)} L ${Math.round(voi.lower + width / 2)}`;
  }
}

function jump(index) {
  if (!state.imageIds.length) return;
  const target = Math.min(state.imageIds.length - 1, Math.max(0, index));
  viewport.setImageIdIndex(target);
}

// Sagittal and coronal views of a DICOM series: a Cornerstone volume made from the stack's images (WebGL only).
let orthoSeries = 0;

async function toggleOrtho() {
  const panel = $("ortho");
  const button = $("ortho-toggle");
  const engine = core.getRenderingEngine(ENGINE_ID);
  if (!panel.hidden) {
    panel.hidden = true;
    button.setAttribute("aria-pressed", "false");
    for (const id of ["sagittal", "coronal"]) if (engine.getViewport(id)) engine.disableElement(id);
    delete document.body.dataset.ortho;
    return;
  }
  if (core.getShouldUseCPURendering()) return say("orthogonal views need WebGL, which this browser lacks", true);
  if (state.imageIds.length < 2 || !state.imageIds[0].startsWith("wadors:")) {
    return say("orthogonal views are for a 3D series from the PACS", true);
  }
  panel.hidden = false;
  button.setAttribute("aria-pressed", "true");
  document.body.dataset.ortho = "loading";
  orthoSeries += 1;
  const volumeId = `cornerstoneStreamingImageVolume:series-${orthoSeries}`;
  try {
    const volume = await core.volumeLoader.createAndCacheVolume(volumeId, { imageIds: state.imageIds });
    const { ORTHOGRAPHIC } = core.Enums.ViewportType;
    for (const id of ["sagittal", "coronal"]) {
      engine.enableElement({
        viewportId: id,
        type: ORTHOGRAPHIC,
        element: $(id),
        defaultOptions: { orientation: core.Enums.OrientationAxis[id.toUpperCase()], background: [0, 0, 0] },
      });
    }
    volume.load();
    await core.setVolumesForViewports(engine, [{ volumeId }], ["sagittal", "coronal"]);
    // the axial slice shown on the left, as a line across the sagittal and coronal views
    let lines = tools.ToolGroupManager.getToolGroup("ortho-tools");
    if (!lines) {
      lines = tools.ToolGroupManager.createToolGroup("ortho-tools");
      lines.addTool(tools.ReferenceLinesTool.toolName, { sourceViewportId: VIEWPORT_ID });
    }
    for (const id of ["sagittal", "coronal"]) lines.addViewport(id, ENGINE_ID);
    lines.setToolEnabled(tools.ReferenceLinesTool.toolName);
    const voi = viewport.getProperties().voiRange;
    for (const id of ["sagittal", "coronal"]) {
      if (voi) engine.getViewport(id).setProperties({ voiRange: voi });
      engine.getViewport(id).render();
    }
    engine.resize(true, true);
    document.body.dataset.ortho = "ready";
  } catch (error) {
    say(`orthogonal views: ${error.message || error}`, true);
  }
}

function syncOrthoWindow() {
  const engine = core.getRenderingEngine(ENGINE_ID);
  const voi = viewport.getProperties().voiRange;
  if (!voi || $("ortho").hidden) return;
  for (const id of ["sagittal", "coronal"]) {
    const view = engine.getViewport(id);
    if (view) {
      view.setProperties({ voiRange: voi });
      view.render();
    }
  }
}

function applyPreset(name) {
  if (!state.imageIds.length) return;
  if (name === "auto") viewport.resetProperties();
  else viewport.setProperties({ voiRange: presetRange(name) });
  viewport.render();
  syncOrthoWindow();
  document.body.dataset.preset = name;
}

function zoom(factor) {
  viewport.setZoom(viewport.getZoom() * factor);
  viewport.render();
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range" && event.target.type !== "radio") return;
  if (event.target instanceof HTMLSelectElement) return;
  const z = currentZ();
  const key = event.key;
  const handled = () => event.preventDefault();
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") {
    handled();
    return history(event.shiftKey ? "redo" : "undo");
  }
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "y") {
    handled();
    return history("redo");
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    ArrowUp: () => jump(z - 1),
    ArrowLeft: () => jump(z - 1),
    ArrowDown: () => jump(z + 1),
    ArrowRight: () => jump(z + 1),
    PageUp: () => jump(z - 10),
    PageDown: () => jump(z + 10),
    Home: () => jump(0),
    End: () => jump(state.imageIds.length - 1),
    "+": () => zoom(1.25),
    "=": () => zoom(1.25),
    "-": () => zoom(0.8),
    r: () => {
      viewport.resetCamera();
      viewport.resetProperties();
      viewport.render();
    },
    1: () => applyPreset("soft"),
    2: () => applyPreset("lung"),
    3: () => applyPreset("bone"),
    4: () => applyPreset("brain"),
    5: () => applyPreset("auto"),
    o: () => toggleOrtho(),
    w: () => setMode("window"),
    b: () => setMode("box"),
    c: () => setMode("click"),
    "[": () => ($("z-first").value = String(z)),
    "]": () => ($("z-last").value = String(z)),
    h: () => {
      const label = state.labels.get(state.active);
      if (label) {
        label.visible = !label.visible;
        renderLabels();
        paintOverlay();
      }
    },
  };
  const action = actions[key.length === 1 ? key.toLowerCase() : key];
  if (action) {
    handled();
    action();
  }
}

// ------------------------------------------------------------------------------------------------ wiring
async function main() {
  setTokenFromFragment();
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value);
    $("auth").hidden = true;
    loadServers().catch((error) => say(String(error.message || error), true));
  });
  core.imageLoader.registerImageLoader("session", loadSessionSlice);
  let rendering;
  try {
    rendering = await setUp();
  } catch (error) {
    say(`the viewer could not start: ${error.message || error}`, true);
    return;
  }
  core.metaData.addProvider(sessionMetadata, 10000);
  $("search").addEventListener("submit", searchStudies);
  $("by-uid").addEventListener("submit", (event) => {
    event.preventDefault();
    openSeries(Number($("server").value), $("study-uid").value.trim(), $("series-uid").value.trim());
  });
  $("upload").addEventListener("submit", uploadFiles);
  for (const button of document.querySelectorAll("#presets button")) {
    button.addEventListener("click", () => applyPreset(button.dataset.preset));
  }
  $("ortho-toggle").addEventListener("click", toggleOrtho);
  $("reset-view").addEventListener("click", () => {
    viewport.resetCamera();
    viewport.resetProperties();
    viewport.render();
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => setMode(radio.value));
  }
  $("slice-slider").addEventListener("input", () => jump(Number($("slice-slider").value)));
  $("undo").addEventListener("click", () => history("undo"));
  $("redo").addEventListener("click", () => history("redo"));
  $("store").addEventListener("click", store);
  $("download-seg").addEventListener("click", () => download("seg"));
  $("download-nifti").addEventListener("click", () => download("nifti"));
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", () => {
    if (state.session) {
      fetch(`/v1/sessions/${state.session.id}`, {
        method: "DELETE",
        keepalive: true,
        headers: { Authorization: `Bearer ${token()}` },
      }).catch(() => {});
    }
  });
  setPrompting(false);
  if (!token()) {
    $("auth").hidden = false;
    say("an API token is needed");
  } else {
    try {
      await loadServers();
      say(`ready (${rendering})`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) $("auth").hidden = false;
      say(String(error.message || error), true);
    }
  }
  document.body.dataset.ready = "1";
}

main();
