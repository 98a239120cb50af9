// The bgjobs dashboard. Live updates come from ONE EventSource on the events service; the page
// never polls. It reads the job list once per (re)connection of the stream (the stream carries
// changes only) and otherwise makes requests only when the user clicks.
"use strict";

const EVENTS = document.querySelector('meta[name="bgjobs-events"]').content;
const MAX_JOBS = 50;
const FINISHED = new Set(["complete", "error", "cancelled"]);
const CONN_TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };

const jobs = new Map(); // id -> newest job seen
const cards = new Map(); // id -> <li>
// Versions only grow, unless the database went back (a restore, a failover): then the stream
// sends an older version on purpose. So a state from the stream that is not newer than one the
// stream itself sent is such a reset and is shown; a state read from the list is shown if it is
// newer, or if what we hold was learned before the stream last (re)opened.
const streamed = new Map(); // id -> the version the stream last sent
const learnedIn = new Map(); // id -> the stream epoch in which the shown state arrived
let epoch = 0; // +1 each time the stream opens
let stream = null;
let retryTimer = null;
let retryDelay = 1000;
let listedWhileDown = false; // the list was read once because the stream would not open

const $ = (selector, root = document) => root.querySelector(selector);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.jobId = body && body.error && body.error.job_id;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// Session ---------------------------------------------------------------------------------

async function boot() {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  for (const button of document.querySelectorAll("[data-start]")) {
    const params = JSON.parse(button.dataset.params || "{}");
    button.addEventListener("click", () => startJob(button.dataset.start, button, params));
  }
  $("#start-workflow").addEventListener("click", (event) => startWorkflow(event.target));
  $("#close-workflow").addEventListener("click", () => showWorkflow(null));
  try {
    const me = await api("GET", "/api/me");
    signedIn(me.user);
  } catch (err) {
    signedOut(err.status === 401 ? "" : err.message);
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#token");
  $("#sign-in-error").textContent = "";
  try {
    const data = await api("POST", "/api/session", { token: input.value.trim() });
    input.value = "";
    signedIn(data.user);
  } catch (err) {
    $("#sign-in-error").textContent =
      err.status === 401 ? "That token is not valid (or was revoked)." : err.message;
  }
}

async function signOut() {
  try {
    await api("DELETE", "/api/session");
  } finally {
    signedOut("");
  }
}

function signedIn(user) {
  $("#who").textContent = user.name;
  if (user.is_admin) loadAdmin();
  $("#sign-out").hidden = false;
  $("#sign-in").hidden = true;
  $("#app").hidden = false;
  document.body.dataset.state = "connecting";
  listedWhileDown = false;
  connect();
}

function signedOut(message) {
  disconnect();
  showWorkflow(null);
  if (window.bgjobsAdmin) window.bgjobsAdmin.stop();
  jobs.clear();
  cards.clear();
  streamed.clear();
  learnedIn.clear();
  $("#jobs").replaceChildren();
  $("#who").textContent = "";
  $("#sign-out").hidden = true;
  $("#app").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
  setConn("");
  document.body.dataset.state = "signed-out";
}

// Admins also get the operator view (admin.js), which nobody else's page ever loads.
function loadAdmin() {
  if (window.bgjobsAdmin) {
    window.bgjobsAdmin.start();
    return;
  }
  const script = document.createElement("script");
  script.src = document.querySelector('meta[name="bgjobs-admin"]').content;
  document.head.append(script);
}

// The stream ------------------------------------------------------------------------------

function connect() {
  disconnect();
  setConn(jobs.size ? "reconnecting" : "connecting");
  const es = new EventSource(`${EVENTS}/events/jobs`, { withCredentials: true });
  stream = es;
  es.onopen = () => {
    epoch += 1;
    retryDelay = 1000;
    setConn("live");
    catchUp();
  };
  es.onmessage = (event) => upsert(JSON.parse(event.data), "stream");
  es.onerror = () => {
    if (es !== stream) return;
    setConn("reconnecting");
    document.body.dataset.state = "reconnecting";
    // Signed in but the events service is down: show the jobs anyway, once.
    if (!jobs.size && !listedWhileDown) {
      listedWhileDown = true;
      catchUp(false);
    }
    // CONNECTING: the browser retries by itself. CLOSED: it gave up (an HTTP error such as
    // 401 or 503), so find out whether we are still signed in, then retry with backoff.
    if (es.readyState === EventSource.CLOSED) recover();
  };
}

function disconnect() {
  clearTimeout(retryTimer);
  if (stream) stream.close();
  stream = null;
}

async function recover() {
  try {
    await api("GET", "/api/me");
  } catch (err) {
    if (err.status === 401) {
      signedOut("Your session has ended: sign in again.");
      return;
    }
  }
  retryTimer = setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 30000);
}

async function catchUp(live = true) {
  // Once per (re)connection: whatever changed while the stream was down is in the list.
  try {
    const data = await api("GET", `/api/jobs?limit=${MAX_JOBS}`);
    data.jobs.forEach((job) => upsert(job, "list"));
    $("#empty").hidden = jobs.size > 0;
    if (live) document.body.dataset.state = "live";
  } catch (err) {
    if (err.status === 401) signedOut("Your session has ended: sign in again.");
    else notice(`Could not load your jobs: ${err.message}`);
  }
}

function setConn(state) {
  const pill = $("#conn");
  pill.dataset.conn = state || "idle";
  pill.textContent = CONN_TEXT[state] || "";
}

// Actions ---------------------------------------------------------------------------------

async function startJob(type, button, params = {}) {
  button.disabled = true;
  notice("");
  try {
    upsert(await api("POST", "/api/jobs", { type, params }));
  } catch (err) {
    if (err.status === 401) signedOut("Your session has ended: sign in again.");
    else if (err.status === 409) {
      notice(`A ${type} job is already pending or running: one at a time.`);
      flash(err.jobId);
    } else notice(err.message);
  } finally {
    button.disabled = false;
  }
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    upsert(await api("POST", `/api/jobs/${id}/cancel`));
  } catch (err) {
    notice(err.status === 409 ? "That job had already finished." : err.message);
    button.disabled = false;
  }
}

function notice(text) {
  $("#notice").textContent = text;
}

function flash(id) {
  const card = id && cards.get(id);
  if (!card) return;
  card.scrollIntoView({ block: "nearest", behavior: "smooth" });
  card.animate([{ outline: "2px solid #f79009" }, { outline: "2px solid transparent" }], 1500);
}

// Rendering -------------------------------------------------------------------------------

function upsert(job, source = "api") {
  const known = jobs.get(job.id);
  const wentBack = source === "stream" && job.version <= (streamed.get(job.id) ?? 0);
  const heldIsOlder = source === "list" && (learnedIn.get(job.id) ?? 0) < epoch;
  if (source === "stream") streamed.set(job.id, job.version);
  if (known && known.version >= job.version && !wentBack && !heldIsOlder) return;
  jobs.set(job.id, job);
  learnedIn.set(job.id, epoch);
  render(job, known);
  $("#empty").hidden = true;
}

function render(job, previous) {
  let card = cards.get(job.id);
  if (!card) {
    card = $("#job-template").content.firstElementChild.cloneNode(true);
    card.dataset.jobId = job.id;
    const cancel = $(".cancel", card);
    cancel.addEventListener("click", () => cancelJob(job.id, cancel));
    place(card, job);
    cards.set(job.id, card);
  }
  card.dataset.status = job.status;
  $(".type", card).textContent = job.type;
  const badge = $(".status", card);
  badge.textContent = job.status;
  badge.dataset.status = job.status;
  $(".jid", card).textContent = job.id;
  $(".when", card).textContent = when(job);
  const link = $(".show-workflow", card);
  link.hidden = !job.workflow_id;
  link.onclick = () => showWorkflow(job.workflow_id);

  const p = job.progress || {};
  const total = Number(p.total);
  const current = Number(p.current) || 0;
  let pct = total > 0 ? Math.min(100, Math.max(0, (current / total) * 100)) : 0;
  if (job.status === "complete") pct = 100;
  $(".fill", card).style.width = `${pct}%`;
  $(".bar", card).setAttribute("aria-valuenow", String(Math.round(pct)));
  $(".count", card).textContent = total > 0 ? `${current} / ${total}` : "";
  $(".stage", card).textContent = stageText(job, p);

  const cancel = $(".cancel", card);
  cancel.hidden = FINISHED.has(job.status);
  if (!cancel.hidden && (!previous || FINISHED.has(previous.status))) cancel.disabled = false;

  const result = $(".result", card);
  result.hidden = !FINISHED.has(job.status);
  if (FINISHED.has(job.status)) result.replaceChildren(resultView(job));
}

function place(card, job) {
  const list = $("#jobs");
  const before = [...list.children].find((other) => {
    const known = jobs.get(other.dataset.jobId);
    return known && known.created_at < job.created_at;
  });
  list.insertBefore(card, before || null);
  while (list.children.length > MAX_JOBS) {
    const last = list.lastElementChild;
    cards.delete(last.dataset.jobId);
    jobs.delete(last.dataset.jobId);
    streamed.delete(last.dataset.jobId);
    learnedIn.delete(last.dataset.jobId);
    last.remove();
  }
}

function stageText(job, p) {
  if (job.status === "pending" && job.waiting_for > 0) {
    return `waiting for ${job.waiting_for} job${job.waiting_for > 1 ? "s" : ""} it depends on`;
  }
  if (job.status === "pending") {
    // A job due later (run_after, or a retry's back-off) says when, not "waiting for a worker".
    const due = job.run_after ? new Date(job.run_after) : Date.now();
    const later = due - Date.now() > 1000 ? due.toLocaleString() : "";
    if (job.attempts) return later ? `waiting to retry at ${later}` : "waiting to retry";
    return later ? `scheduled for ${later}` : "waiting for a worker";
  }
  const parts = p.stage ? [p.stage] : [];
  for (const [key, value] of Object.entries(p)) {
    if (["current", "total", "stage"].includes(key)) continue;
    if (value === null || typeof value === "object") continue;
    parts.push(key === "ticker" ? String(value) : `${label(key)} ${fmt(value)}`);
  }
  return parts.join(" · ");
}

function when(job) {
  // A field the server could not read (a DBA's value, see docs/dba.md) is null: say so.
  let text = job.created_at ? new Date(job.created_at).toLocaleString() : "time unknown";
  if (job.unreadable) text += ` · unreadable: ${job.unreadable.join(", ")}`;
  if (job.attempts > 1) text += ` · attempt ${job.attempts} of ${job.max_attempts}`;
  if (!job.started_at || !job.finished_at) return text;
  const seconds = (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
  return `${text} · took ${seconds.toFixed(1)} s`;
}

function resultView(job) {
  const r = job.result;
  if (job.status === "error") {
    const p = el("p", "error");
    p.textContent = r && r.message ? `${r.error || "Error"}: ${r.message}` : "Failed.";
    return p;
  }
  if (job.status === "cancelled") return el("p", "muted", "Cancelled.");
  return value(r, 0);
}

function value(v, depth, key = "") {
  if (v === null || v === undefined) return document.createTextNode("—");
  if (Array.isArray(v)) {
    if (v.length && v.every((x) => x && typeof x === "object" && !Array.isArray(x))) {
      return table(v);
    }
    if (v.length > 8 && v.every((x) => typeof x === "number")) {
      const ends = `${fmt(v[0], key)} → ${fmt(v[v.length - 1], key)}`;
      return document.createTextNode(`${v.length} values: ${ends}`);
    }
    return document.createTextNode(v.map((x) => fmt(x, key)).join(", "));
  }
  if (typeof v === "object") {
    if (depth > 0) return document.createTextNode(inline(v));
    const dl = el("dl", "kv");
    // Plain values first, then nested objects, then lists and tables.
    const entries = Object.entries(v).sort(([, a], [, b]) => rank(a) - rank(b));
    for (const [k, inner] of entries) {
      dl.append(el("dt", "", label(k)));
      const dd = el("dd");
      dd.append(value(inner, depth + 1, k));
      dl.append(dd);
    }
    return dl;
  }
  return document.createTextNode(fmt(v, key));
}

function rank(v) {
  if (v === null || typeof v !== "object") return 0;
  return Array.isArray(v) ? 2 : 1;
}

function inline(obj) {
  return Object.entries(obj).map(([k, v]) => `${label(k)} ${fmt(v, k)}`).join(" · ");
}

function table(rows) {
  const keys = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const t = el("table", "rows");
  const head = el("tr");
  keys.forEach((key) => head.append(el("th", "", label(key))));
  t.append(head);
  for (const row of rows.slice(0, 10)) {
    const tr = el("tr");
    keys.forEach((key) => tr.append(el("td", "", fmt(row[key], key))));
    t.append(tr);
  }
  return t;
}

// Returns, shares and drawdowns are fractions: show them as percentages.
const PERCENT = /(return|share|drawdown)$/;

function fmt(v, key = "") {
  if (typeof v === "number") {
    if (PERCENT.test(key) && Math.abs(v) <= 100) return `${(v * 100).toFixed(1)}%`;
    return Number.isInteger(v) ? v.toLocaleString() : v.toLocaleString(undefined, {
      maximumFractionDigits: Math.abs(v) < 1 ? 4 : 2,
    });
  }
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? (Array.isArray(v) ? v.map((x) => fmt(x)).join(", ")
    : inline(v)) : String(v);
}

function label(key) {
  return key.replace(/_/g, " ");
}

function el(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}


// Workflows --------------------------------------------------------------------------------
// A workflow is drawn as a graph: one column per level (a job stands right of every job it
// depends on), filled in live by its own EventSource on /events/workflows/<id>: every job's
// state when it opens, then each change and a summary event; it ends when the workflow does.

const workflow = { id: null, nodes: new Map(), summary: null, stream: null };
// The steps of "Run three as a workflow", each after the one before, finished in seconds.
const WORKFLOW_STEPS = [
  ["demo", { seconds: 2, steps: 10 }],
  ["demo", { seconds: 3, steps: 10 }],
  ["demo", { seconds: 2, steps: 10 }],
];

async function startWorkflow(button) {
  button.disabled = true;
  notice("");
  const id = crypto.randomUUID();
  try {
    let previous = null;
    for (const [type, params] of WORKFLOW_STEPS) {
      const body = { type, params, workflow_id: id };
      if (previous) body.after = [previous.id];
      previous = await api("POST", "/api/jobs", body);
      upsert(previous);
    }
    showWorkflow(id);
  } catch (err) {
    if (err.status === 401) signedOut("Your session has ended: sign in again.");
    else notice(err.status === 409 ? `${err.message} (one at a time)` : err.message);
  } finally {
    button.disabled = false;
  }
}

function showWorkflow(id) {
  if (workflow.stream) workflow.stream.close();
  Object.assign(workflow, { id, nodes: new Map(), summary: null, stream: null });
  const section = $("#workflow");
  section.hidden = !id;
  $(".wf-graph").replaceChildren($(".wf-edges"));
  if (!id) return;
  section.dataset.workflowId = id;
  section.dataset.stream = "connecting";
  const es = new EventSource(`${EVENTS}/events/workflows/${id}`, { withCredentials: true });
  workflow.stream = es;
  let placed = false;
  es.onopen = () => { section.dataset.stream = "live"; };
  es.onmessage = (event) => {
    workflowNode(JSON.parse(event.data));
    if (!placed) {
      placed = true;
      section.scrollIntoView({ block: "nearest" });
    }
  };
  es.addEventListener("summary", (event) => {
    workflow.summary = JSON.parse(event.data);
    drawWorkflow();
    if (workflow.summary.finished) {
      es.close(); // the server ends the stream too; closed, the browser does not reconnect
      section.dataset.stream = "ended";
    }
  });
  es.onerror = () => {
    if (workflow.stream !== es) return;
    // CONNECTING: the browser retries by itself (Last-Event-ID: it gets what it missed).
    // CLOSED: an HTTP error (404: not this user's workflow; 401: signed out).
    section.dataset.stream = es.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
    if (es.readyState === EventSource.CLOSED) notice("The workflow's live view stopped.");
  };
}

function workflowNode(job) {
  const held = workflow.nodes.get(job.id);
  if (held && held.version > job.version) return;
  workflow.nodes.set(job.id, job);
  drawWorkflow();
}

function drawWorkflow() {
  const nodes = [...workflow.nodes.values()];
  const level = new Map();
  const levelOf = (job, seen = new Set()) => {
    if (level.has(job.id)) return level.get(job.id);
    seen.add(job.id);
    const parents = (job.depends_on || []).map((p) => workflow.nodes.get(p))
      .filter((p) => p && !seen.has(p.id));
    const n = parents.length ? 1 + Math.max(...parents.map((p) => levelOf(p, seen))) : 0;
    level.set(job.id, n);
    return n;
  };
  const columns = [];
  for (const job of nodes) (columns[levelOf(job)] ||= []).push(job);
  const graph = $(".wf-graph");
  const edges = $(".wf-edges");
  graph.replaceChildren(edges, ...columns.filter(Boolean).map((column) => {
    const col = el("div", "wf-col");
    col.replaceChildren(...column.map(workflowBox));
    return col;
  }));
  // The counts are the server's (its summary event covers every job, drawn or not).
  const s = workflow.summary;
  if (s) {
    const failed = s.failed && workflow.nodes.get(s.failed);
    $("#workflow").dataset.status = s.failed ? "failed" : s.finished ? "complete" : "running";
    $(".wf-summary").textContent = `${s.done} of ${s.total} done`
      + (failed ? ` · ${failed.type} ${failed.status}` : s.failed ? " · a job failed" : "");
  }
  drawEdges(graph, edges, nodes);
}

function workflowBox(job) {
  const box = el("div", "wf-node");
  box.dataset.jobId = job.id;
  box.dataset.status = job.status;
  const p = job.progress || {};
  const total = Number(p.total);
  let pct = total > 0 ? Math.min(100, (100 * (Number(p.current) || 0)) / total) : 0;
  if (job.status === "complete") pct = 100;
  const bar = el("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  const fill = el("div", "fill");
  fill.style.width = `${pct}%`;
  bar.append(fill);
  const waiting = job.status === "pending" && job.waiting_for > 0;
  box.append(el("span", "type", job.type),
             el("span", "status badge", waiting ? "waiting" : job.status), bar);
  box.querySelector(".badge").dataset.status = job.status;
  return box;
}

function drawEdges(graph, svg, nodes) {
  const origin = graph.getBoundingClientRect();
  svg.setAttribute("width", String(graph.scrollWidth));
  svg.setAttribute("height", String(graph.scrollHeight));
  const box = (id) => graph.querySelector(`.wf-node[data-job-id="${id}"]`);
  const lines = [];
  for (const job of nodes) {
    const to = box(job.id);
    for (const parent of job.depends_on || []) {
      const from = box(parent);
      if (!from || !to) continue;
      const a = from.getBoundingClientRect(), b = to.getBoundingClientRect();
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("x1", String(a.right - origin.left));
      line.setAttribute("y1", String(a.top + a.height / 2 - origin.top));
      line.setAttribute("x2", String(b.left - origin.left));
      line.setAttribute("y2", String(b.top + b.height / 2 - origin.top));
      lines.push(line);
    }
  }
  svg.replaceChildren(...lines);
}

boot();
