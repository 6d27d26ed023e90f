// The manager's web interface: one page per tab, each drawn from the JSON API. No
// framework and no inline code (the Content-Security-Policy forbids it).
"use strict";

let csrf = "";
let current = "";
let logsAfter = 0;
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Robustifier-Csrf"] = csrf;
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    location.replace("/login");
    throw new Error("not logged in");
  }
  const v = await r.json();
  if (!r.ok) throw new Error(v.error || "HTTP " + r.status);
  return v;
}

function say(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
}

function time(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-";
}

// A table row of cells: strings, or [text, class].
function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (Array.isArray(c)) {
      td.textContent = c[0];
      if (c[1]) td.className = c[1];
    } else {
      td.textContent = c;
    }
    tr.appendChild(td);
  }
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  return tr;
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

// A bar chart as inline SVG: points are {label, value}; labels under the first, middle
// and last bars, the largest value on the axis.
function barChart(container, points, title) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 640, h = 160, left = 36, bottom = 20, top = 8;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  const t = document.createElementNS(ns, "title");
  t.textContent = title;
  svg.appendChild(t);
  const max = Math.max(1, ...points.map((p) => p.value));
  const plotH = h - bottom - top;
  const step = (w - left - 4) / Math.max(1, points.length);
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  };
  el("line", { x1: left, y1: top, x2: left, y2: h - bottom, class: "axis" });
  el("line", { x1: left, y1: h - bottom, x2: w, y2: h - bottom, class: "axis" });
  el("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max));
  el("text", { x: left - 4, y: h - bottom, "text-anchor": "end" }, "0");
  points.forEach((p, i) => {
    const bh = (p.value / max) * plotH;
    const bar = el("rect", {
      x: left + i * step + 1, y: h - bottom - bh,
      width: Math.max(1, step - 2), height: bh, class: "bar",
    });
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${p.label}: ${p.value}`;
    bar.appendChild(tip);
    // Labels under the first, middle and last bars, kept inside the picture.
    if (i === 0) el("text", { x: left, y: h - 6 }, p.label);
    else if (i === points.length - 1) el("text", { x: w - 2, y: h - 6, "text-anchor": "end" }, p.label);
    else if (i === Math.floor(points.length / 2)) el("text", { x: left + (i + 0.5) * step, y: h - 6, "text-anchor": "middle" }, p.label);
  });
  container.replaceChildren(svg);
  return svg;
}

// --- overview ---

async function overview() {
  const [s, alarms, minutes] = await Promise.all([
    api("/api/status"),
    api("/api/alarms"),
    api("/api/stats?since=3600"),
  ]);
  $("head").textContent = `Head: version ${s.head}, committed ${time(s.head_ms)}`;
  $("pending").hidden = !s.pending;
  if (s.pending) {
    $("pending-text").textContent =
      `Version ${s.head} awaits confirmation until ${time(s.pending.deadline * 1000)}; otherwise version ${s.pending.revert_to} comes back.`;
  }
  const now = Date.now() / 1000;
  fill("members", s.members.map((m) => {
    const drift = m.configured && m.applied !== m.desired;
    const reach = m.connected ? ["yes", "good"]
      : m.last_seen ? [`no (${Math.round(now - m.last_seen)} s)`, "bad"] : ["never", "bad"];
    return row([
      m.configured ? m.name : `${m.name} (not configured)`,
      reach,
      String(m.desired),
      [String(m.applied), drift ? "drift applied" : "applied"],
      m.release || "-",
      m.frontend ? m.frontend.version : "-",
      [m.last_error || "-", m.last_error ? "bad" : ""],
    ], { "data-member": m.name, class: drift ? "drift" : "" });
  }));
  const vips = [];
  for (const m of s.members) {
    for (const r of (m.frontend && m.frontend.routers) || []) {
      const master = r.master ? (r.master === r.primary ? `${r.master} (this member)` : r.master) : "-";
      vips.push(row([m.name, String(r.vrid), r.family, r.state,
        `${r.priority}/${r.configured_priority}`, master, r.vips.join(", ")]));
    }
  }
  fill("vips", vips.length ? vips : [row(["-", "no virtual router reported", "", "", "", "", ""])]);
  // Each member's load records; a member that reports none (an older release) shows its
  // down (alarms) and drained back-ends.
  const backends = [];
  for (const m of s.members) {
    const f = m.frontend;
    if (f && f.backends && f.backends.length) {
      for (const b of f.backends) {
        const state = b.overloaded && b.state === "up" ? "over a threshold" : b.state;
        backends.push(row([m.name, b.pool, b.name, [state, b.state === "up" && !b.overloaded ? "good" : "bad"],
          String(b.weight), String(b.active_sessions), (b.response_us / 1000).toFixed(1),
          (b.run_queue_milli / 1000).toFixed(2), String(b.mail_queue), (b.disk_permille / 10).toFixed(1)],
          { "data-member": m.name, "data-backend": b.name }));
      }
      continue;
    }
    for (const a of alarms) {
      if (a.member === m.name && a.key.startsWith("backend_down:")) {
        backends.push(row([m.name, "-", a.key.slice(13), ["down", "bad"], "", "", "", "", "", ""]));
      }
    }
    for (const b of (f && f.drained) || []) {
      backends.push(row([m.name, "-", b, "drained by the operator", "", "", "", "", "", ""]));
    }
  }
  fill("backends", backends.length ? backends : [row(["-", "", "no back-end reported", "", "", "", "", "", "", ""])]);
  // Messages per minute over the last hour, every member's services together.
  const minute = 60000, end = Math.floor(Date.now() / minute) * minute;
  const counts = new Array(60).fill(0);
  for (const m of minutes) {
    const i = 59 - Math.floor((end - m.minute * minute) / minute);
    if (i < 0 || i >= 60) continue;
    for (const t of Object.values(m.services || {})) counts[i] += t.messages || 0;
  }
  barChart($("traffic-chart"), counts.map((value, i) => ({
    label: new Date(end - (59 - i) * minute).toISOString().slice(11, 16), value,
  })), "messages per minute");
}

// --- alarms ---

async function alarms() {
  const list = await api("/api/alarms");
  fill("alarms", list.map((a) => row([
    a.member, a.key, [a.severity, "severity-" + a.severity], time(a.since_ms), a.message,
  ], { "data-alarm": `${a.member} ${a.key}` })));
  $("alarms-none").hidden = list.length > 0;
}

// --- logs ---

function logQuery(after) {
  const p = new URLSearchParams({ limit: "1000", after: String(after) });
  for (const [id, k] of [["logs-member", "member"], ["logs-since", "since"], ["logs-kind", "kind"], ["logs-text", "text"], ["logs-session", "session"]]) {
    const v = $(id).value.trim();
    if (v) p.set(k, v);
  }
  return "/api/logs?" + p.toString();
}

function logRow(e) {
  if (!e.event) {
    const lost = e.gap ? `events ${e.gap[0]} to ${e.gap[1]} lost: the front-end no longer had them` : "(empty)";
    return row(["", e.member, "", "", "", lost]);
  }
  const ev = e.event;
  const alarm = ev.alarm ? ` [alarm ${ev.alarm}]` : "";
  return row([time(ev.time_ms), e.member, String(ev.seq), [ev.severity, "severity-" + ev.severity], ev.kind, ev.message + alarm]);
}

async function logs() {
  const v = await api(logQuery(0));
  logsAfter = v.last;
  fill("log-entries", v.entries.map(logRow));
}

async function followLogs() {
  if (current !== "logs" || !$("logs-follow").checked) return;
  const v = await api(logQuery(logsAfter));
  logsAfter = v.last;
  const body = $("log-entries").tBodies[0];
  for (const e of v.entries) body.appendChild(logRow(e));
}

// --- journal ---

async function journal() {
  const log = await api("/api/journal?limit=100");
  fill("versions", log.map((v) => {
    const tr = row([String(v.number), time(v.time * 1000), v.author, String(v.based_on),
      v.comment, v.summary + (v.confirm_by ? ` (confirm by ${time(v.confirm_by * 1000)})` : "")],
      { "data-version": String(v.number) });
    const td = document.createElement("td");
    const button = (text, cls, f) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = cls;
      b.textContent = text;
      b.addEventListener("click", () => f(b).catch((e) => say(e.message)));
      td.appendChild(b);
      return b;
    };
    button("show", "show", () => showVersion(v.number));
    if (v.number > 1) button("diff", "diff", () => showDiff(v.number - 1, v.number));
    // A rollback asks once more, in the page, before it commits.
    button("roll back to this", "rollback", async (b) => {
      b.hidden = true;
      button(`really roll back to version ${v.number}?`, "confirm-rollback", async () => {
        const r = await api("/api/rollback", { to: v.number });
        await journal();
        say(`Rolled back: version ${r.number}.`);
      });
    });
    tr.appendChild(td);
    return tr;
  }));
}

async function showVersion(n) {
  const v = await api("/api/show?version=" + n);
  $("journal-title").textContent = `Version ${n}`;
  $("journal-view").textContent = v.text;
}

async function showDiff(a, b) {
  const lines = await api(`/api/diff?a=${a}&b=${b}`);
  $("journal-title").textContent = `From version ${a} to version ${b}`;
  const pre = $("journal-view");
  // The manager's diff: what changes for the members, one line each.
  pre.replaceChildren(...(lines.length ? lines : [`no change from version ${a} to version ${b}`]).map((l) => {
    const s = document.createElement("span");
    s.textContent = l + "\n";
    s.className = "change";
    return s;
  }));
}

// --- editor ---

let editorLoaded = false;

async function loadHead() {
  const v = await api("/api/show");
  $("editor-base").textContent = String(v.info.number);
  $("editor-text").value = v.text;
  editorLoaded = true;
}

async function editor() {
  if (!editorLoaded) {
    try {
      await loadHead();
    } catch (e) {
      // No version yet: the first commit is on version 0.
      $("editor-base").textContent = "0";
      editorLoaded = true;
    }
  }
}

async function commit() {
  const body = {
    base: Number($("editor-base").textContent),
    text: $("editor-text").value,
    comment: $("editor-comment").value,
  };
  if ($("editor-confirm").checked) body.confirm_minutes = Number($("editor-minutes").value);
  const result = $("editor-result");
  try {
    const v = await api("/api/commit", body);
    result.className = "good";
    result.textContent = `Committed version ${v.number}: ${v.summary}` +
      (v.confirm_by ? ` (confirm by ${time(v.confirm_by * 1000)} on the overview)` : "");
    $("editor-base").textContent = String(v.number);
  } catch (e) {
    result.className = "error";
    result.textContent = "Refused: " + e.message;
  }
}

// --- message trace ---

function node(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// A definition list of [term, value] pairs, values as text.
function facts(pairs) {
  const dl = node("dl", undefined, "facts");
  for (const [k, v] of pairs) {
    dl.appendChild(node("dt", k));
    dl.appendChild(node("dd", v === null || v === undefined || v === "" ? "-" : String(v)));
  }
  return dl;
}

function lines(list, none) {
  return list && list.length ? node("pre", list.join("\n"), "mta") : node("p", none, "muted");
}

async function trace() {
  const id = $("trace-id").value.trim();
  const out = $("trace-result");
  if (!id) return;
  let v;
  try {
    v = await api("/api/trace?id=" + encodeURIComponent(id));
  } catch (e) {
    out.replaceChildren(node("p", "Refused: " + e.message, "error"));
    return;
  }
  const parts = [];
  for (const m of v.messages || []) {
    const r = m.record;
    const section = node("section", undefined, "traced");
    section.appendChild(node("h3", `${r.message_id || "(no Message-ID)"} via ${m.member}`));
    section.appendChild(facts([
      ["time", time(m.time_ms)],
      ["client", `${r.client}${r.helo ? " (HELO " + r.helo + ")" : ""}`],
      ["front-end session", `${m.member} / ${r.session} (service ${r.service})`],
      ["envelope", `<${r.mail_from}> to ${r.rcpt_count} recipient(s): ${(r.rcpts || []).join(", ")}`],
      ["routing", `pool ${r.pool}, back-end ${r.backend}: ${r.route_reason}`],
      ["size", `${r.size} octets`],
      ["back-end queue id", r.queue_id],
    ]));
    section.appendChild(node("h4", `${r.backend}'s own log lines`));
    section.appendChild(lines(m.mta, "Its agent has shipped no line of this queue id (yet)."));
    parts.push(section);
  }
  if ((v.session_events || []).length) {
    parts.push(node("h3", "The session's other events"));
    const t = node("table");
    t.appendChild(node("tbody"));
    for (const e of v.session_events) t.tBodies[0].appendChild(logRow(e));
    parts.push(t);
  }
  for (const h of v.mta_only || []) {
    parts.push(node("h3", `${h.host}: log lines of queue id ${v.id}`));
    parts.push(lines(h.lines, ""));
  }
  if (!parts.length) parts.push(node("p", `Nothing in the merged log or the MTA logs names ${v.id}.`, "muted"));
  out.replaceChildren(...parts);
}

// --- statistics ---

const STAT_FIGURES = {
  sessions: (t) => t.sessions || 0,
  messages: (t) => t.messages || 0,
  recipients: (t) => t.recipients || 0,
  "bytes to back-ends": (t) => t.bytes_to_backend || 0,
  deflections: (t) => Object.values(t.deflected || {}).reduce((a, b) => a + b, 0),
};

async function stats() {
  const out = $("stats-result");
  const params = new URLSearchParams({ since: $("stats-range").value });
  const member = $("stats-member").value.trim();
  if (member) params.set("member", member);
  const minutes = await api("/api/stats?" + params);
  const scope = $("stats-scope").value;
  const figure = $("stats-figure").value;
  const value = STAT_FIGURES[figure];
  // Per minute, the figure summed over the scope's keys and the members.
  const byMinute = new Map();
  const byKey = new Map();
  for (const m of minutes) {
    for (const [key, t] of Object.entries(m[scope] || {})) {
      const v = value(t);
      byMinute.set(m.minute, (byMinute.get(m.minute) || 0) + v);
      const k = `${m.member} ${key}`;
      const sum = byKey.get(k) || { member: m.member, key, sessions: 0, messages: 0, recipients: 0, deflections: 0 };
      sum.sessions += STAT_FIGURES.sessions(t);
      sum.messages += STAT_FIGURES.messages(t);
      sum.recipients += STAT_FIGURES.recipients(t);
      sum.deflections += STAT_FIGURES.deflections(t);
      byKey.set(k, sum);
    }
  }
  if (!minutes.length) {
    out.replaceChildren(node("p", "No minute of statistics stored for this range yet.", "muted"));
    return;
  }
  const first = Math.min(...minutes.map((m) => m.minute));
  const last = Math.max(...minutes.map((m) => m.minute));
  const points = [];
  for (let n = first; n <= last; n++) {
    points.push({ label: time(n * 60000).slice(11, 16), value: byMinute.get(n) || 0 });
  }
  const chart = node("div", undefined, "chart");
  chart.id = "stats-chart";
  barChart(chart, points, `${figure} per minute, ${scope}`);
  const table = node("table");
  table.id = "stats-table";
  const head = node("thead");
  head.appendChild(row(["member", scope.replace(/s$/, ""), "sessions", "messages", "recipients", "deflections"]));
  table.appendChild(head);
  const body = node("tbody");
  for (const s of [...byKey.values()].sort((a, b) => b.sessions - a.sessions)) {
    body.appendChild(row([s.member, s.key, String(s.sessions), String(s.messages), String(s.recipients), String(s.deflections)]));
  }
  table.appendChild(body);
  out.replaceChildren(node("h3", `${figure} per minute (${scope}), ${time(first * 60000)} to ${time(last * 60000)}`), chart, table);
}

// --- navigation ---

const pages = { overview, alarms, logs, journal, editor, trace: async () => {}, stats };

async function show(page) {
  if (!pages[page]) page = "overview";
  current = page;
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  for (const s of document.querySelectorAll("main section")) s.hidden = s.id !== "page-" + page;
  const section = $("page-" + page);
  section.removeAttribute("data-loaded");
  try {
    await pages[page]();
    say("");
    section.setAttribute("data-loaded", "1");
  } catch (e) {
    say(e.message);
  }
}

function on(id, f) {
  $(id).addEventListener("click", () => f().catch((e) => say(e.message)));
}

document.addEventListener("DOMContentLoaded", async () => {
  const me = await api("/api/session");
  csrf = me.csrf;
  $("who").textContent = me.name;
  on("logout", async () => {
    await api("/api/logout", {});
    location.replace("/login");
  });
  on("pending-confirm", async () => {
    await api("/api/confirm", {});
    await overview();
  });
  on("logs-apply", logs);
  on("diff-show", () => showDiff(Number($("diff-a").value), Number($("diff-b").value)));
  on("editor-load", loadHead);
  on("editor-commit", commit);
  on("trace-show", trace);
  on("stats-show", stats);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  setInterval(() => {
    if (current === "overview" || current === "alarms") pages[current]().catch((e) => say(e.message));
    followLogs().catch((e) => say(e.message));
  }, 3000);
  await show(location.hash.slice(1) || "overview");
});
