// The operator view: loaded by dashboard.js only for admins (GET /api/me says is_admin), so a
// non-admin's page holds none of it. It reads /api/admin/overview and /api/admin/jobs once per
// (re)connection of ONE EventSource on /events/admin/jobs, then follows every job live: the
// jobs table, the counts and the throughput chart move with the stream. It never polls.
"use strict";

(() => {
  const STATUSES = ["pending", "running", "complete", "error", "cancelled"];
  const SERIES = [["started", "#2f6fed"], ["completed", "#1b8a4b"], ["failed", "#c0362c"]];
  const PAGE = 50;
  const MAX_TRACKED = 20000; // job id -> last status, to count transitions once

  // $, api and EVENTS are dashboard.js's: it loads this script, so they are there.
  const state = { stream: null, retry: null, delay: 1000, cursor: null, filters: {},
                  newest: null, soon: null };
  const statusOf = new Map();
  let counts = new Map(); // "type\tstatus" -> jobs
  let minutes = []; // [{minute: Date, started, completed, failed}], oldest first

  function el(tag, className = "", text = "") {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== "") node.textContent = text;
    return node;
  }

  function card(id, title, ...children) {
    const section = el("div", "card admin-card");
    section.id = id;
    section.append(el("h2", "", title), ...children);
    return section;
  }

  function table(id, headings) {
    const t = el("table", "admin-table");
    t.id = id;
    const head = el("tr");
    headings.forEach((h) => head.append(el("th", "", h)));
    t.append(el("thead"), el("tbody"));
    t.tHead.append(head);
    return t;
  }

  // Building the view -------------------------------------------------------------------

  function build() {
    const tabs = el("nav", "tabs");
    tabs.id = "tabs";
    for (const [view, label] of [["mine", "My jobs"], ["admin", "Operator"]]) {
      const button = el("button", "tab", label);
      button.type = "button";
      button.dataset.view = view;
      button.addEventListener("click", () => show(view));
      tabs.append(button);
    }
    $(".top .spacer").before(tabs);

    const root = el("section");
    root.id = "admin";
    root.hidden = true;
    const figures = el("div", "figures");
    for (const [id, label] of [["depth", "pending"], ["oldest", "oldest pending"],
                               ["running", "running"], ["alive", "workers alive"]]) {
      const box = el("div", "card figure");
      const value = el("div", "figure-value", "–");
      value.id = `admin-${id}`;
      box.append(value, el("div", "muted", label));
      figures.append(box);
    }
    const refresh = el("button", "", "Refresh");
    refresh.type = "button";
    refresh.id = "admin-refresh";
    refresh.addEventListener("click", () => reload());
    const canvas = el("canvas");
    canvas.id = "admin-chart";
    canvas.width = 800;
    canvas.height = 180;
    const legend = el("div", "legend muted");
    for (const [name, color] of SERIES) {
      const key = el("span", "key", name);
      key.dataset.color = color;
      legend.append(key);
    }
    const filters = el("form", "filters");
    filters.id = "admin-filters";
    const typeSelect = el("select");
    typeSelect.name = "type";
    typeSelect.append(new Option("any type", ""));
    const statusSelect = el("select");
    statusSelect.name = "status";
    statusSelect.append(new Option("any status", ""), ...STATUSES.map((s) => new Option(s, s)));
    const user = el("input");
    user.name = "user";
    user.placeholder = "user name or id";
    const since = el("input");
    since.name = "since";
    since.type = "datetime-local";
    since.title = "created since";
    const until = el("input");
    until.name = "until";
    until.type = "datetime-local";
    until.title = "created before";
    const apply = el("button", "primary", "Filter");
    apply.type = "submit";
    filters.append(typeSelect, statusSelect, user, since, until, apply);
    filters.addEventListener("submit", (event) => {
      event.preventDefault();
      readFilters();
      loadJobs(false);
    });
    const more = el("button", "", "Load more");
    more.type = "button";
    more.id = "admin-more";
    more.hidden = true;
    more.addEventListener("click", () => loadJobs(true));
    const notice = el("p", "notice");
    notice.id = "admin-notice";
    notice.setAttribute("role", "alert");

    root.append(
      el("div", "admin-head"),
      figures,
      card("admin-throughput", "Throughput, last hour (per minute)", canvas, legend),
      card("admin-counts-card", "Jobs by type and status", table("admin-counts", ["type", ...STATUSES])),
      card("admin-workers-card", "Workers", table("admin-workers",
        ["machine", "pid", "processes", "IO processes", "running", "last heartbeat", "alive"])),
      card("admin-stuck-card", "Stuck jobs", table("admin-stuck",
        ["job", "type", "worker", "silent for", ""])),
      card("admin-schedules-card", "Schedules", table("admin-schedules",
        ["name", "type", "cron", "next run", ""])),
      card("admin-jobs-card", "All jobs", filters, notice,
           table("admin-jobs", ["job", "type", "user", "status", "progress", "created", ""]), more),
    );
    $(".admin-head", root).append(el("h2", "section", "Operator view"), refresh);
    $("main").append(root);
  }

  function show(view) {
    $("#app").hidden = view !== "mine";
    $("#admin").hidden = view !== "admin";
    for (const tab of document.querySelectorAll("#tabs .tab")) {
      tab.setAttribute("aria-current", tab.dataset.view === view ? "page" : "false");
    }
    if (view === "admin") draw();
  }

  function readFilters() {
    const form = $("#admin-filters");
    const f = {};
    for (const name of ["type", "status", "user"]) {
      if (form.elements[name].value.trim()) f[name] = form.elements[name].value.trim();
    }
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      if (value) f[name] = new Date(value).toISOString();
    }
    state.filters = f;
  }

  // Reading -----------------------------------------------------------------------------

  async function reload(withJobs = true) {
    try {
      const overview = await api("GET", "/api/admin/overview");
      renderOverview(overview);
      if (withJobs) await loadJobs(false);
      document.body.dataset.admin = "live";
    } catch (err) {
      $("#admin-notice").textContent = `Could not load the operator view: ${err.message}`;
    }
  }

  // A page of the jobs the filters select; `extra`: a cursor or a since.
  function jobsPage(extra = {}) {
    const query = new URLSearchParams({ ...state.filters, limit: String(PAGE), ...extra });
    return api("GET", `/api/admin/jobs?${query}`);
  }

  async function loadJobs(more) {
    try {
      const data = await jobsPage(more && state.cursor ? { cursor: state.cursor } : {});
      const body = $("#admin-jobs").tBodies[0];
      if (!more) body.replaceChildren();
      data.jobs.forEach((job) => body.append(jobRow(job)));
      state.cursor = data.next_cursor;
      if (!more) state.newest = data.jobs.length ? data.jobs[0].created_at : null;
      $("#admin-more").hidden = !data.next_cursor;
      $("#admin-notice").textContent = "";
    } catch (err) {
      $("#admin-notice").textContent = err.message;
    }
  }

  function renderOverview(o) {
    counts = new Map(o.counts.map((c) => [`${c.type}\t${c.status}`, c.jobs]));
    const typeSelect = $("#admin-filters").elements.type;
    const known = new Set([...typeSelect.options].map((opt) => opt.value));
    for (const type of [...o.types, ...o.counts.map((c) => c.type)]) {
      if (!known.has(type)) {
        typeSelect.append(new Option(type, type));
        known.add(type);
      }
    }
    minutes = o.throughput.minutes.map((m) => ({ ...m, minute: new Date(m.minute) }));
    $("#admin-oldest").textContent = o.queue.oldest_pending_seconds == null ? "–"
      : duration(o.queue.oldest_pending_seconds);
    renderCounts();
    const workers = $("#admin-workers").tBodies[0];
    workers.replaceChildren(...o.workers.map((w) => row([
      w.machine, w.pid, w.processes, ioProcesses(w), w.running,
      new Date(w.heartbeat_at).toLocaleTimeString(),
      w.alive ? "yes" : "no"], w.alive ? "alive" : "dead")));
    $("#admin-alive").textContent = String(o.workers.filter((w) => w.alive).length);
    const stuck = $("#admin-stuck").tBodies[0];
    stuck.replaceChildren(...o.stuck.map((s) => {
      const tr = row([s.id, s.job_type, s.worker_id, duration(s.silent_seconds)]);
      tr.append(actionCell(s.id, "requeue"));
      return tr;
    }));
    if (!o.stuck.length) stuck.append(row(["none"], "empty"));
    const schedules = $("#admin-schedules").tBodies[0];
    schedules.replaceChildren(...o.schedules.map((s) => {
      const tr = row([s.name, s.type, `${s.cron} (${s.timezone})`,
                      s.next_run ? new Date(s.next_run).toLocaleString() : s.problem || "disabled"]);
      const cell = el("td");
      const button = el("button", "run-now", "Run now");
      button.type = "button";
      button.dataset.schedule = s.name;
      button.addEventListener("click", () => act(`/api/admin/schedules/${encodeURIComponent(s.name)}/run`, button));
      cell.append(button);
      tr.append(cell);
      return tr;
    }));
    if (!o.schedules.length) schedules.append(row(["none"], "empty"));
    draw();
  }

  function renderCounts() {
    const types = [...new Set([...counts.keys()].map((k) => k.split("\t")[0]))].sort();
    $("#admin-counts").tBodies[0].replaceChildren(...types.map((type) =>
      row([type, ...STATUSES.map((s) => counts.get(`${type}\t${s}`) || 0)])));
    let pending = 0;
    let running = 0;
    for (const [key, n] of counts) {
      if (key.endsWith("\tpending")) pending += n;
      if (key.endsWith("\trunning")) running += n;
    }
    $("#admin-depth").textContent = pending.toLocaleString();
    if (!pending) $("#admin-oldest").textContent = "–";
    $("#admin-running").textContent = running.toLocaleString();
  }

  // "2: 48 running + 10 waiting, 50 running": what each IO process of a worker holds.
  function ioProcesses(w) {
    if (!w.io_processes) return "0";
    const each = (w.io_jobs || []).map((p) => `${p.running} running`
      + (p.waiting ? ` + ${p.waiting} waiting` : ""));
    return `${w.io_processes}: ${each.join(", ") || "starting"}`;
  }

  function row(cells, className = "") {
    const tr = el("tr", className);
    cells.forEach((c) => tr.append(el("td", "", c == null ? "–" : String(c))));
    return tr;
  }

  function jobRow(job) {
    const tr = el("tr");
    tr.dataset.jobId = job.id;
    const id = el("td");
    id.append(el("code", "", job.id.slice(0, 8)));
    id.title = job.id;
    tr.append(id, el("td", "", job.type), el("td", "", job.user || (job.user_id ?? "–")),
              el("td", "status"), el("td", "progress"),
              el("td", "", job.created_at ? new Date(job.created_at).toLocaleString()
                : job.unreadable ? `unreadable: ${job.unreadable.join(", ")}` : "just now"));
    const actions = el("td", "actions");
    actions.append(actionCell(job.id, "cancel").firstChild, actionCell(job.id, "requeue").firstChild);
    tr.append(actions);
    updateRow(tr, job);
    statusOf.set(job.id, job.status);
    return tr;
  }

  function updateRow(tr, job) {
    const badge = el("span", "badge", job.status);
    badge.dataset.status = job.status;
    $(".status", tr).replaceChildren(badge);
    const p = job.progress || {};
    $(".progress", tr).textContent = p.total ? `${p.current ?? 0} / ${p.total}` : "";
    tr.dataset.status = job.status;
    $("button.cancel", tr).hidden = !["pending", "running"].includes(job.status);
    $("button.requeue", tr).hidden = job.status === "pending";
  }

  function actionCell(id, action) {
    const cell = el("td");
    const button = el("button", action, action === "cancel" ? "Cancel" : "Requeue");
    button.type = "button";
    button.addEventListener("click", () => act(`/api/admin/jobs/${id}/${action}`, button));
    cell.append(button);
    return cell;
  }

  async function act(path, button) {
    button.disabled = true;
    try {
      await api("POST", path);
      $("#admin-notice").textContent = "";
    } catch (err) {
      $("#admin-notice").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  // Live --------------------------------------------------------------------------------

  function connect() {
    disconnect();
    const es = new EventSource(`${EVENTS}/events/admin/jobs`, { withCredentials: true });
    state.stream = es;
    es.onopen = () => {
      state.delay = 1000;
      reload(); // whatever changed while the stream was down is in the table
    };
    es.onmessage = (event) => onChange(JSON.parse(event.data));
    es.onerror = () => {
      if (es !== state.stream || es.readyState !== EventSource.CLOSED) return;
      document.body.dataset.admin = "reconnecting";
      state.retry = setTimeout(connect, state.delay);
      state.delay = Math.min(state.delay * 2, 30000);
    };
  }

  function disconnect() {
    clearTimeout(state.retry);
    if (state.stream) state.stream.close();
    state.stream = null;
  }

  function onChange(job) {
    const before = statusOf.get(job.id);
    if (before !== job.status) {
      if (before) bump(job.type, before, -1);
      if (before || job.status === "pending") bump(job.type, job.status, 1);
      const kind = { running: "started", complete: "completed", error: "failed" }[job.status];
      if (kind) countNow(kind);
      statusOf.set(job.id, job.status);
      if (statusOf.size > MAX_TRACKED) statusOf.delete(statusOf.keys().next().value);
      renderCounts();
      draw();
    }
    const tr = document.querySelector(`#admin-jobs tr[data-job-id="${job.id}"]`);
    if (tr) updateRow(tr, job);
    else if (!before && job.status === "pending" && matches(job)) {
      $("#admin-jobs").tBodies[0].prepend(jobRow(job));
    } else if (!before) {
      reloadSoon();
    }
  }

  // A job first seen past pending: a busy stream sends each job's latest state only, so its
  // earlier ones (its insert among them) may never have come. The table says what is new and
  // what the counts are: re-read them, at most once a second, keeping the pages open.
  function reloadSoon() {
    if (state.soon) return;
    state.soon = setTimeout(async () => {
      state.soon = null;
      await reload(false);
      await loadNewer();
    }, 1000);
  }

  // The jobs made since the newest row listed, on top; more than a page of them: page one again.
  async function loadNewer() {
    if (!state.newest) return loadJobs(false);
    try {
      const data = await jobsPage({ since: state.newest });
      if (data.next_cursor) return loadJobs(false);
      const body = $("#admin-jobs").tBodies[0];
      for (const job of [...data.jobs].reverse()) {
        const tr = document.querySelector(`#admin-jobs tr[data-job-id="${job.id}"]`);
        if (tr) updateRow(tr, job);
        else body.prepend(jobRow(job));
      }
      if (data.jobs.length) state.newest = data.jobs[0].created_at;
    } catch (err) {
      $("#admin-notice").textContent = err.message;
    }
  }

  function matches(job) {
    const f = state.filters;
    return (!f.type || f.type === job.type) && (!f.status || f.status === job.status)
      && !f.user && !f.until;
  }

  function bump(type, status, n) {
    const key = `${type}\t${status}`;
    counts.set(key, Math.max(0, (counts.get(key) || 0) + n));
  }

  function countNow(kind) {
    const now = new Date();
    now.setSeconds(0, 0);
    let last = minutes[minutes.length - 1];
    while (last && last.minute < now) {
      last = { minute: new Date(last.minute.getTime() + 60000), started: 0, completed: 0, failed: 0 };
      minutes.push(last);
      if (minutes.length > 60) minutes.shift();
    }
    if (last) last[kind] += 1;
  }

  // The chart ---------------------------------------------------------------------------

  function draw() {
    const canvas = $("#admin-chart");
    if (!canvas || !minutes.length) return;
    const width = canvas.clientWidth || canvas.width;
    canvas.width = width;
    const ctx = canvas.getContext("2d");
    const h = canvas.height;
    const pad = { left: 36, right: 8, top: 10, bottom: 20 };
    ctx.clearRect(0, 0, width, h);
    const top = Math.max(1, ...minutes.flatMap((m) => SERIES.map(([k]) => m[k])));
    const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / Math.max(1, minutes.length - 1);
    const y = (v) => h - pad.bottom - (v * (h - pad.top - pad.bottom)) / top;
    ctx.strokeStyle = "#e4e7ec";
    ctx.fillStyle = "#667085";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (const v of [0, Math.round(top / 2), top]) {
      ctx.beginPath();
      ctx.moveTo(pad.left, y(v));
      ctx.lineTo(width - pad.right, y(v));
      ctx.stroke();
      ctx.fillText(String(v), 4, y(v) + 4);
    }
    ctx.fillText("−60 min", pad.left, h - 4);
    ctx.fillText("now", width - pad.right - 22, h - 4);
    let total = 0;
    for (const [key, color] of SERIES) {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      minutes.forEach((m, i) => {
        total += m[key];
        if (i === 0) ctx.moveTo(x(i), y(m[key]));
        else ctx.lineTo(x(i), y(m[key]));
      });
      ctx.stroke();
    }
    canvas.dataset.total = String(total);
    canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  }

  function duration(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  window.bgjobsAdmin = {
    start() {
      if (!$("#admin")) build();
      connect();
    },
    stop() {
      disconnect();
      for (const node of [$("#admin"), $("#tabs")]) if (node) node.remove();
      statusOf.clear();
      delete document.body.dataset.admin;
    },
  };
  window.bgjobsAdmin.start();
})();
