// The sockvisor console: plain JS, no framework, no build step, nothing from a CDN.
//
// State comes from the JSON API; what changes it comes from /api/events (server-
// sent events, read with fetch() so that a bearer token can go in a header).  An
// event about watcher W schedules one re-read of W, so a burst of 1,000 spawns
// costs a few requests, not 1,000.  The token lives in sessionStorage (this tab
// only), is sent only as "Authorization: Bearer", never in a URL.
"use strict";

const PAGE = 50;                 // workers shown per page of a watcher
const SOCKET_POLL_MS = 2000;     // accept-queue sampling for the sparklines
const SPARK_POINTS = 60;         // 2 minutes at 2 s
const REFRESH_MS = 5000;         // uptime/CPU drift even without events
const COLLAPSE_OVER = 8;         // more watchers than this: cards start collapsed

const state = {
  token: sessionStorage.getItem("sockvisor-token") || "",
  authorized: false,
  readNeedsToken: document.body.dataset.readNeedsToken === "yes",
  watchers: new Map(),          // name -> {summary, detail, page, expanded, logs}
  order: [],
  spark: new Map(),             // socket name -> [queue lengths]
  pending: new Set(),
  timer: null,
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers(), cache: "no-store" },
                                                   options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function say(text, ok) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.className = ok ? "ok" : "";
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return value.toFixed(1) + "s";
  if (value < 3600) return Math.floor(value / 60) + "m" + Math.floor(value % 60) + "s";
  if (value < 86400) return Math.floor(value / 3600) + "h" + Math.floor(value % 3600 / 60) + "m";
  return Math.floor(value / 86400) + "d" + Math.floor(value % 86400 / 3600) + "h";
}

function mib(bytes) {
  return bytes === null || bytes === undefined ? "–" : (bytes / 1048576).toFixed(1);
}

// ---------------------------------------------------------------- token

async function checkToken() {
  const result = await api("/api/");
  state.authorized = !!(result.body && result.body.authorized);
  const tokenState = document.getElementById("token-state");
  if (state.token && !state.authorized) {
    tokenState.textContent = "token refused";
  } else {
    tokenState.textContent = state.authorized ? "actions enabled" : "read-only";
  }
  document.getElementById("forget-token").hidden = !state.token;
  for (const entry of state.watchers.values()) {
    entry.dirty = true;
    if (!state.authorized) entry.logs = null;   // a forgotten token takes the output along
  }
  renderAll();
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  state.token = input.value.trim();
  input.value = "";
  if (state.token) sessionStorage.setItem("sockvisor-token", state.token);
  checkToken().then(refreshAll);
  restartEvents();
});

document.getElementById("forget-token").addEventListener("click", () => {
  state.token = "";
  sessionStorage.removeItem("sockvisor-token");
  checkToken();
  restartEvents();
});

// ---------------------------------------------------------------- data

async function refreshAll() {
  const result = await api("/api/watchers");
  if (!result.ok) {
    say(result.body ? result.body.reason : "cannot read /api/watchers (" + result.status + ")");
    return;
  }
  const names = result.body.watchers.map((w) => w.name);
  for (const name of [...state.watchers.keys()]) {
    if (!names.includes(name)) state.watchers.delete(name);
  }
  for (const summary of result.body.watchers) {
    if (!state.watchers.has(summary.name)) {
      state.watchers.set(summary.name, { summary, detail: null, page: 0, logs: null,
                                         expanded: names.length <= COLLAPSE_OVER });
    }
    state.watchers.get(summary.name).summary = summary;
  }
  state.order = names;
  const ready = result.body.watchers.reduce((n, w) => n + w.ready, 0);
  const desired = result.body.watchers.reduce((n, w) => n + w.numprocesses, 0);
  document.getElementById("summary").textContent =
    `${names.length} watchers, ${ready}/${desired} workers ready`;
  await Promise.all(names.map((name) => refreshWatcher(name)));
  renderAll();
}

async function refreshWatcher(name) {
  const entry = state.watchers.get(name);
  if (!entry) return;
  const offset = entry.page * PAGE;
  const result = await api(`/api/watchers/${encodeURIComponent(name)}?offset=${offset}&limit=${PAGE}`);
  if (result.ok) {
    entry.detail = result.body.watcher;
    entry.summary = Object.assign({}, entry.summary, {
      state: entry.detail.state, ready: entry.detail.ready,
      numprocesses: entry.detail.numprocesses, generation: entry.detail.generation });
  }
  // What workers write needs the token (it is as private as `sockvisorctl
  // logs`); without one the card says so instead of asking and failing.
  if (entry.expanded && state.authorized) {
    const logs = await api(`/api/watchers/${encodeURIComponent(name)}/logs?lines=30`);
    if (logs.ok) entry.logs = logs.body;
  }
  entry.dirty = true;
}

function schedule(name) {
  // Coalesce: many events for one watcher within 150 ms -> one re-read.
  state.pending.add(name);
  if (state.timer) return;
  state.timer = setTimeout(async () => {
    const names = [...state.pending];
    state.pending.clear();
    state.timer = null;
    if (names.some((n) => !state.watchers.has(n))) {
      await refreshAll();
      return;
    }
    await Promise.all(names.map(refreshWatcher));
    renderAll();
  }, 150);
}

async function pollSockets() {
  const result = await api("/api/sockets");
  if (result.ok) {
    for (const sock of result.body.sockets) {
      const points = state.spark.get(sock.name) || [];
      points.push(sock.accept_queue === null ? 0 : sock.accept_queue);
      while (points.length > SPARK_POINTS) points.shift();
      state.spark.set(sock.name, points);
    }
    renderSockets(result.body.sockets);
  }
}

// ---------------------------------------------------------------- events

let eventsAbort = null;

function restartEvents() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = new AbortController();
  streamEvents(eventsAbort.signal);
}

async function streamEvents(signal) {
  const live = document.getElementById("live");
  while (!signal.aborted) {
    try {
      const response = await fetch("/api/events", { headers: headers(), signal,
                                                     cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      live.textContent = "events: live";
      live.className = "live on";
      // Whatever happened while we were away: read it all again.
      refreshAll();
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handleMessage(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    live.textContent = "events: reconnecting";
    live.className = "live off";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function handleMessage(block) {
  let kind = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (kind === "overflow") { refreshAll(); return; }
  if (!data) return;
  let message;
  try { message = JSON.parse(data); } catch (e) { return; }
  const topic = message.topic || "";
  if (!topic.startsWith("watcher.")) return;
  // watcher.NAME.what or watcher.NAME.reload.what; NAME may hold dots.
  const rest = topic.slice("watcher.".length);
  const reload = rest.lastIndexOf(".reload.");
  const name = reload >= 0 ? rest.slice(0, reload) : rest.slice(0, rest.lastIndexOf("."));
  if (reload >= 0) {
    const entry = state.watchers.get(name);
    const what = rest.slice(reload + ".reload.".length);
    if (entry && what === "started") entry.reloadFrom = entry.summary.generation;
    if (entry && what === "aborted") say(`reload of ${name} aborted: ${message.data.reason}`);
  }
  schedule(name);
}

// ---------------------------------------------------------------- actions

async function act(name, action, body) {
  say(`${action} ${name}…`, true);
  const result = await api(`/api/watchers/${encodeURIComponent(name)}/${action}`, {
    method: "POST", headers: Object.assign({ "Content-Type": "application/json" }, headers()),
    body: JSON.stringify(body || {}) });
  if (result.ok) say(`${action} ${name}: done`, true);
  else say(`${action} ${name}: ${result.body ? result.body.reason : "HTTP " + result.status}`);
  schedule(name);
}

function actionButtons(name, detail) {
  if (!state.authorized) return null;
  const button = (label, action, body, title) =>
    el("button", { type: "button", dataset: { action }, title: title || action,
                   onclick: (event) => { event.stopPropagation(); act(name, action, body); } },
       label);
  const signalSelect = el("select", { "aria-label": "signal", onclick: (e) => e.stopPropagation() },
    ["HUP", "USR1", "USR2", "TERM"].map((s) => el("option", { value: s }, s)));
  return el("div", { class: "actions" },
    button("reload", "reload", {}, "rolling reload: zero downtime"),
    button("restart", "restart"),
    detail && detail.state === "stopped" ? button("start", "start") : button("stop", "stop"),
    button("+1", "incr", { nb: 1 }, "one more worker"),
    button("−1", "decr", { nb: 1 }, "one worker less"),
    signalSelect,
    el("button", { type: "button", dataset: { action: "signal" },
                   onclick: (event) => { event.stopPropagation();
                                         act(name, "signal", { signum: signalSelect.value }); } },
       "signal"));
}

// ---------------------------------------------------------------- rendering

function renderAll() {
  const box = document.getElementById("watchers");
  const cards = new Map([...box.children].map((card) => [card.dataset.watcher, card]));
  let previous = null;
  for (const name of state.order) {
    const entry = state.watchers.get(name);
    let card = cards.get(name);
    if (!card || entry.dirty) {
      const fresh = renderWatcher(name, entry);
      if (card) card.replaceWith(fresh); else box.append(fresh);
      card = fresh;
      entry.dirty = false;
    }
    if (previous ? previous.nextSibling !== card : box.firstChild !== card) {
      if (previous) previous.after(card); else box.prepend(card);
    }
    previous = card;
    cards.delete(name);
  }
  for (const card of cards.values()) card.remove();
}

function reloadProgress(entry, detail) {
  if (detail.state !== "reloading") return null;
  const target = detail.numprocesses || 1;
  const batch = detail.reload_batch || target;
  const batches = Math.ceil(target / batch);
  const fresh = (detail.generations[String(detail.generation)] || { ready: 0 }).ready;
  const current = Math.min(batches, Math.floor(fresh / batch) + 1);
  const from = entry.reloadFrom !== undefined && entry.reloadFrom !== detail.generation
    ? entry.reloadFrom : detail.generation - 1;
  const percent = Math.min(100, Math.round(100 * fresh / target));
  const fill = el("div", {});
  fill.style.width = percent + "%";   // CSSOM, not a style attribute: CSP allows it
  return el("div", { class: "progress" },
    el("div", {}, `reload: generation ${from} → ${detail.generation}, batch ${current} of ${batches}, `
                  + `${fresh}/${target} new workers ready`),
    el("div", { class: "bar" }, fill));
}

function renderWatcher(name, entry) {
  const detail = entry.detail || Object.assign({ workers: [], generations: {} }, entry.summary);
  const head = el("div", { class: "card-head",
                           onclick: () => { entry.expanded = !entry.expanded; entry.dirty = true;
                                            if (entry.expanded) schedule(name); renderAll(); } },
    el("h3", {}, name),
    el("span", { class: "badge " + detail.state }, detail.state),
    el("span", { class: "facts" },
       `${detail.ready}/${detail.numprocesses} ready · generation `,
       el("span", { class: "generation" }, detail.generation),
       detail.restarts !== undefined ? ` · ${detail.restarts} restarts` : "",
       detail.backoff !== undefined ? ` · next start in ${detail.backoff}s` : ""),
    actionButtons(name, detail));
  const body = el("div", { class: "body" + (entry.expanded ? "" : " collapsed") });
  if (detail.fatal_reason) body.append(el("div", { class: "fatal" }, "FATAL: " + detail.fatal_reason));
  const progress = reloadProgress(entry, detail);
  if (progress) body.append(progress);
  const gens = Object.entries(detail.generations || {});
  if (gens.length > 1 || (detail.workers_total || 0) > PAGE) {
    body.append(el("div", { class: "gens" }, gens.map(([g, c]) =>
      `generation ${g}: ${c.ready}/${c.workers} ready`).join(" · ")));
  }
  if (entry.expanded) {
    body.append(...[workersTable(detail), pager(name, entry, detail), outputBox(entry)]
      .filter((node) => node));
  }
  return el("div", { class: "card state-" + detail.state, dataset: { watcher: name } }, head, body);
}

function workersTable(detail) {
  const rows = (detail.workers || []).map((w) =>
    el("tr", { class: "worker", dataset: { pid: w.pid, wid: w.wid, generation: w.generation } },
      el("td", { class: "num pid" }, w.pid), el("td", { class: "num" }, w.wid),
      el("td", { class: "num" }, w.generation),
      el("td", {}, el("span", { class: "badge " + w.state }, w.state)),
      el("td", {}, w.ready ? "yes" : "no"), el("td", { class: "num" }, seconds(w.uptime)),
      el("td", { class: "num" }, w.restarts),
      el("td", { class: "num" }, w.cpu_seconds === null ? "–" : w.cpu_seconds.toFixed(2)),
      el("td", { class: "num" }, mib(w.rss_bytes)),
      el("td", { class: "num" }, w.processes === null ? "–" : w.processes),
      el("td", { class: "muted" }, w.status || "")));
  return el("table", { class: "workers" },
    el("thead", {}, el("tr", {}, ["pid", "wid", "gen", "state", "ready", "uptime", "restarts",
                                  "CPU s", "RSS MiB", "procs", "status"].map((h, i) =>
      el("th", { class: i < 3 || (i > 4 && i < 10) ? "num" : "" }, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 11, class: "muted" },
                                                         "no workers"))));
}

function pager(name, entry, detail) {
  const total = detail.workers_total || 0;
  if (total <= PAGE) return null;
  const pages = Math.ceil(total / PAGE);
  const go = (page) => (event) => {
    event.stopPropagation();
    entry.page = Math.max(0, Math.min(pages - 1, page));
    schedule(name);
  };
  return el("div", { class: "pager" },
    el("button", { type: "button", onclick: go(entry.page - 1), disabled: entry.page === 0 }, "‹"),
    `workers ${entry.page * PAGE + 1}–${Math.min(total, (entry.page + 1) * PAGE)} of ${total}`,
    el("button", { type: "button", onclick: go(entry.page + 1),
                   disabled: entry.page >= pages - 1 }, "›"));
}

function outputBox(entry) {
  if (!state.authorized) {
    return el("div", { class: "muted output-locked" },
              "output: needs the token (what workers write is shown to token holders only)");
  }
  const logs = entry.logs;
  if (!logs) return null;
  return el("pre", { class: "output" }, logs.lines.length
    ? logs.lines.map((l) => el("div", { class: l.stream }, `[${l.pid}] ${l.line}`))
    : el("span", { class: "muted" }, "no output yet"));
}

function sparkline(points, limit) {
  const width = 160, height = 24;
  const top = Math.max(1, ...points);
  const step = width / Math.max(1, SPARK_POINTS - 1);
  const offset = SPARK_POINTS - points.length;
  const y = (v) => (height - 1 - (v / top) * (height - 2)).toFixed(1);
  const coords = points.map((v, i) => `${((offset + i) * step).toFixed(1)},${y(v)}`);
  if (points.length === 1) coords.unshift(`${((offset - 1) * step).toFixed(1)},${y(points[0])}`);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.append(line);
  const title = document.createElementNS(ns, "title");
  title.textContent = `max ${Math.max(0, ...points)} in the last ${points.length * 2}s (limit ${limit})`;
  svg.append(title);
  return svg;
}

function renderSockets(sockets) {
  const body = document.querySelector("#sockets tbody");
  body.replaceChildren(...sockets.map((s) => el("tr", { dataset: { socket: s.name } },
    el("td", {}, s.name), el("td", {}, s.address), el("td", {}, s.watchers.join(", ")),
    el("td", { class: "num queue" }, s.accept_queue === null ? "?"
                                     : `${s.accept_queue} / ${s.accept_queue_limit}`),
    el("td", {}, sparkline(state.spark.get(s.name) || [], s.accept_queue_limit)))));
}

// ---------------------------------------------------------------- start

async function main() {
  await checkToken();
  if (state.readNeedsToken && !state.authorized) {
    say("this console needs the token even to read: paste it above");
  }
  restartEvents();
  pollSockets();
  setInterval(pollSockets, SOCKET_POLL_MS);
  setInterval(() => { if (document.visibilityState === "visible") refreshAll(); }, REFRESH_MS);
}

main();
