// The tether dashboard: one page over the HTTP API of the server that serves it.
//
// It asks for an API key (kept in this tab's sessionStorage, sent as a header, never in a
// URL), then polls /v1/health, /v1/registry and /metrics every two seconds, and follows
// the connection event feed: the newest events of /v1/events first, then /v1/bus as a
// Server-Sent Events stream read with fetch() (EventSource cannot send the key). Everything
// shown is set as text, never as HTML.

const KEY_STORE = "tether:dashboard:apiKey";
const TICK_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;
const MAX_EVENTS = 200;
const FIRST_EVENTS = 50;
/** Events after which a connection no longer exists under its id. */
const ENDED = new Set(["disconnected", "forced", "evicted", "expired", "migrated"]);

const $ = (sel) => document.querySelector(sel);

const state = {
  key: null,
  timer: null,
  ticking: false,
  feed: null, // AbortController of the bus stream
  feedRetryMs: 1000,
  filter: "",
  pageSize: 25,
  cursors: [null], // the `after` of each page seen; the last is the current page's
  next: null,
  seqs: new Set(), // event seqs shown
  samples: [], // {t, connects, open}
  eventConnects: 0, // `connected` events seen, for a rate when /metrics cannot be read
  refreshSoon: null,
};

// ---- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", text = false } = {}) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.key}` },
    cache: "no-store",
  });
  if (!res.ok) {
    let code = "";
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      code = body.error?.code ?? "";
      message = body.error?.message ?? message;
    } catch { /* not JSON */ }
    throw new ApiError(res.status, code, message);
  }
  if (res.status === 204) return null;
  return text ? res.text() : res.json();
}

function notice(text, ok = false) {
  const el = $("#notice");
  el.textContent = text;
  el.classList.toggle("ok", ok);
  el.hidden = !text;
}

// ---- signing in and out ----------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    await api("/v1/health");
  } catch (e) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    if (e.status === 401) notice("This API key is not valid for this server.");
    else if (e.status === 403) notice("This API key cannot read: it needs the read (or admin) permission.");
    else notice(`Cannot sign in: ${e.message}`);
    return false;
  }
  sessionStorage.setItem(KEY_STORE, key);
  notice("");
  $("#signin-panel").hidden = true;
  $("#main").hidden = false;
  $("#sign-out").hidden = false;
  const who = $("#who");
  who.textContent = `key ${key.slice(0, 6)}…`;
  who.hidden = false;
  $("#api-key").value = "";
  state.samples = [];
  state.seqs.clear();
  $("#events").replaceChildren();
  startFeed();
  tick();
  state.timer = setInterval(tick, TICK_MS);
  return true;
}

function signOut(message = "") {
  clearInterval(state.timer);
  state.timer = null;
  state.feed?.abort();
  state.feed = null;
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  $("#main").hidden = true;
  $("#signin-panel").hidden = false;
  $("#sign-out").hidden = true;
  $("#who").hidden = true;
  notice(message);
}

/** A 401 in the middle of things: the key was revoked (or the server's secrets changed). */
function handleAuthLoss(e) {
  if (e instanceof ApiError && e.status === 401) {
    signOut("The server no longer accepts this API key.");
    return true;
  }
  return false;
}

// ---- polling ---------------------------------------------------------------------------

async function tick() {
  if (state.ticking || !state.key) return;
  state.ticking = true;
  try {
    const [health, metrics] = await Promise.all([
      api("/v1/health"),
      api("/metrics", { text: true }).catch(() => null),
      refreshTable(),
    ]);
    showHealth(health);
    sample(health, metrics);
  } catch (e) {
    if (!handleAuthLoss(e)) notice(`The server did not answer: ${e.message}`);
  } finally {
    state.ticking = false;
  }
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function showHealth(h) {
  for (const el of document.querySelectorAll("[data-health]")) {
    const name = el.dataset.health;
    const v = h[name];
    if (name === "memoryUsage") el.textContent = formatBytes(v);
    else if (name === "nodes") el.textContent = String(v ?? 1);
    else if (v && typeof v === "object") {
      const parts = Object.entries(v).map(([k, n]) => `${k} ${n}`);
      el.textContent = parts.length ? parts.join(" · ") : "none";
    } else el.textContent = v === undefined ? "–" : String(v);
  }
}

// ---- the connections table ---------------------------------------------------------------

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  td.title = text;
  if (cls) td.className = cls;
  return td;
}

function row(c) {
  const tr = document.createElement("tr");
  tr.dataset.connectionId = c.connectionId;
  tr.dataset.userId = c.userId;
  const since = cell(`${ago(Date.now() - Date.parse(c.connectedAt))} ago`);
  since.title = c.connectedAt;
  tr.append(
    cell(c.userId, "user"),
    cell(c.state, `state state-${c.state}`),
    cell(c.metadata?.connectionType ?? "–", "type"),
    cell(c.node ?? "–", "node"),
    cell(c.metadata?.clientVersion ?? "–", "version"),
    since,
  );
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.dataset.action = "disconnect";
  b.textContent = "Disconnect";
  b.title = `close ${c.connectionId} with 4506`;
  b.addEventListener("click", () => disconnect(c));
  td.append(b);
  tr.append(td);
  return tr;
}

async function refreshTable() {
  const after = state.cursors[state.cursors.length - 1];
  const q = new URLSearchParams({ limit: String(state.pageSize) });
  if (state.filter) q.set("userId", state.filter);
  if (after) q.set("after", after);
  const filter = state.filter;
  const page = await api(`/v1/registry?${q}`);
  if (filter !== state.filter) return; // a newer filter is on its way
  state.next = page.next;
  $("#connections tbody").replaceChildren(...page.connections.map(row));
  $("#empty").hidden = page.connections.length > 0;
  const n = state.cursors.length;
  $("#page-info").textContent = `page ${n}`;
  $("#prev-page").disabled = n <= 1;
  $("#next-page").disabled = !page.next;
}

/** The table again shortly (coalesced), after an event that changes it. */
function refreshSoon() {
  if (state.refreshSoon) return;
  state.refreshSoon = setTimeout(() => {
    state.refreshSoon = null;
    if (state.key) refreshTable().catch(handleAuthLoss);
  }, 250);
}

function removeRow(id) {
  document.querySelector(`#connections tr[data-connection-id="${CSS.escape(id)}"]`)?.remove();
  $("#empty").hidden = document.querySelector("#connections tbody tr") !== null;
}

async function disconnect(c) {
  const ok = window.confirm(
    `Disconnect ${c.userId}'s connection ${c.connectionId}?\n\nIt is closed with 4506 and will not reconnect by itself.`,
  );
  if (!ok) return;
  try {
    await api(`/v1/connections/${encodeURIComponent(c.connectionId)}?reason=${encodeURIComponent("disconnected from the dashboard")}`, { method: "DELETE" });
    removeRow(c.connectionId);
    notice(`Disconnected ${c.userId} (${c.connectionId}).`, true);
  } catch (e) {
    if (handleAuthLoss(e)) return;
    if (e.status === 403) {
      notice("Refused: this API key lacks the admin permission, which disconnecting needs.");
    } else if (e.status === 404) {
      removeRow(c.connectionId);
      notice(`That connection had already ended.`, true);
    } else {
      notice(`Could not disconnect: ${e.message}`);
    }
  }
}

function setFilter(value) {
  state.filter = value.trim();
  state.cursors = [null];
  refreshTable().catch(handleAuthLoss);
}

// ---- the event feed ----------------------------------------------------------------------

function addEvent(e, fresh) {
  if (!e || !Number.isFinite(e.seq) || state.seqs.has(e.seq)) return;
  state.seqs.add(e.seq);
  const li = document.createElement("li");
  li.dataset.seq = String(e.seq);
  li.dataset.eventType = e.eventType;
  const time = document.createElement("span");
  time.className = "time";
  const at = new Date(e.timestamp);
  time.textContent = at.toLocaleTimeString([], { hour12: false });
  time.title = e.timestamp;
  const type = document.createElement("span");
  type.className = "event-type";
  type.textContent = e.eventType;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = `${e.userId} · ${String(e.connectionId).slice(0, 8)}`;
  who.title = `${e.userId} ${e.connectionId}\n${JSON.stringify(e.details)}`;
  li.append(time, type, who);
  if (fresh) li.classList.add("fresh");
  // Newest first: before the first shown event with a lower seq.
  const list = $("#events");
  let before = null;
  for (const other of list.children) {
    if (Number(other.dataset.seq) < e.seq) { before = other; break; }
  }
  list.insertBefore(li, before);
  while (list.children.length > MAX_EVENTS) {
    state.seqs.delete(Number(list.lastElementChild.dataset.seq));
    list.lastElementChild.remove();
  }
  if (fresh) {
    if (e.eventType === "connected") state.eventConnects++;
    if (ENDED.has(e.eventType)) removeRow(e.connectionId);
    refreshSoon();
  }
}

async function startFeed() {
  const ctrl = new AbortController();
  state.feed = ctrl;
  const status = $("#feed-state");
  try {
    const res = await fetch("/v1/bus?channels=connection:events", {
      headers: { authorization: `Bearer ${state.key}`, accept: "text/event-stream" },
      signal: ctrl.signal,
      cache: "no-store",
    });
    if (!res.ok || !res.body) throw new ApiError(res.status, "", `the event stream answered ${res.status}`);
    status.textContent = "live";
    state.feedRetryMs = 1000;
    // The newest events of the log, now that nothing new can be missed.
    api(`/v1/events?limit=${FIRST_EVENTS}`)
      .then((events) => events.forEach((e) => addEvent(e, false)))
      .catch(handleAuthLoss);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        onSse(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
    throw new Error("the event stream ended");
  } catch (e) {
    if (ctrl.signal.aborted || state.feed !== ctrl) return;
    if (handleAuthLoss(e)) return;
    status.textContent = "reconnecting…";
    const wait = state.feedRetryMs;
    state.feedRetryMs = Math.min(wait * 2, 15000);
    setTimeout(() => { if (state.feed === ctrl) startFeed(); }, wait);
  }
}

/** One Server-Sent Event block. */
function onSse(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  if (event === "connection:events") {
    try { addEvent(JSON.parse(data.join("\n")), true); } catch { /* not JSON */ }
  } else if (event === "lagged") {
    $("#feed-state").textContent = "live (some events were skipped: the page fell behind)";
  }
}

// ---- the charts ---------------------------------------------------------------------------

function metric(text, name) {
  const m = text?.match(new RegExp(`^${name} ([0-9.eE+-]+)$`, "m"));
  return m ? Number(m[1]) : null;
}

function sample(health, metricsText) {
  const t = Date.now();
  let connects = metric(metricsText, "tether_connects_total");
  if (connects === null) connects = state.eventConnects;
  state.samples.push({ t, connects, open: health.activeConnections ?? 0 });
  while (state.samples.length && state.samples[0].t < t - WINDOW_MS) state.samples.shift();
  const rates = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1];
    const b = state.samples[i];
    rates.push({ t: b.t, v: Math.max(0, (b.connects - a.connects) / ((b.t - a.t) / 1000)) });
  }
  const open = state.samples.map((s) => ({ t: s.t, v: s.open }));
  draw($("#chart-connects"), rates, t, (v) => v.toFixed(1));
  draw($("#chart-open"), open, t, (v) => String(Math.round(v)));
  $("#rate-now").textContent = rates.length ? `${rates.at(-1).v.toFixed(1)}/s` : "";
  $("#open-now").textContent = String(health.activeConnections ?? 0);
}

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** How far back the charts reach: what has been sampled, at least MIN_SPAN_MS, at most
 * WINDOW_MS. */
const MIN_SPAN_MS = 30 * 1000;

function spanLabel(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? `−${s} s` : `−${Math.round(s / 60)} min`;
}

/** A line over the last minutes, scaled to its maximum, with its scales written in. */
function draw(svg, points, now, label) {
  const W = 600, H = 120, PAD = 6;
  const first = state.samples.length ? state.samples[0].t : now;
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
  const max = Math.max(1, ...points.map((p) => p.v));
  const x = (t) => ((t - (now - span)) / span) * W;
  const y = (v) => H - PAD - (v / max) * (H - 2 * PAD);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    parts.push(svgEl("line", { class: "grid", x1: 0, x2: W, y1: y(max * f), y2: y(max * f) }));
  }
  const text = (x, y, anchor, s) => {
    const el = svgEl("text", { x, y, "text-anchor": anchor });
    el.textContent = s;
    parts.push(el);
  };
  text(4, 14, "start", label(max));
  text(4, H - 2, "start", spanLabel(span));
  text(W - 4, H - 2, "end", "now");
  if (points.length) {
    parts.push(svgEl("polyline", {
      class: "line",
      points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "),
    }));
  }
  svg.replaceChildren(...parts);
}

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("#window-minutes").textContent = String(WINDOW_MS / 60000);
  $("#signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) signIn(key);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  let debounce = null;
  $("#user-filter").addEventListener("input", (ev) => {
    clearTimeout(debounce);
    debounce = setTimeout(() => setFilter(ev.target.value), 200);
  });
  $("#next-page").addEventListener("click", () => {
    if (!state.next) return;
    state.cursors.push(state.next);
    refreshTable().catch(handleAuthLoss);
  });
  $("#prev-page").addEventListener("click", () => {
    if (state.cursors.length <= 1) return;
    state.cursors.pop();
    refreshTable().catch(handleAuthLoss);
  });
  const size = new URLSearchParams(location.search).get("pageSize");
  if (size && Number(size) >= 1 && Number(size) <= 1000) state.pageSize = Math.floor(Number(size));
  const kept = sessionStorage.getItem(KEY_STORE);
  if (kept) signIn(kept);
  document.body.dataset.ready = "true";
}

wire();
