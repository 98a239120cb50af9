// Live progress for every job of the signed-in user: one EventSource on the URL the page was
// rendered with (bgjobs's stream_url), renewed from /jobs/stream-url when its token expires.
const cards = Object.fromEntries(
  [...document.querySelectorAll(".job")].map((card) => [card.dataset.feature, card]));
const versions = new Map();  // job id -> the newest version shown
const conn = document.getElementById("conn");
let source = null;

function setConn(state, text) {
  conn.dataset.conn = state;
  conn.textContent = text;
}

function render(job) {
  const card = cards[job.type];
  if (!card || (versions.get(job.id) ?? -1) > job.version) return;
  const shown = card.dataset.jobId;
  if (shown && shown !== job.id && card.dataset.createdAt > job.created_at) return;  // older
  versions.set(job.id, job.version);
  Object.assign(card.dataset, { jobId: job.id, status: job.status, createdAt: job.created_at });
  const { current = 0, total = 0, stage = "" } = job.progress || {};
  const pct = job.status === "complete" ? 100 : total ? Math.floor((100 * current) / total) : 0;
  const bar = card.querySelector("progress");
  bar.value = pct;
  bar.setAttribute("aria-valuenow", String(pct));
  card.querySelector(".status").textContent =
    `${job.status}${stage ? ` · ${stage}` : ""}${total ? ` ${current}/${total}` : ""}`;
  const active = job.status === "pending" || job.status === "running";
  card.querySelector(".cancel").disabled = !active;
  const result = card.querySelector(".result");
  result.hidden = job.result == null;
  result.textContent = job.result == null ? "" : JSON.stringify(job.result, null, 2);
}

async function loadJobs() {
  const answer = await fetch("/jobs?limit=50");
  if (answer.ok) (await answer.json()).jobs.reverse().forEach(render);
}

// Renewing cannot help when fresh URLs are refused too (the events service has another
// BGJOBS_SECRET_KEY than the app, say; its log says why): longer pauses, then stop.
const RENEW_FIRST_MS = 1000, RENEW_MAX_MS = 30000, RENEW_TRIES = 5;

function follow(url, failures = 0) {
  source = new EventSource(url);  // the token in the URL is the credential
  source.onopen = () => {
    failures = 0;  // this URL works: renew quickly next time
    setConn("live", "Live");
    loadJobs();  // the stream has no snapshot: read the list once per (re)connection
  };
  source.onmessage = (event) => {
    const job = JSON.parse(event.data);
    render(job);
    pipelineStep(job);
  };
  source.onerror = async () => {
    setConn("reconnecting", "Reconnecting…");
    if (source.readyState !== EventSource.CLOSED) return;  // the browser retries by itself
    if (failures >= RENEW_TRIES) {
      setConn("failed", "Live progress stopped: the events service refuses this page's "
              + "stream URLs (reload to try again)");
      return;
    }
    // Refused (its token expired): ask the app for a new URL, after a pause (1 s, 2 s, 4 s…).
    await new Promise((wake) => setTimeout(wake, Math.min(RENEW_FIRST_MS * 2 ** failures,
                                                          RENEW_MAX_MS)));
    let next = url;  // the app did not answer: the same URL again
    try {
      const answer = await fetch("/jobs/stream-url");
      if (answer.status === 401) return location.assign("/login");
      if (answer.ok) next = (await answer.json()).url;
    } catch {}
    follow(next, failures + 1);
  };
}

for (const [feature, card] of Object.entries(cards)) {
  card.querySelector(".start").addEventListener("click", async () => {
    const answer = await fetch(`/api/${feature}/run`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    const body = await answer.json();
    if (answer.status === 409) card.querySelector(".status").textContent = body.error;
    // Until its first event, events of older jobs of this card are not shown ("~" sorts last).
    if (body.job_id) Object.assign(card.dataset, { jobId: body.job_id, createdAt: "~" });
  });
  card.querySelector(".cancel").addEventListener("click", () => {
    fetch(`/api/${feature}/cancel/${card.dataset.jobId}`, { method: "POST" });
  });
}

// The pipeline: one bgjobs workflow of three jobs, each after the one before. Its bar is the
// three jobs' progress combined, from the same stream as the cards.
const pipeline = document.getElementById("pipeline");
let steps = new Map();  // job id -> {type, status, pct, version}

function stepPct(job) {
  const { current = 0, total = 0 } = job.progress || {};
  if (job.status === "complete") return 100;
  return job.status === "running" && total ? Math.floor((100 * current) / total) : 0;
}

function pipelineStep(job) {
  const step = steps.get(job.id);
  if (!step || step.version > job.version) return;
  Object.assign(step, { status: job.status, pct: stepPct(job), version: job.version,
                        waiting: job.waiting_for || 0 });
  drawPipeline();
}

function drawPipeline() {
  const all = [...steps.values()];
  const pct = Math.floor(all.reduce((sum, s) => sum + s.pct, 0) / all.length);
  const bar = pipeline.querySelector("progress");
  bar.value = pct;
  bar.setAttribute("aria-valuenow", String(pct));
  const done = all.filter((s) => s.status === "complete").length;
  const failed = all.find((s) => s.status === "error" || s.status === "cancelled");
  pipeline.dataset.status = failed ? failed.status : done === all.length ? "complete"
    : all.some((s) => s.status === "running") ? "running" : "pending";
  pipeline.querySelector(".status").textContent =
    `${done} of ${all.length} steps done${failed ? ` · ${failed.type} ${failed.status}` : ""}`;
  pipeline.querySelector(".steps").replaceChildren(...all.map((s) => {
    const item = document.createElement("li");
    item.dataset.status = s.status;
    item.textContent = `${s.type}: ${s.status === "pending" && s.waiting ? "waiting" : s.status}`
      + (s.status === "running" ? ` ${s.pct}%` : "");
    return item;
  }));
}

async function loadPipeline(id) {
  const answer = await fetch(`/api/pipeline/${id}`);
  if (!answer.ok) return;
  for (const job of (await answer.json()).jobs) pipelineStep(job);
}

pipeline.querySelector(".start").addEventListener("click", async () => {
  const answer = await fetch("/api/pipeline/run", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  const body = await answer.json();
  if (!answer.ok) {
    pipeline.querySelector(".status").textContent = body.error;
    return;
  }
  steps = new Map(body.jobs.map((j) => [j.id, { type: j.type, status: "pending", pct: 0,
                                                   version: 0, waiting: 1 }]));
  pipeline.dataset.workflowId = body.workflow_id;
  drawPipeline();
  loadPipeline(body.workflow_id);  // events that came before we knew the ids
});

follow(document.body.dataset.stream);
