// roost ui: fills the runs list and the run page from the JSON API under /api/, polling it every
// second while something may change. Plain DOM, no build step; text always goes in via textContent.
"use strict";

const POLL_MS = 1000;
const COLORS = {
  completed: "#16803c", failed: "#b42318", running: "#1d5fd1", waiting: "#b76e00", pending: "#9aa1ab",
  idle: "#c7ccd3", rejected: "#6b7280", cancelled: "#6b7280", absorbed: "#6b7280",
};
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.round(seconds / 60) + " min";
  if (seconds < 86400) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

function badge(status) {
  return el("span", { class: "status s-" + status }, status);
}

function showProblem(message) {
  const p = document.getElementById("problem");
  p.textContent = message || "";
  p.hidden = !message;
}

async function getJSON(url, options) {
  const res = await fetch(url, { ...options, headers: { Accept: "application/json", ...(options || {}).headers } });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON: a proxy's or the server's own error page */ }
  if (!res.ok || body === null) throw new Error((body && body.error) || `HTTP ${res.status} ${res.statusText}`.trim());
  return body;
}

// -- runs list ------------------------------------------------------------------------------------

async function refreshRuns() {
  const select = document.getElementById("status");
  const status = select.value;
  try {
    const data = await getJSON("/api/runs" + (status ? "?status=" + encodeURIComponent(status) : ""));
    document.getElementById("runtime").textContent = "runtime: " + data.runtime;
    const body = document.querySelector("#runs tbody");
    body.replaceChildren(...data.runs.map((r) => {
      const row = el("tr", { "data-run-id": r.run_id, "data-status": r.status });
      const link = el("a", { href: "/runs/" + encodeURIComponent(r.run_id) }, r.run_id);
      row.append(el("td"), el("td", {}, r.app), el("td"), el("td", {}, age(r.age)), el("td", { class: "dim" }, r.version || ""));
      row.children[0].append(link);
      row.children[2].append(badge(r.status));
      return row;
    }));
    document.getElementById("empty").hidden = data.runs.length > 0;
    showProblem("");
  } catch (err) {
    showProblem(String(err.message || err));
  }
}

function runsPage() {
  const select = document.getElementById("status");
  const wanted = new URLSearchParams(location.search).get("status");
  if (wanted) select.value = wanted;
  select.addEventListener("change", () => {
    const url = new URL(location.href);
    if (select.value) url.searchParams.set("status", select.value); else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    refreshRuns();
  });
  refreshRuns();
  setInterval(refreshRuns, POLL_MS);
}

// -- run page -------------------------------------------------------------------------------------

function layers(graph) {
  // Longest path from the entry agents (bounded, so a loop in the wiring cannot spin).
  const layer = {};
  for (const n of graph.nodes) layer[n.id] = 0;
  for (let i = 0; i < graph.nodes.length; i++) {
    let changed = false;
    for (const e of graph.edges) {
      if (e.source === e.target || !(e.source in layer) || !(e.target in layer)) continue;
      if (layer[e.target] < layer[e.source] + 1) { layer[e.target] = layer[e.source] + 1; changed = true; }
    }
    if (!changed) break;
  }
  return layer;
}

function drawGraph(graph) {
  const W = 150, H = 40, GX = 70, GY = 24, PAD = 16;
  const layer = layers(graph);
  const columns = {};
  for (const n of graph.nodes) (columns[layer[n.id]] = columns[layer[n.id]] || []).push(n);
  const pos = {};
  let maxRows = 1, maxCol = 0;
  for (const [col, nodes] of Object.entries(columns)) {
    maxCol = Math.max(maxCol, Number(col));
    maxRows = Math.max(maxRows, nodes.length);
    nodes.forEach((n, row) => { pos[n.id] = { x: PAD + Number(col) * (W + GX), y: PAD + row * (H + GY) }; });
  }
  const width = PAD * 2 + (maxCol + 1) * W + maxCol * GX;
  const height = PAD * 2 + maxRows * H + (maxRows - 1) * GY;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "agent graph" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7280" }));
  defs.append(marker);
  root.append(defs);
  for (const e of graph.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    let d;
    if (e.source === e.target || layer[e.target] <= layer[e.source]) {  // a loop back: arc above
      d = `M${a.x + W / 2},${a.y} C${a.x + W / 2},${a.y - 40} ${b.x + W / 2},${b.y - 40} ${b.x + W / 2 + 6},${b.y}`;
    } else {
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mid = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
    }
    const target = graph.nodes.find((n) => n.id === e.target);
    const active = target && target.status !== "idle";
    root.append(svg("path", { class: "edge", "data-source": e.source, "data-target": e.target, d, fill: "none",
      stroke: active ? COLORS[target.status] || "#6b7280" : "#c7ccd3", "stroke-width": 2, "marker-end": "url(#arrow)" }));
  }
  for (const n of graph.nodes) {
    const p = pos[n.id];
    const g = svg("g", { class: "node", "data-agent": n.id, "data-status": n.status, transform: `translate(${p.x},${p.y})` });
    g.append(svg("rect", { width: W, height: H, rx: 8, fill: COLORS[n.status] || "#9aa1ab" }));
    g.append(svg("text", { x: W / 2, y: 17, "text-anchor": "middle", fill: "#fff", "font-weight": 600 }, n.id));
    g.append(svg("text", { x: W / 2, y: 32, "text-anchor": "middle", fill: "#fff", "font-size": 11 },
      n.status + (n.approval ? " · approval" : "")));
    g.append(svg("title", {}, `${n.id}: ${n.status}`));
    root.append(g);
  }
  document.getElementById("graph").replaceChildren(root);
}

function drawTimeline(run) {
  const box = document.getElementById("timeline");
  const acts = run.activations.filter((a) => a.status !== "absorbed");
  if (!acts.length) { box.replaceChildren(el("p", { class: "dim" }, "No activations yet.")); return; }
  const now = Date.now() / 1000;
  const t0 = Math.min(...acts.map((a) => a.started_at || run.created_at || now), run.created_at || now);
  const end = run.finished_at || Math.max(now, ...acts.map((a) => a.finished_at || 0));
  const span = Math.max(end - t0, 0.001);
  const bar = (start, stop, status) => {
    const left = ((start - t0) / span) * 100, right = (((stop || (run.finished ? start : now)) - t0) / span) * 100;
    const track = el("div", { class: "tl-track" });
    track.append(el("div", { class: "tl-bar", style: `left:${left}%;width:${Math.max(right - left, 0.3)}%;background:${COLORS[status] || "#1d5fd1"}` }));
    return track;
  };
  const rows = [];
  for (const a of acts) {
    const dur = a.started_at && a.finished_at ? ` ${(a.finished_at - a.started_at).toFixed(2)} s` : "";
    const row = el("div", { class: "tl-row tl-activation", "data-agent": a.agent,
      title: `${a.agent} (${a.kind}) ${a.status}: started ${when(a.started_at)}, finished ${when(a.finished_at)}` });
    row.append(el("span", {}, `${a.agent} · ${a.status}${dur}`));
    row.append(a.started_at ? bar(a.started_at, a.finished_at, a.status) : el("div", { class: "tl-track" }));
    rows.push(row);
    for (const s of a.steps) {
      const step = el("div", { class: "tl-row tl-step", title: `${s.kind} ${s.name}: ${s.status}, ${s.attempts} attempt(s)` });
      step.append(el("span", {}, `${s.kind} ${s.name} · ${s.status}`));
      step.append(s.started_at ? bar(s.started_at, s.finished_at, s.status === "done" ? "completed" : s.status) : el("div", { class: "tl-track" }));
      rows.push(step);
    }
  }
  box.replaceChildren(...rows);
}

function drawOutputs(run) {
  const box = document.getElementById("outputs");
  const items = run.activations.filter((a) => a.output !== null || a.error);
  if (!items.length) { box.replaceChildren(el("p", { class: "dim" }, "No outputs yet.")); return; }
  box.replaceChildren(...items.map((a) => {
    const div = el("div", { class: "output", "data-agent": a.agent });
    div.append(el("strong", {}, a.agent), document.createTextNode(" "), badge(a.status));
    if (a.output !== null) div.append(el("pre", {}, JSON.stringify(a.output, null, 2)));
    if (a.error) {
      div.append(el("p", { class: "error" }, `${a.error.error_type || "error"}: ${a.error.error_message || ""}`));
      if (a.error.traceback) div.append(el("pre", { class: "traceback" }, a.error.traceback));
    }
    return div;
  }));
}

async function resolve(runId, name, value) {
  return getJSON("/api/runs/" + encodeURIComponent(runId) + "/resolve", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name, value }),
  });
}

function showRefusal(message) {
  // Why an answer was refused: stays until the next answer (polling clears only its own problems).
  const p = document.getElementById("refused");
  p.textContent = message || "";
  p.hidden = !message;
}

function drawApprovals(run, redraw) {
  const section = document.getElementById("approvals");
  const list = document.getElementById("approval-list");
  const names = run.finished ? [] : run.waiting_on;
  const key = JSON.stringify([run.run_id, names, run.approvals]);
  if (list.dataset.key === key) return;  // unchanged: keep the buttons (and what is typed) as they are
  list.dataset.key = key;
  section.hidden = names.length === 0;
  list.replaceChildren(...names.map((name) => {
    const li = el("li", { "data-name": name });
    li.append(el("strong", {}, name));
    const act = async (value, buttons) => {
      buttons.forEach((b) => { b.disabled = true; });
      showRefusal("");
      try { redraw(await resolve(run.run_id, name, value)); } catch (err) {
        showRefusal(`${name}: ${err.message || err}`);
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    if (run.approvals.includes(name)) {
      const yes = el("button", { class: "approve", "data-action": "approve" }, "Approve");
      const no = el("button", { class: "reject", "data-action": "reject" }, "Reject");
      yes.addEventListener("click", () => act(true, [yes, no]));
      no.addEventListener("click", () => act(false, [yes, no]));
      li.append(yes, no);
    } else {
      const input = el("input", { placeholder: "value (JSON)", "aria-label": "value for " + name });
      const send = el("button", { "data-action": "resolve" }, "Resolve");
      send.addEventListener("click", () => {
        let value = input.value;
        try { value = JSON.parse(input.value); } catch (_) { /* a plain string */ }
        act(value, [send]);
      });
      li.append(document.createTextNode(" "), input, send);
    }
    return li;
  }));
}

function drawRun(run) {
  document.getElementById("run-id").textContent = run.run_id;
  document.title = "roost run " + run.run_id;
  const status = document.getElementById("status");
  status.textContent = run.status;
  status.className = "status s-" + run.status;
  document.body.dataset.status = run.status;
  document.getElementById("summary").textContent =
    `app ${run.app} · ${run.runtime} runtime · started ${when(run.created_at)}` +
    (run.finished_at ? ` · finished ${when(run.finished_at)}` : "");
  const note = document.getElementById("graph-note");
  note.textContent = run.note || "";
  note.hidden = !run.note;
  drawGraph(run.graph);
  drawTimeline(run);
  document.getElementById("input").textContent = JSON.stringify(run.input, null, 2);
  drawOutputs(run);
  drawApprovals(run, drawRun);
  const err = run.error;
  document.getElementById("error-section").hidden = !err;
  if (err) {
    document.getElementById("error-message").textContent =
      `${err.agent ? err.agent + ": " : ""}${err.error_type || "error"}: ${err.error_message || ""}`;
    document.getElementById("traceback").textContent = err.traceback || "";
  }
}

function runPage() {
  const runId = decodeURIComponent(location.pathname.split("/").pop());
  let timer = null;
  const refresh = async () => {
    try {
      const run = await getJSON("/api/runs/" + encodeURIComponent(runId));
      drawRun(run);
      showProblem("");
      if (run.finished && timer !== null) { clearInterval(timer); timer = null; }
    } catch (err) {
      showProblem(String(err.message || err));
    }
  };
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "runs") runsPage();
  if (document.body.dataset.page === "run") runPage();
});
