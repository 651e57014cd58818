// moot's dashboard: reads one node's live stream (server-sent events over
// fetch, so the token can ride as a header), and when that node goes, the
// next member's: no computer essential, the dashboard's server included.
"use strict";

const TIMELINE_SHOWN = 200;
const RETRY_MS = 500;
const token = sessionStorage.getItem("moot_token");
const state = {
  origins: [location.origin],   // every member's HTTP address we have heard of
  current: location.origin,
  events: new Map(),            // "hlc_text/node" -> event (hlc_text: exact, sorts as text)
  lastOverview: null,
};

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function setConnection(text, ok) {
  const pill = document.getElementById("connection");
  pill.textContent = text;
  pill.className = "pill " + (ok ? "ok" : "lost");
}

function renderMembers(overview) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  const leader = overview.raft && overview.raft.leader;
  for (const member of [...overview.members].sort((a, b) => a.node_id.localeCompare(b.node_id))) {
    const labels = Object.entries(member.labels).filter(([key]) => key !== "http").map(([k, v]) => `${k}=${v}`).join(" ");
    const name = member.node_id + (member.node_id === leader ? " ★" : "") + (member.node_id === overview.node_id ? " (this)" : "");
    body.append(el("tr", {"data-node": member.node_id, "data-state": member.state},
      el("td", {class: "id"}, name),
      el("td", {class: "mono"}, member.address),
      el("td", {class: "state " + member.state}, member.state),
      el("td", {class: "labels"}, labels),
      el("td", {}, member.cpus),
      el("td", {}, member.rtt_ms === null ? "-" : member.rtt_ms.toFixed(1))));
  }
  const alive = overview.members.filter((m) => m.state === "alive").length;
  document.getElementById("summary").textContent = `${alive} of ${overview.members.length} alive · served by ${overview.node_id}`;
}

function renderMap(overview) {
  const map = document.getElementById("map");
  map.replaceChildren();
  const placed = overview.members.filter((m) => m.coordinate);
  if (!placed.length) {
    map.append(svg("text", {x: 10, y: 20}, "no coordinates yet"));
    return;
  }
  const xs = placed.map((m) => m.coordinate.vec[0] || 0);
  const ys = placed.map((m) => m.coordinate.vec[1] || 0);
  const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), 0.5);
  const cx = (Math.max(...xs) + Math.min(...xs)) / 2, cy = (Math.max(...ys) + Math.min(...ys)) / 2;
  const scale = 200 / span;
  map.append(svg("text", {x: 6, y: 254}, `${span.toFixed(2)} ms across`));
  for (const member of placed) {
    const x = 200 + (member.coordinate.vec[0] - cx) * scale;
    const y = 130 + (member.coordinate.vec[1] - cy) * scale;
    map.append(svg("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: 6, class: member.state}));
    const region = member.labels.region ? ` ${member.labels.region}` : "";
    map.append(svg("text", {x: (x + 9).toFixed(1), y: (y + 3).toFixed(1)}, member.node_id.slice(0, 6) + region));
  }
}

function renderRaft(overview) {
  const list = document.getElementById("raft");
  list.replaceChildren();
  const raft = overview.raft;
  const rows = raft ? [
    ["leader", raft.leader || "none"], ["term", raft.term], ["this node", raft.role],
    ["voters", raft.voters.join(", ")], ["learners", raft.learners.join(", ") || "-"],
    ["commit index", raft.commit_index], ["applied index", raft.applied_index], ["keys", raft.keys],
  ] : [["raft", "not running here"]];
  if (overview.objects) rows.push(["chunks here", `${overview.objects.chunks} (${(overview.objects.chunk_bytes / 1048576).toFixed(1)} MiB)`]);
  for (const [name, value] of rows) list.append(el("dt", {}, name), el("dd", {id: "raft-" + name.replace(/ /g, "-")}, value));
}

function renderJobs(overview) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of overview.jobs) {
    const done = job.done + job.failed + job.cancelled;
    const percent = job.total ? Math.round((100 * done) / job.total) : 100;
    const bar = el("div", {class: "bar"}, el("span", {style: `width:${percent}%`}), el("em", {}, `${done}/${job.total}`));
    const cancel = el("button", {type: "button"}, "cancel");
    cancel.addEventListener("click", () => cancelJob(job.job_id));
    const active = job.state === "running" || job.state === "submitting";
    body.append(el("tr", {"data-job": job.job_id},
      el("td", {class: "id", title: job.job_id}, `${job.name || "job"} ${job.job_id.slice(0, 8)}`),
      el("td", {}, job.state), el("td", {}, bar), el("td", {}, job.failed), el("td", {}, job.running),
      el("td", {}, job.reruns), el("td", {}, active ? cancel : "")));
  }
  if (!overview.jobs.length) body.append(el("tr", {}, el("td", {colspan: 7, class: "labels"}, "no jobs yet")));
}

function renderTimeline() {
  const list = document.getElementById("timeline");
  // hlc_text, not hlc: hybrid timestamps are above 2**53, past what a JavaScript number holds exactly.
  const order = (a, b) => (a.hlc_text < b.hlc_text ? 1 : a.hlc_text > b.hlc_text ? -1 : a.node.localeCompare(b.node));
  const events = [...state.events.values()].sort(order).slice(0, TIMELINE_SHOWN);
  list.replaceChildren();
  for (const event of events) {
    const fields = Object.entries(event).filter(([key]) => !["hlc", "hlc_text", "time", "node", "event"].includes(key))
      .map(([key, value]) => `${key}=${value}`).join(" ");
    list.append(el("li", {class: event.event},
      el("span", {class: "when"}, event.time.replace("T", " ")), " ",
      el("span", {class: "who"}, event.node.slice(0, 8)), " ",
      el("span", {class: "what"}, event.event), " ", fields));
  }
}

function onOverview(overview) {
  state.lastOverview = overview;
  for (const member of overview.members) {
    const origin = member.labels.http ? "http://" + member.labels.http : null;
    if (origin && !state.origins.includes(origin)) state.origins.push(origin);
  }
  renderMembers(overview); renderMap(overview); renderRaft(overview); renderJobs(overview);
}

function onEvents(data) {
  for (const event of data.events) state.events.set(`${event.hlc_text}/${event.node}`, event);
  while (state.events.size > 5 * TIMELINE_SHOWN) state.events.delete(state.events.keys().next().value);
  renderTimeline();
}

function headers() {
  return token ? {Authorization: "Bearer " + token} : {};
}

async function readStream(origin) {
  const response = await fetch(origin + "/api/stream", {headers: headers(), credentials: "include", cache: "no-store"});
  if (response.status === 401) {
    if (origin === location.origin) location.href = "/login";
    throw new Error("unauthorized at " + origin);
  }
  if (!response.ok) throw new Error(`${origin}: HTTP ${response.status}`);
  setConnection("live from " + origin.replace("http://", ""), true);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) throw new Error("stream ended");
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const kind = /^event: (.*)$/m.exec(block);
      const data = /^data: (.*)$/m.exec(block);
      if (!kind || !data) continue;
      const payload = JSON.parse(data[1]);
      if (kind[1] === "overview") onOverview(payload); else if (kind[1] === "events") onEvents(payload);
    }
  }
}

async function run() {
  for (;;) {
    try {
      await readStream(state.current);
    } catch (error) {
      setConnection(`lost ${state.current.replace("http://", "")}, trying another node`, false);
      const others = state.origins.filter((origin) => origin !== state.current);
      if (others.length) state.current = others[Math.floor(Math.random() * others.length)];
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

async function cancelJob(jobId) {
  let origin = state.current;
  for (let attempt = 0; attempt < 3; attempt++) {
    const response = await fetch(origin + `/api/jobs/${jobId}/cancel`, {method: "POST", headers: headers(), credentials: "include"});
    const body = await response.json();
    if (response.ok) return;
    if (body.error === "not_leader" && body.leader_http) { origin = body.leader_http; continue; }
    alert(body.message || `cancel failed: HTTP ${response.status}`);
    return;
  }
}

document.querySelector("header form").addEventListener("submit", () => sessionStorage.removeItem("moot_token"));
run();
