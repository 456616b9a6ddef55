// bigseg web page: sign in, jobs, new job (form from the method's JSON schema), job page.
// Vanilla JS, no build step, no network access beyond this server. Text from the server is always inserted
// with textContent (el()), never as HTML.

const API = "/api/v1";
const POLL_MS = 1500;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const ACTIVE = ["queued", "starting", "running", "canceling", "interrupted"];
const STATUSES = ["queued", "starting", "running", "succeeded", "failed", "canceling", "canceled", "interrupted"];
const CANCELABLE = new Set(["queued", "starting", "running", "interrupted"]);
const RETRYABLE = new Set(["failed", "canceled", "interrupted"]);
const EVENT_KINDS = ["state", "JobStarted", "StageStarted", "StageAdvanced", "StageEnded", "Message", "Warning",
  "JobFinished", "JobFailed", "JobCancelled"];
const LOG_LIMIT = 200000; // characters of log kept on the page

const state = { info: null, cleanups: [] };
const app = document.getElementById("app");

// ---------- small helpers ----------

/** An element with attributes/properties and children (strings become text nodes: never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key in node && !key.includes("-") && key !== "list") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...nodes(children));
  return node;
}

/** Children as nodes: arrays flattened, null/undefined/false left out, everything else as text. */
function nodes(children) {
  return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

/** Replace node's children (same rules as el()). */
function fill(node, ...children) {
  node.replaceChildren(...nodes(children));
}

class ApiError extends Error {
  constructor(status, detail, field) {
    super(detail);
    this.status = status;
    this.field = field || null;
  }
}

/** The error body's one line and field: {"detail": str, "field"} or FastAPI's list of validation errors. */
function errorOf(status, body) {
  let detail = body && body.detail;
  let field = body && body.field;
  if (Array.isArray(detail) && detail.length) {
    const first = detail[0];
    field = field || (Array.isArray(first.loc) ? first.loc.filter((p) => p !== "body").join(".") : null);
    detail = first.msg || JSON.stringify(first);
  }
  if (typeof detail !== "string" || !detail) detail = `HTTP ${status}`;
  return new ApiError(status, detail, field);
}

/** fetch /api/v1 + path with the session cookie; JSON in and out; throws ApiError on a non-2xx answer. */
async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const error = errorOf(response.status, data);
    if (response.status === 401 && path !== "/login" && state.info) signedOut("Your session has ended: sign in again.");
    throw error;
  }
  return data;
}

function onCleanup(fn) {
  state.cleanups.push(fn);
}

/** Run fn now and every ms until the page changes (fn returns false: stop; a number: the next delay in ms);
 * errors are shown in `errorBox` (when given). */
function every(ms, fn, errorBox) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    let delay = ms;
    try {
      const again = await fn();
      if (errorBox) errorBox.textContent = "";
      if (again === false) return;
      if (typeof again === "number") delay = again;
    } catch (err) {
      if (errorBox && err.status !== 401) errorBox.textContent = err.message;
      if (err.status === 401 || err.status === 404) return;
    }
    if (!stopped) timer = setTimeout(tick, delay);
  };
  tick();
  onCleanup(() => {
    stopped = true;
    clearTimeout(timer);
  });
}

function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

const shape = (values) => (Array.isArray(values) ? values.join(" × ") : String(values ?? ""));
const percent = (fraction) => Math.max(0, Math.min(100, Math.round((fraction || 0) * 100)));

/** A progress bar addressable as role=progressbar with an accessible name and aria-valuenow in percent. */
function progressBar(label, fraction, text) {
  const value = percent(fraction);
  const fill = el("div", { class: "fill" });
  fill.style.width = `${value}%`;
  return el("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": value, "aria-valuetext": text || `${value}%`, title: text || `${value}%` },
  fill);
}

function badge(status) {
  return el("span", { class: `badge s-${status}`, "data-testid": "status" }, status);
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  const parts = [el("label", { for: id }, label), input];
  if (hint) {
    const hintId = `${id}-hint`;
    input.setAttribute("aria-describedby", hintId);
    parts.push(el("small", { id: hintId, class: "hint" }, hint));
  }
  return el("div", { class: "field" }, parts);
}

// ---------- session ----------

function setSignedIn(info) {
  state.info = info;
  document.getElementById("nav").hidden = !info;
  document.getElementById("signout").hidden = !info;
  document.getElementById("who").textContent = info ? `${info.user.name}${info.user.admin ? " (admin)" : ""}` : "";
}

function signedOut(message) {
  setSignedIn(null);
  state.signInMessage = message || "";
  if (!location.hash.startsWith("#/login")) {
    state.afterSignIn = location.hash || "#/jobs";
    location.hash = "#/login";
  } else {
    render();
  }
}

document.getElementById("signout").addEventListener("click", async () => {
  try {
    await api("/logout", { method: "POST" });
  } finally {
    state.afterSignIn = "#/jobs";
    signedOut("Signed out.");
  }
});

function viewSignIn() {
  const token = el("input", { type: "password", name: "token", autocomplete: "current-password", required: true });
  const error = el("p", { class: "error", role: "alert" }, state.signInMessage || "");
  state.signInMessage = "";
  const form = el("form", { class: "card narrow", "aria-label": "Sign in" },
    el("h1", {}, "Sign in"),
    field("Token", token, "The token bigseg serve wrote to DATA/token, or one from bigseg serve user add."),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Sign in")),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api("/login", { method: "POST", body: { token: token.value.trim() } });
      setSignedIn(await api("/info"));
      location.hash = state.afterSignIn && state.afterSignIn !== "#/login" ? state.afterSignIn : "#/jobs";
    } catch (err) {
      error.textContent = err.status === 401 ? `Sign-in failed: ${err.message}` : err.message;
      token.focus();
    }
  });
  fill(app, form);
  token.focus();
}

// ---------- jobs ----------

function viewJobs() {
  const filter = el("select", { name: "status" },
    el("option", { value: "" }, "all"),
    el("option", { value: ACTIVE.join(",") }, "active"),
    STATUSES.map((s) => el("option", { value: s }, s)));
  filter.value = state.jobsFilter || "";
  const body = el("tbody");
  const total = el("span", { class: "muted" });
  const error = el("p", { class: "error", role: "alert" });
  const table = el("table", { class: "jobs", "aria-label": "Jobs" },
    el("thead", {}, el("tr", {}, ["Title", "ID", "Owner", "Status", "Stage", "Progress", "Age", "Profile"]
      .map((h) => el("th", { scope: "col" }, h)))),
    body);
  fill(app, el("section", {},
    el("div", { class: "row" }, el("h1", {}, "Jobs"), total, el("span", { class: "spacer" }),
      field("Status", filter), el("a", { class: "button", href: "#/new" }, "New job")),
    error, table));

  const refresh = async () => {
    const query = filter.value ? `?limit=100&status=${encodeURIComponent(filter.value)}` : "?limit=100";
    const data = await api(`/jobs${query}`);
    total.textContent = `${data.total} job${data.total === 1 ? "" : "s"}`;
    fill(body, ...data.jobs.map(jobRow));
    if (!data.jobs.length) {
      body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No jobs. ",
        el("a", { href: "#/new" }, "Submit one"), ".")));
    }
  };
  filter.addEventListener("change", () => {
    state.jobsFilter = filter.value;
    refresh().catch((err) => (error.textContent = err.message));
  });
  every(POLL_MS, refresh, error);
}

function jobRow(job) {
  const progress = job.progress || {};
  const name = job.title || job.id;
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, name)),
    el("td", { class: "mono" }, job.id),
    el("td", {}, job.owner),
    el("td", {}, badge(job.status)),
    el("td", {}, progress.stage || ""),
    el("td", {}, progressBar(`${name} progress`, job.status === "succeeded" ? 1 : progress.fraction)),
    el("td", { title: job.created }, age(job.created)),
    el("td", {}, job.profile || ""));
}

// ---------- new job ----------

/** What a JSON-schema property accepts: {types, enum, nullable, itemTypes}. */
function kinds(prop) {
  const out = { types: new Set(), enum: null, nullable: false, itemTypes: new Set() };
  const visit = (p) => {
    if (!p) return;
    if (p.anyOf || p.oneOf) (p.anyOf || p.oneOf).forEach(visit);
    if (p.enum) out.enum = p.enum;
    if (p.const !== undefined) out.enum = [p.const];
    const types = Array.isArray(p.type) ? p.type : p.type ? [p.type] : [];
    for (const t of types) {
      if (t === "null") out.nullable = true;
      else out.types.add(t);
    }
    if (types.includes("array")) {
      for (const item of [p.items, ...(p.prefixItems || [])]) {
        if (!item) continue;
        const inner = kinds(item);
        inner.types.forEach((t) => out.itemTypes.add(t));
      }
    }
  };
  visit(prop);
  return out;
}

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

function scalar(text, types) {
  if (NUMBER.test(text) && (types.has("number") || types.has("integer"))) return Number(text);
  if (/^(true|false)$/i.test(text) && types.has("boolean")) return text.toLowerCase() === "true";
  return text;
}

/** The value a text input stands for, given what the schema accepts; undefined = leave it out. */
function parseValue(text, k) {
  text = text.trim();
  if (!text) return k.nullable ? null : undefined;
  const onlyArray = k.types.size === 1 && k.types.has("array");
  if (k.types.has("array") && (onlyArray || text.includes(","))) {
    const itemTypes = k.itemTypes.size ? k.itemTypes : new Set(["number", "string"]);
    return text.split(",").map((s) => s.trim()).filter(Boolean).map((s) => scalar(s, itemTypes));
  }
  return scalar(text, k.types);
}

const asText = (value) => (value === null || value === undefined ? "" : Array.isArray(value) ? value.join(", ") : String(value));

/** Inputs for a method's parameters; returns {node, values()} where values() has only the changed ones. */
function parameterForm(schema) {
  const props = schema.properties || {};
  const rows = [];
  const readers = [];
  for (const [key, prop] of Object.entries(props)) {
    if (key === "name") continue;
    const k = kinds(prop);
    const label = prop.title || key;
    const path = `method.${key}`;
    let input;
    let read;
    if (k.types.size === 1 && k.types.has("boolean") && !k.enum) {
      input = el("input", { type: "checkbox", name: path, "data-field": path });
      input.checked = Boolean(prop.default);
      const initial = input.checked;
      read = () => (input.checked === initial ? undefined : input.checked);
      rows.push(el("div", { class: "field check" }, el("label", {}, input, ` ${label}`),
        prop.description ? el("small", { class: "hint" }, prop.description) : null));
      readers.push([key, read]);
      continue;
    }
    if (k.enum) {
      input = el("select", { name: path, "data-field": path },
        k.nullable ? el("option", { value: "" }, "(default)") : null,
        k.enum.map((v) => el("option", { value: String(v) }, String(v))));
      input.value = asText(prop.default);
      const initial = input.value;
      read = () => (input.value === initial ? undefined : input.value === "" ? null
        : k.enum.find((v) => String(v) === input.value));
    } else {
      const numeric = [...k.types].every((t) => t === "number" || t === "integer");
      input = el("input", { type: "text", name: path, "data-field": path, inputmode: numeric ? "decimal" : null,
        placeholder: prop.default === null || prop.default === undefined ? "default" : "" });
      input.value = asText(prop.default);
      const initial = input.value;
      read = () => (input.value.trim() === initial ? undefined : parseValue(input.value, k));
    }
    rows.push(field(label, input, prop.description));
    readers.push([key, read]);
  }
  const values = () => {
    const out = {};
    for (const [key, read] of readers) {
      const value = read();
      if (value !== undefined) out[key] = value;
    }
    return out;
  };
  return { node: el("div", { class: "grid" }, rows), values };
}

/** The folder browser over GET /files: roots first, folders descend, OME-Zarr images are selectable. */
function filePicker(onPick) {
  const list = el("ul", { class: "files", "aria-label": "Files" });
  const where = el("div", { class: "where mono" });
  const error = el("p", { class: "error", role: "alert" });
  const up = el("button", { type: "button", class: "small" }, "Up");
  const close = el("button", { type: "button", class: "small" }, "Close");
  const panel = el("div", { class: "picker", role: "dialog", "aria-label": "Choose an image" },
    el("div", { class: "row" }, up, where, el("span", { class: "spacer" }), close), error, list);
  let parent = null;
  let current = null;

  const open = async (path) => {
    error.textContent = "";
    let data;
    try {
      data = await api(path ? `/files?path=${encodeURIComponent(path)}` : "/files");
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    current = data.path;
    parent = data.parent;
    where.textContent = data.path || "Roots";
    up.disabled = !data.path;
    fill(list, ...data.entries.map((entry) => {
      if (entry.kind === "ome-zarr") {
        const ome = entry.ome || {};
        const about = [ome.axes, shape(ome.shape), ome.dtype, ome.levels ? `${ome.levels} levels` : "",
          ome.channels > 1 ? `${ome.channels} channels` : ""].filter(Boolean).join(" · ");
        return el("li", { class: "ome" },
          el("button", { type: "button", class: "entry", onclick: () => onPick(entry.path) }, entry.name),
          el("span", { class: "muted" }, `OME-Zarr ${about}`));
      }
      if (entry.kind === "dir") {
        return el("li", { class: "dir" },
          el("button", { type: "button", class: "entry", onclick: () => open(entry.path) }, `${entry.name}/`),
          entry.mode ? el("span", { class: "muted" }, entry.mode === "ro" ? "read-only" : "read-write") : null);
      }
      return el("li", { class: "file muted" }, entry.name);
    }));
    if (!data.entries.length) list.append(el("li", { class: "muted" }, "(empty)"));
  };
  up.addEventListener("click", () => open(parent));
  close.addEventListener("click", () => panel.remove());
  return { panel, open, get current() { return current; } };
}

function viewNewJob() {
  const info = state.info;
  const method = el("select", { name: "method", "data-field": "method.name" },
    info.methods.map((m) => el("option", { value: m }, m)));
  method.value = state.lastMethod && info.methods.includes(state.lastMethod) ? state.lastMethod
    : info.methods.includes("watershed") ? "watershed" : info.methods[0];
  const image = el("input", { type: "text", name: "image", required: true, "data-field": "input.url",
    placeholder: "/data/image.zarr" });
  const browse = el("button", { type: "button" }, "Browse");
  const labelName = el("input", { type: "text", name: "label", "data-field": "output.name",
    placeholder: "default: the method's name" });
  const outputUrl = el("input", { type: "text", name: "output_url", "data-field": "output.url",
    placeholder: "default: IMAGE/labels/NAME" });
  const overwrite = el("input", { type: "checkbox", name: "overwrite", "data-field": "output.overwrite" });
  const blockShape = el("input", { type: "text", name: "block_shape", "data-field": "blocks.shape",
    placeholder: "default: from the chunks" });
  const profile = el("select", { name: "profile", "data-field": "profile" },
    info.profiles.map((p) => el("option", { value: p.name }, `${p.name} (${p.kind})`)));
  profile.value = info.default_profile || (info.profiles.find((p) => p.default) || {}).name || "";
  const priority = el("input", { type: "number", name: "priority", value: "0", step: "1", "data-field": "priority" });
  const title = el("input", { type: "text", name: "title", "data-field": "title" });
  const tags = el("input", { type: "text", name: "tags", "data-field": "tags", placeholder: "comma-separated" });
  const params = el("fieldset", { class: "params" }, el("legend", {}, "Parameters"));
  const error = el("p", { class: "error", role: "alert" });
  const plan = el("section", { class: "plan", "aria-label": "Plan", hidden: true });
  const validate = el("button", { type: "button" }, "Validate");
  const submit = el("button", { type: "submit", class: "primary" }, "Submit");
  const pickerSlot = el("div");
  let form = { values: () => ({}) };

  let loaded = null; // the method whose parameters are shown (or being loaded)
  const loadMethod = async () => {
    if (method.value === loaded) return;
    loaded = method.value;
    state.lastMethod = method.value;
    fill(params, el("legend", {}, `Parameters of ${method.value}`), el("p", { class: "muted" }, "Loading…"));
    try {
      const name = method.value;
      const schema = await api(`/methods/${encodeURIComponent(name)}`);
      if (name !== loaded) return; // another method was chosen meanwhile
      form = parameterForm(schema);
      fill(params, el("legend", {}, `Parameters of ${name}`), form.node);
    } catch (err) {
      loaded = null;
      fill(params, el("legend", {}, "Parameters"), el("p", { class: "error" }, err.message));
    }
  };
  method.addEventListener("change", loadMethod);

  browse.addEventListener("click", () => {
    const picker = filePicker((path) => {
      image.value = path;
      picker.panel.remove();
      image.focus();
    });
    fill(pickerSlot, picker.panel);
    picker.open(null);
  });

  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const body = () => {
    const spec = { input: { url: image.value.trim() }, method: { name: method.value, ...form.values() } };
    const output = {};
    if (labelName.value.trim()) output.name = labelName.value.trim();
    if (outputUrl.value.trim()) output.url = outputUrl.value.trim();
    if (overwrite.checked) output.overwrite = true;
    if (Object.keys(output).length) spec.output = output;
    if (blockShape.value.trim()) spec.blocks = { shape: list(blockShape.value).map((s) => (NUMBER.test(s) ? Number(s) : s)) };
    if (profile.value) spec.profile = profile.value;
    if (priority.value.trim()) spec.priority = Number(priority.value);
    if (title.value.trim()) spec.title = title.value.trim();
    if (tags.value.trim()) spec.tags = list(tags.value);
    return spec;
  };

  const showError = (err) => {
    error.textContent = err.field && !err.message.startsWith(err.field) ? `${err.field}: ${err.message}` : err.message;
    const target = err.field && formNode.querySelector(`[data-field="${CSS.escape(err.field)}"]`);
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.focus();
    }
  };
  const clearErrors = () => {
    error.textContent = "";
    formNode.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  };

  validate.addEventListener("click", async () => {
    clearErrors();
    plan.hidden = true;
    validate.disabled = true;
    try {
      showPlan(plan, await api("/jobs/validate", { method: "POST", body: body() }));
    } catch (err) {
      showError(err);
    } finally {
      validate.disabled = false;
    }
  });

  const formNode = el("form", { class: "card", "aria-label": "New job" },
    el("h1", {}, "New job"),
    el("fieldset", {}, el("legend", {}, "Input and method"),
      el("div", { class: "field" }, el("label", { for: "image" }, "Image"),
        el("div", { class: "row" }, Object.assign(image, { id: "image" }), browse),
        el("small", { class: "hint" }, "An OME-Zarr image under one of your folders.")),
      pickerSlot,
      field("Method", method)),
    params,
    el("fieldset", {}, el("legend", {}, "Output and run"),
      el("div", { class: "grid" },
        field("Label name", labelName, "Writes IMAGE/labels/NAME."),
        field("Output URL", outputUrl, "Optional: a standalone label image instead."),
        field("Block shape", blockShape, "z, y, x; a multiple of the chunk shape."),
        field("Profile", profile),
        field("Priority", priority),
        field("Title", title),
        field("Tags", tags)),
      el("div", { class: "field check" }, el("label", {}, overwrite, " Overwrite existing labels"))),
    el("div", { class: "actions" }, validate, submit),
    error, plan);
  formNode.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    submit.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", body: body() });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      showError(err);
    } finally {
      submit.disabled = false;
    }
  });
  fill(app, formNode);
  loadMethod();
}

function showPlan(node, plan) {
  const rows = [
    ["Blocks", plan.blocks, "plan-blocks"],
    ["Block shape", shape(plan.block_shape)],
    ["Halo", shape(plan.halo)],
    ["Image shape", shape(plan.shape)],
    ["Voxels", Number(plan.voxels).toLocaleString("en")],
    ["Output", plan.output_url],
    ["Resume", plan.resume ? "yes: finished blocks of an earlier run are reused" : "no"],
    ["Workers", plan.workers],
    ["Memory per worker", `≈ ${bytes(plan.est_worker_bytes)}`],
    ["Time", `≈ ${duration(plan.est_seconds)}`],
    ["Profile", plan.profile],
  ];
  fill(node, el("h2", {}, "Plan"),
    el("dl", {}, rows.map(([k, v, id]) => [el("dt", {}, k), el("dd", { "data-testid": id }, v ?? "")])),
    plan.warnings && plan.warnings.length
      ? el("ul", { class: "warnings", "aria-label": "Warnings" }, plan.warnings.map((w) => el("li", {}, w)))
      : null);
  node.hidden = false;
}

// ---------- job page ----------

function viewJob(id) {
  const path = `/jobs/${encodeURIComponent(id)}`;
  const head = el("div");
  const actions = el("div", { class: "actions" });
  const cancel = el("button", { type: "button", disabled: true }, "Cancel");
  const retry = el("button", { type: "button", disabled: true }, "Retry");
  actions.append(cancel, retry);
  const error = el("p", { class: "error", role: "alert" });
  const stages = el("section", { "aria-label": "Stages" });
  const result = el("section", { class: "result", "aria-label": "Result", hidden: true });
  const events = el("ol", { class: "events", "aria-label": "Events" });
  const log = el("pre", { class: "log", "aria-label": "Log", tabindex: 0 });
  fill(app, el("section", {}, head, actions, error, stages, result,
    el("div", { class: "cols" },
      el("section", {}, el("h2", {}, "Events"), events),
      el("section", {}, el("h2", {}, "Log"), log))));

  let job = null;
  let lastSeq = 0;
  let logOffset = 0;
  let resultShown = false;
  let live = null;

  const act = async (verb) => {
    error.textContent = "";
    try {
      job = await api(`${path}/${verb}`, { method: "POST" });
      showJob();
      if (verb === "retry") startLive();
    } catch (err) {
      error.textContent = err.message;
    }
  };
  cancel.addEventListener("click", () => act("cancel"));
  retry.addEventListener("click", () => act("retry"));

  const showJob = () => {
    const title = job.title || job.id;
    fill(head,
      el("div", { class: "row" }, el("h1", {}, title), badge(job.status)),
      el("dl", { class: "facts" },
        el("dt", {}, "ID"), el("dd", { class: "mono" }, job.id),
        el("dt", {}, "Status"), el("dd", { "data-testid": "job-status" }, job.status),
        el("dt", {}, "Attempt"), el("dd", {}, `${job.attempt} of ${job.max_attempts}`),
        el("dt", {}, "Owner"), el("dd", {}, job.owner),
        el("dt", {}, "Profile"), el("dd", {}, job.profile || ""),
        el("dt", {}, "Method"), el("dd", {}, (job.spec && job.spec.method && job.spec.method.name) || ""),
        el("dt", {}, "Image"), el("dd", { class: "mono" }, (job.spec && job.spec.input && job.spec.input.url) || ""),
        el("dt", {}, "Created"), el("dd", { title: job.created }, `${age(job.created)} ago`),
        job.started ? [el("dt", {}, "Started"), el("dd", { title: job.started }, `${age(job.started)} ago`)] : null,
        job.finished ? [el("dt", {}, "Finished"), el("dd", { title: job.finished }, `${age(job.finished)} ago`)] : null,
        job.tags && job.tags.length ? [el("dt", {}, "Tags"), el("dd", {}, job.tags.join(", "))] : null,
        job.dashboard ? [el("dt", {}, "Dashboard"),
          el("dd", {}, el("a", { href: job.dashboard, target: "_blank", rel: "noopener" }, "Dask dashboard"))] : null),
      job.error ? el("p", { class: "error", "data-testid": "job-error" },
        `${job.error.kind || "error"}: ${job.error.message}`) : null);
    cancel.disabled = !CANCELABLE.has(job.status);
    retry.disabled = !RETRYABLE.has(job.status);
    showStages();
    if (job.status === "succeeded" && job.result && !resultShown) {
      resultShown = true;
      showResult(result, job);
    } else if (job.status !== "succeeded" && resultShown) {
      resultShown = false;
      result.hidden = true;
    }
  };

  const showStages = () => {
    const progress = job.progress || { stages: [] };
    const done = job.status === "succeeded" ? 1 : progress.fraction;
    const rows = (progress.stages || []).map((s) => {
      const fraction = s.state === "done" ? 1 : s.total ? s.done / s.total : 0;
      const counts = s.total ? `${s.done}/${s.total}` : s.state === "done" ? "done" : "";
      const extra = [s.resumed ? `${s.resumed} resumed` : "", s.seconds !== null && s.seconds !== undefined
        ? duration(s.seconds) : ""].filter(Boolean).join(", ");
      return el("div", { class: `stage st-${s.state}` },
        el("span", { class: "name" }, s.name),
        progressBar(`${s.name} progress`, fraction, `${counts || s.state}`),
        el("span", { class: "counts" }, counts, extra ? ` (${extra})` : ""),
        el("span", { class: "muted" }, s.state));
    });
    fill(stages, el("h2", {}, "Progress"),
      el("div", { class: "stage total" }, el("span", { class: "name" }, "overall"),
        progressBar("Overall progress", done), el("span", { class: "counts" }, `${percent(done)}%`),
        el("span", { class: "muted" }, progress.stage || "")),
      rows);
  };

  const addEvents = (list, via) => {
    for (const e of list) {
      if (e.seq <= lastSeq) continue;
      lastSeq = e.seq;
      const when = eventTime(e.ts);
      events.append(el("li", { class: `ev-${e.kind}`, "data-via": via },
        el("time", { datetime: when && when.toISOString(), title: when && when.toISOString() },
          when ? when.toLocaleTimeString() : ""),
        el("span", { class: "kind" }, e.kind), el("span", {}, describeEvent(e))));
    }
  };

  const pollEvents = async () => {
    const data = await api(`${path}/events?after=${lastSeq}`);
    addEvents(data.events || [], "poll");
    return !(job && TERMINAL.has(job.status)) || data.events.length > 0;
  };

  const startLive = () => {
    if (live) live.close();
    live = null;
    if (!("EventSource" in window)) {
      every(2000, pollEvents);
      return;
    }
    const source = new EventSource(`${API}${path}/events?after=${lastSeq}`);
    live = source;
    const onEvent = (message) => {
      try {
        const data = JSON.parse(message.data);
        addEvents([{ seq: Number(message.lastEventId || data.seq), ts: data.ts, kind: data.kind || message.type,
          data: data.data !== undefined ? data.data : data }], "sse");
      } catch (err) {
        /* a malformed event is skipped: the next poll of the job shows the state */
      }
    };
    EVENT_KINDS.forEach((kind) => source.addEventListener(kind, onEvent));
    source.addEventListener("end", () => {
      // The job is over and the server closed the stream: do not let the browser reconnect.
      source.close();
      if (live === source) live = null;
    });
    source.onmessage = onEvent;
    source.onerror = () => {
      // The stream ends when the job is done (the browser would reconnect): stop, then catch up by polling.
      source.close();
      if (live === source) live = null;
      if (!(job && TERMINAL.has(job.status))) every(2000, pollEvents);
      else pollEvents().catch(() => {});
    };
  };
  onCleanup(() => live && live.close());

  const pollLog = async () => {
    const data = await api(`${path}/log?offset=${logOffset}`);
    if (data.text) {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      let text = log.textContent + data.text;
      if (text.length > LOG_LIMIT) text = text.slice(-LOG_LIMIT);
      log.textContent = text;
      if (atBottom) log.scrollTop = log.scrollHeight;
    }
    logOffset = data.next_offset ?? logOffset;
  };

  let wasTerminal = false;
  every(POLL_MS, async () => {
    job = await api(path);
    showJob();
    await pollLog().catch(() => {});
    const terminal = TERMINAL.has(job.status);
    if (terminal && wasTerminal) return 5000; // keep watching slowly: a retry elsewhere shows up
    if (terminal) {
      wasTerminal = true;
      if (live) {
        live.close();
        live = null;
      }
      await pollEvents().catch(() => {});
    } else {
      wasTerminal = false;
    }
    return true;
  }, error);
  pollEvents().then(startLive, startLive);
}

/** An event's time: epoch seconds (a number) or an ISO-8601 string. */
function eventTime(ts) {
  if (ts === null || ts === undefined || ts === "") return null;
  const when = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  return Number.isNaN(when.getTime()) ? null : when;
}

function describeEvent(e) {
  const d = e.data || {};
  if (e.kind === "state") return `${d.from || "·"} → ${d.to}${d.reason ? `: ${d.reason}` : ""}`;
  const parts = [];
  for (const key of ["stage", "message", "done", "total", "error", "reason"]) {
    if (d[key] !== undefined && d[key] !== null && typeof d[key] !== "object") parts.push(key === "message" || key === "error" ? String(d[key]) : `${key} ${d[key]}`);
  }
  return parts.join(" · ");
}

function showResult(node, job) {
  const r = job.result;
  const links = job.links || {};
  const base = `${API}/jobs/${encodeURIComponent(job.id)}`;
  const qc = el("img", { src: links.qc || `${base}/qc.png`, alt: "QC overlay", class: "qc" });
  const preview = el("div", { class: "table-wrap" });
  const snippet = el("pre", { class: "snippet", "aria-label": "Python snippet" }, pythonSnippet(r));
  const copied = el("span", { class: "muted", role: "status" });
  const copy = el("button", { type: "button", class: "small" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(snippet.textContent);
    } catch (err) {
      const range = document.createRange();
      range.selectNodeContents(snippet);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      document.execCommand("copy");
    }
    copied.textContent = "Copied";
  });
  fill(node,
    el("h2", {}, "Result"),
    el("dl", { class: "facts" },
      el("dt", {}, "Objects"), el("dd", { "data-testid": "objects" }, r.objects),
      el("dt", {}, "Labels"), el("dd", { class: "mono" }, r.labels),
      el("dt", {}, "Blocks"), el("dd", {}, `${r.blocks}${r.blocks_empty ? ` (${r.blocks_empty} empty)` : ""}${r.blocks_background ? `, ${r.blocks_background} background` : ""}`),
      r.seconds && r.seconds.total !== undefined ? [el("dt", {}, "Time"), el("dd", {}, duration(r.seconds.total))] : null),
    el("div", { class: "cols" },
      el("figure", {}, qc, el("figcaption", {}, "Outlines over the image (middle plane)")),
      el("div", {},
        el("h3", {}, "Downloads"),
        el("ul", { class: "downloads" },
          el("li", {}, el("a", { href: links.table_parquet || `${base}/table.parquet`, download: "table.parquet" },
            "table.parquet")),
          el("li", {}, el("a", { href: links.qc || `${base}/qc.png`, download: "qc.png" }, "qc.png"))),
        el("h3", {}, "Open the result"),
        snippet, el("div", { class: "row" }, copy, copied))),
    el("h3", {}, "Table preview"), preview);
  node.hidden = false;
  tablePreview(preview, base);
}

function pythonSnippet(r) {
  const q = (s) => JSON.stringify(String(s ?? ""));
  return [
    "import pandas as pd",
    "import zarr",
    "from ome_zarr.io import parse_url",
    "from ome_zarr.reader import Reader",
    "",
    `labels_path = ${q(r.labels)}`,
    `table_path = ${q(r.table)}`,
    "labels = zarr.open_group(labels_path, mode=\"r\")[\"0\"]  # full resolution",
    "levels = list(Reader(parse_url(labels_path))())[0].data  # all resolutions (dask arrays)",
    "table = pd.read_parquet(table_path)",
    "",
    "# or look at it in napari (napari-ome-zarr plugin), from a shell:",
    `#   napari ${r.labels}`,
  ].join("\n");
}

/** The first rows of the job's table, sorted by the clicked column (again: the other way). */
function tablePreview(node, base) {
  let sort = null;
  let desc = false;
  const load = async () => {
    const query = new URLSearchParams({ limit: "50" });
    if (sort) {
      query.set("sort", sort);
      query.set("desc", String(desc));
    }
    let data;
    try {
      data = await api(`${base.slice(API.length)}/table?${query}`);
    } catch (err) {
      fill(node, el("p", { class: "error" }, err.message));
      return;
    }
    const header = data.columns.map((c) => {
      const on = c === sort;
      return el("th", { scope: "col", "aria-sort": on ? (desc ? "descending" : "ascending") : "none" },
        el("button", { type: "button", class: "sort", onclick: () => {
          desc = on ? !desc : false;
          sort = c;
          load();
        } }, c, on ? (desc ? " ▼" : " ▲") : ""));
    });
    const cell = (v) => el("td", {}, typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(6) : v ?? "");
    fill(node,
      el("p", { class: "muted" }, `${data.rows.length} of ${data.total} rows`),
      el("table", { class: "data", "aria-label": "Table preview", "data-sort": sort || "", "data-desc": String(desc) },
        el("thead", {}, el("tr", {}, header)),
        el("tbody", {}, data.rows.map((row) => el("tr", {}, row.map(cell))))));
  };
  load();
}

// ---------- routing ----------

function render() {
  state.cleanups.splice(0).forEach((fn) => fn());
  const hash = location.hash || "#/jobs";
  if (!state.info) {
    viewSignIn();
    return;
  }
  const match = hash.match(/^#\/jobs\/(.+)$/);
  if (match) viewJob(decodeURIComponent(match[1]));
  else if (hash === "#/new") viewNewJob();
  else if (hash === "#/login") location.hash = "#/jobs";
  else viewJobs();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("here", a.getAttribute("href") === hash));
}

async function start() {
  window.addEventListener("hashchange", render);
  try {
    setSignedIn(await api("/info"));
  } catch (err) {
    if (err.status !== 401) state.signInMessage = err.message;
    setSignedIn(null);
    state.afterSignIn = location.hash && location.hash !== "#/login" ? location.hash : "#/jobs";
    if (location.hash !== "#/login") {
      location.hash = "#/login";
      return; // hashchange renders
    }
  }
  render();
}

start();
