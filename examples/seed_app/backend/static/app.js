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

function follow(url) {
  source = new EventSource(url);  // the token in the URL is the credential
  source.onopen = () => {
    setConn("live", "Live");
    loadJobs();  // the stream has no snapshot: read the list once per (re)connection
  };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = async () => {
    setConn("reconnecting", "Reconnecting…");
    if (source.readyState !== EventSource.CLOSED) return;  // the browser retries by itself
    // Refused (its token expired): ask the app for a new URL, after a pause.
    await new Promise((wake) => setTimeout(wake, 1000));
    const answer = await fetch("/jobs/stream-url");
    if (answer.status === 401) return location.assign("/login");
    follow(answer.ok ? (await answer.json()).url : url);
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

follow(document.body.dataset.stream);
