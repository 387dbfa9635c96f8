// The dashboard: a live stream (api/events) for the fleet, events and plots; the coordinator's
// record (api/tasks, api/stats, api/schedules) polled every 2 s; actions through the HTTP API.
"use strict";
const STATES = ["queued", "dispatched", "started", "backlog", "retrying", "succeeded", "dead", "cancelled",
                "expired", "scheduled"];
const LIVE = new Set(["queued", "dispatched", "started", "backlog", "retrying", "scheduled"]);
const RETRYABLE = new Set(["dead", "cancelled", "expired"]);
const $ = id => document.getElementById(id);
let live = null, selected = null, backlogs = {};

function esc(v) { return String(v == null ? "" : v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function age(ts) { if (!ts) return "-"; const s = Math.max(0, Date.now() / 1000 - ts); return s < 120 ? s.toFixed(1) + "s ago" : (s / 60).toFixed(0) + "m ago"; }
function setPill(el, text, cls) { el.textContent = text; el.className = "pill " + (cls || ""); }

async function api(path, options) {
  const response = await fetch(path, Object.assign({headers: {"content-type": "application/json"}}, options || {}));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// -- the live stream -----------------------------------------------------------------------
function connect() {
  const source = new EventSource("api/events");
  source.onmessage = m => { live = JSON.parse(m.data); renderLive(); };
  source.onerror = () => setPill($("link"), "reconnecting", "bad");
}

function renderLive() {
  setPill($("link"), live.connected ? "broker connected" : "broker unreachable", live.connected ? "ok" : "bad");
  const online = live.workers.filter(w => w.state === "online");
  $("n-workers").textContent = online.length;
  $("n-free").textContent = online.reduce((n, w) => n + (w.free || 0), 0);
  const recent = live.series.slice(-10);
  $("n-rate").textContent = (recent.reduce((n, p) => n + p.succeeded + p.failed, 0) / 10).toFixed(1);
  $("workers").innerHTML = live.workers.map(w => `<tr data-worker="${esc(w.worker)}"><td class="id">${esc(w.worker)}</td>
    <td class="state-${esc(w.state)}">${esc(w.state)}</td><td>${esc((w.queues || []).join(", "))}</td>
    <td>${esc(w.concurrency)}</td><td>${esc(w.free)}</td>
    <td>${(w.tasks || []).map(t => esc(t.id) + (t.attempt > 1 ? " #" + t.attempt : "")).join("<br>")}</td>
    <td>${age(w.ts)}</td></tr>`).join("");
  renderQueues();
  $("events").innerHTML = live.events.map(e => `<li><span class="state-${esc(e.state)}">${esc(e.state)}</span>
    ${esc(e.id)} #${esc(e.attempt)} ${esc(e.task)} ${e.worker ? "on " + esc(e.worker) : ""} ${e.reason ? "(" + esc(e.reason) + ")" : ""}</li>`).join("");
  const points = live.series;
  lineChart($("plot-throughput"), points, [{key: "succeeded", color: "#1f8a4c", label: "succeeded"},
                                           {key: "failed", color: "#c0392b", label: "failed"}]);
  lineChart($("plot-latency"), points, [{key: "latency_mean", color: "#2f6fd6", label: "mean"},
                                        {key: "latency_max", color: "#b7791f", label: "max"}]);
}

function renderQueues() {
  const queues = {};
  const row = q => queues[q] = queues[q] || {workers: 0, free: 0, running: 0};
  for (const w of live.workers) {
    if (w.state === "offline") continue;
    for (const q of w.queues || []) {
      const r = row(q);
      r.workers += 1; r.free += w.free || 0; r.running += (w.tasks || []).length;
    }
  }
  for (const q of Object.keys(live.queues || {}).concat(Object.keys(backlogs))) if (q) row(q);
  $("queues").innerHTML = Object.keys(queues).sort().map(q => {
    const rate = (live.queues || {})[q] || {succeeded: 0, failed: 0};
    return `<tr data-queue="${esc(q)}"><td>${esc(q)}</td><td>${queues[q].workers}</td><td>${queues[q].free}</td>
      <td>${queues[q].running}</td><td>${backlogs[q] || 0}</td><td>${rate.succeeded}</td><td>${rate.failed}</td></tr>`;
  }).join("");
}

// -- the coordinator's record, polled ----------------------------------------------------------
async function refresh() {
  try {
    const stats = await api("api/stats");
    setPill($("coordinator"), "coordinator online", "ok");
    $("n-live").textContent = stats.live; $("n-backlog").textContent = stats.backlog;
    $("n-dead").textContent = (stats.counts || {}).dead || 0;
    backlogs = stats.backlog_by_queue || {};
    await Promise.all([refreshTasks(), refreshDead(), refreshSchedules()]);
    if (selected) await showTask(selected);
  } catch (error) {
    setPill($("coordinator"), "coordinator: " + error.message, "bad");
  }
}

// The task list pages server-side: "older" asks for the page after this one's last task (the
// answer's "next"); "newer" goes back to the cursor it came from. A filter change starts again.
// An answer to an older request (a poll in flight when the page was turned) is dropped.
const pager = {before: null, next: null, back: [], asked: 0};

async function refreshTasks() {
  const asked = ++pager.asked;
  const params = new URLSearchParams({limit: $("f-limit").value});
  for (const [name, field] of [["state", "f-state"], ["queue", "f-queue"], ["task", "f-task"], ["q", "f-id"]]) {
    if ($(field).value.trim()) params.set(name, $(field).value.trim());
  }
  if (pager.before) params.set("before", pager.before);
  let answer;
  try { answer = await api("api/tasks?" + params); }
  catch (error) {
    if (asked === pager.asked) { $("p-error").textContent = error.message; $("tasks").innerHTML = ""; }
    return;
  }
  if (asked !== pager.asked) return;
  $("p-error").textContent = "";
  pager.next = answer.next;
  $("p-older").disabled = !pager.next;
  $("p-newer").disabled = $("p-newest").disabled = pager.back.length === 0;
  $("p-page").textContent = "page " + (pager.back.length + 1);
  $("tasks").innerHTML = answer.tasks.map(t => `<tr data-task="${esc(t.id)}"><td class="id">${esc(t.id)}</td><td>${esc(t.task)}</td>
    <td>${esc(t.queue)}</td><td class="state-${esc(t.state)}" data-testid="state">${esc(t.state)}</td><td>${esc(t.attempt)}</td>
    <td>${esc(t.worker)}</td><td>${age(t.updated)}</td><td>${actions(t)}</td></tr>`).join("");
}

function turnPage(before, back) {
  pager.before = before; pager.back = back;
  refreshTasks().catch(() => {});
}

function actions(t) {
  if (LIVE.has(t.state)) return `<button data-action="cancel" data-id="${esc(t.id)}">cancel</button>`;
  if (RETRYABLE.has(t.state)) return `<button data-action="retry" data-id="${esc(t.id)}">retry</button>`;
  return "";
}

async function refreshDead() {
  const {tasks} = await api("api/tasks?state=dead&limit=50");
  $("dead").innerHTML = tasks.map(t => `<tr data-task="${esc(t.id)}"><td class="id">${esc(t.id)}</td><td>${esc(t.task)}</td>
    <td>${esc(t.queue)}</td><td>${esc(t.attempt)}</td><td>${esc(t.reason)}</td><td>${actions(t)}</td></tr>`).join("");
}

async function refreshSchedules() {
  const {schedules} = await api("api/schedules");
  $("schedules").innerHTML = schedules.map(s => `<tr><td>${esc(s.name)}</td><td>${esc(s.task)}</td>
    <td>${s.every ? "every " + esc(s.every) + "s" : esc(s.cron) + " " + esc(s.timezone)}</td><td>${esc(s.fired || 0)}</td>
    <td>${esc(s.skipped || 0)}</td><td>${s.next_fire ? new Date(s.next_fire * 1000).toISOString() : "never"}</td></tr>`).join("");
}

async function showTask(id) {
  selected = id;
  const t = await api("api/tasks/" + encodeURIComponent(id));
  const error = t.error ? `<pre>${esc(t.error.type)}: ${esc(t.error.message)}\n${esc(t.error.traceback || "")}</pre>` : "";
  const progress = t.progress ? `<p>progress: ${esc(JSON.stringify(t.progress))}</p>` : "";
  $("detail").innerHTML = `<p><b class="id">${esc(t.id)}</b> ${esc(t.task)} on ${esc(t.queue)}:
    <span class="state-${esc(t.state)}" data-testid="detail-state">${esc(t.state)}</span>, attempt ${esc(t.attempt)}${t.max_attempts ? " (max_attempts " + esc(t.max_attempts) + ")" : ""}
    ${t.reason ? "(" + esc(t.reason) + ")" : ""}</p>${progress}
    ${t.state === "succeeded" ? `<p>result:</p><pre data-testid="result">${esc(JSON.stringify(t.result))}</pre>` : ""}${error}
    <p>attempts:</p><pre>${esc((t.history || []).map(h => JSON.stringify(h)).join("\n"))}</pre>`;
}

// -- actions -------------------------------------------------------------------------------------
document.addEventListener("click", async event => {
  const button = event.target.closest("button[data-action]");
  if (button) {
    event.stopPropagation();
    try { await api(`api/tasks/${encodeURIComponent(button.dataset.id)}/${button.dataset.action}`, {method: "POST"}); }
    catch (error) { alert(error.message); }
    return refresh();
  }
  const row = event.target.closest("tr[data-task]");
  if (row) showTask(row.dataset.task).catch(error => { $("detail").textContent = error.message; });
});

$("submit").addEventListener("submit", async event => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const body = {task: form.get("task"), args: JSON.parse(form.get("args") || "[]"),
                  kwargs: JSON.parse(form.get("kwargs") || "{}"), queue: form.get("queue") || "default"};
    const answer = await api("api/tasks", {method: "POST", body: JSON.stringify(body)});
    $("submit-out").textContent = "submitted " + answer.id;
    selected = answer.id;
  } catch (error) {
    $("submit-out").textContent = "error: " + error.message;
  }
});

for (const s of STATES) $("f-state").insertAdjacentHTML("beforeend", `<option>${s}</option>`);
$("filter").addEventListener("input", () => turnPage(null, []));
$("p-older").addEventListener("click", () => turnPage(pager.next, pager.back.concat([pager.before])));
$("p-newer").addEventListener("click", () => turnPage(pager.back[pager.back.length - 1], pager.back.slice(0, -1)));
$("p-newest").addEventListener("click", () => turnPage(null, []));
$("filter").addEventListener("submit", event => event.preventDefault());
connect();
refresh();
setInterval(refresh, 2000);
