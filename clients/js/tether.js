// tether-client: the JavaScript client of tether's WebSocket protocol (docs/protocol.md).
//
// One class, TetherClient, and two small pure functions it is built on: `backoff` (the
// delay before a reconnect) and `shouldReconnect` (what a close code tells a client to do).
// No dependencies; runs as it is in a browser (<script type="module">) and in Node.js 20+
// (with `--experimental-websocket` on Node 20 and 21, or a `WebSocket` option).

/** Close codes after which the client reconnects and resumes (besides 4000–4499). */
const RECONNECT_CODES = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/**
 * Whether a close code means "reconnect and resume" (SPEC §4): 1001, 1006, 1013 and every
 * 4000–4499 code do, as do the other codes a transient failure produces (1005 no status,
 * 1011 server error, 1012 restart, 1014 bad gateway). 1000, 1009, every 4500–4999 code and
 * anything else do not: those need the user (a new credential, a new page) first.
 */
export function shouldReconnect(code) {
  if (code >= 4000 && code <= 4499) return true;
  return RECONNECT_CODES.has(code);
}

/**
 * Full-jitter exponential backoff: a delay in ms, uniform in
 * [0, min(capMs, baseMs · 2^attempt)). `attempt` counts from 0 (the first reconnect).
 */
export function backoff(attempt, { baseMs = 500, capMs = 20000, random = Math.random } = {}) {
  const n = Number.isFinite(attempt) && attempt > 0 ? Math.floor(attempt) : 0;
  const ceiling = Math.min(capMs, baseMs * 2 ** n);
  return Math.floor(random() * ceiling);
}

/** A refused request (`error` frame), or one that could not be sent or answered. */
export class TetherError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "TetherError";
    /** The server's error code (`rate_limited`, `no_session`, …) or one of the client's:
     * `connection_lost`, `not_connected`, `closed`, `too_large`. */
    this.code = code;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.frame !== undefined) this.frame = extra.frame;
  }
}

const JWT_SHAPE = /^[^.\s]+\.[^.\s]+\.[^.\s]*$/;
const EVENTS = new Set(["message", "session", "state", "closed"]);
/** How long a socket that reported `error` may take to report `close` before we stop waiting
 * (Node 20's WebSocket reports only `error` when a handshake fails). */
const ERROR_CLOSE_GRACE_MS = 250;
/** setTimeout's largest delay; a refresh further away is re-armed when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => void m.set(k, String(v)),
    removeItem: (k) => void m.delete(k),
  };
}

/**
 * A connection to a tether server that stays connected: it reconnects with backoff, resumes
 * its identity with the messages it missed, delivers each seq once and in order, refreshes
 * its JWT, and notices a silent socket.
 */
export class TetherClient {
  #url;
  #opts;
  #WebSocket;
  #storage;
  #storageKey;
  #listeners = new Map();

  // Identity and position, as the latest welcome gave them (and storage kept).
  #connectionId = null;
  #resumeToken = null;
  #userId = null;
  #sessionId = null;
  #lastSeq = 0;
  /** Whether #connectionId/#resumeToken still name a connection the server may resume. */
  #resumable = false;

  #state = "idle";
  #ws = null;
  /** Sockets given up on without a close frame (a close frame would end the connection the
   * server may still be keeping for us); closed once a newer socket has its welcome. */
  #abandoned = new Set();
  #gen = 0;
  #attempt = 0;
  #connectWaiters = [];
  #closePromise = null;

  // Per socket.
  #welcome = null;
  #disconnect = null;
  #lastReceived = 0;
  #pingSentAt = 0;
  #ackedSeq = 0;
  #expiresAt = 0;
  #credentialKind = null;
  #timers = {
    reconnect: null,
    connect: null,
    heartbeat: null,
    ack: null,
    refresh: null,
    stable: null,
    errorGrace: null,
  };

  #nextId = 1;
  /** id → {resolve, reject, frame, sent, answer}; `answer` is the frame type that settles it. */
  #pending = new Map();

  /**
   * @param {string|URL} url  the server's WebSocket endpoint, e.g. "wss://example.com/ws"
   * @param {object} options  see tether.d.ts
   */
  constructor(url, options = {}) {
    this.#url = String(url);
    this.#opts = {
      backoffBaseMs: 500,
      backoffCapMs: 20000,
      stableAfterMs: 10000,
      ackIntervalMs: 2000,
      connectTimeoutMs: 10000,
    };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.#opts[k] = v;
    if (typeof this.#opts.token !== "function" && typeof this.#opts.token !== "string"
      && typeof this.#opts.sessionId !== "function" && typeof this.#opts.sessionId !== "string") {
      throw new TypeError("TetherClient needs a `token` (async () => jwt) or a `sessionId` option");
    }
    this.#WebSocket = this.#opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket here: pass the `WebSocket` option, or run Node 20/21 with --experimental-websocket",
      );
    }
    this.#storage = this.#opts.storage ?? memoryStorage();
    this.#storageKey = this.#opts.storageKey ?? `tether:${this.#url}`;
    this.#load();
  }

  /** The current connection id (it changes on every resume: keep reading it from here). */
  get connectionId() { return this.#connectionId; }
  get userId() { return this.#userId; }
  get sessionId() { return this.#sessionId; }
  /** The seq of the last `message` or `session.updated` delivered. */
  get lastSeq() { return this.#lastSeq; }

  on(event, fn) {
    if (!EVENTS.has(event)) throw new TypeError(`unknown event ${JSON.stringify(event)}`);
    if (!this.#listeners.has(event)) this.#listeners.set(event, []);
    this.#listeners.get(event).push(fn);
    return this;
  }

  off(event, fn) {
    const list = this.#listeners.get(event);
    if (list) {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    }
    return this;
  }

  /** Connects (or, with stored state, resumes). Resolves with the first `welcome` frame;
   * rejects if the client closes for good first (a 45xx code, or close()). */
  connect() {
    if (this.#state === "open") return Promise.resolve(this.#welcome);
    const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === "idle" || this.#state === "closed") {
      this.#attempt = 0;
      this.#closePromise = null;
      this.#setState("connecting", { attempt: 0 });
      this.#open();
    }
    return p;
  }

  /** Merges `updates` into the linked session. Resolves on the server's `ack` (the update is
   * durable and published then); rejects with a TetherError on its `error` frame. */
  updateSession(updates) {
    if (updates === null || typeof updates !== "object" || Array.isArray(updates)) {
      return Promise.reject(new TypeError("updateSession takes an object"));
    }
    return this.#request({ type: "session.update", updates }, "ack");
  }

  /** A `ping` frame; resolves with the round trip in ms when its `pong` arrives. */
  ping() {
    const started = Date.now();
    return this.#request({ type: "ping" }, "pong").then(() => Date.now() - started);
  }

  /** Acks what was delivered, closes with 1000 (the server then forgets the connection) and
   * stops every timer. Resolves once the socket is closed. */
  close() {
    if (this.#closePromise) return this.#closePromise;
    const ws = this.#ws;
    this.#gen++;
    this.#clearTimers();
    let closed = Promise.resolve();
    if (ws) {
      this.#detach(ws);
      this.#ws = null;
      if (ws.readyState === 1) this.#sendAck(ws);
      closed = new Promise((resolve) => {
        if (ws.readyState === 3) return resolve();
        const done = () => { clearTimeout(t); resolve(); };
        const t = setTimeout(done, 2000);
        ws.addEventListener("close", done);
        ws.addEventListener("error", done);
      });
      try { ws.close(1000, "client closed"); } catch { /* already closing */ }
    }
    this.#closeAbandoned();
    const wasActive = this.#state !== "idle" && this.#state !== "closed";
    this.#forget();
    this.#finish(1000, "client closed", wasActive);
    this.#closePromise = closed;
    return closed;
  }

  // ---- connecting -------------------------------------------------------------------

  async #open() {
    const gen = ++this.#gen;
    let cred;
    try {
      cred = await this.#credential();
    } catch (error) {
      if (gen !== this.#gen) return;
      this.#retry(1006, "token() failed", { error });
      return;
    }
    if (gen !== this.#gen) return;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#retry(1006, "cannot open a WebSocket", { error });
      return;
    }
    this.#ws = ws;
    this.#welcome = null;
    this.#disconnect = null;
    this.#credentialKind = cred.kind;
    this.#timers.connect = setTimeout(() => {
      // No welcome in time. A socket that never opened is dropped quietly; one that did is
      // closed (it may also be half way through a resume the server never finished).
      if (ws !== this.#ws) return;
      this.#detach(ws);
      try { ws.close(); } catch { /* ignore */ }
      this.#dropped(1006, "timed out waiting for welcome");
    }, this.#opts.connectTimeoutMs);

    ws.addEventListener("open", () => {
      if (ws !== this.#ws) return;
      const auth = { type: "auth" };
      auth[cred.kind === "session" ? "sessionId" : "token"] = cred.value;
      if (this.#resumable && this.#connectionId && this.#resumeToken) {
        auth.resume = {
          connectionId: this.#connectionId,
          token: this.#resumeToken,
          lastSeq: this.#lastSeq,
        };
      }
      ws.send(JSON.stringify(auth));
    });
    ws.addEventListener("message", (ev) => {
      if (ws === this.#ws) this.#onFrame(ws, ev.data);
    });
    ws.addEventListener("close", (ev) => {
      if (ws !== this.#ws) return;
      this.#detach(ws);
      this.#dropped(ev.code, ev.reason);
    });
    ws.addEventListener("error", () => {
      if (ws !== this.#ws || this.#timers.errorGrace) return;
      this.#timers.errorGrace = setTimeout(() => {
        this.#timers.errorGrace = null;
        if (ws !== this.#ws) return;
        this.#detach(ws);
        try { ws.close(); } catch { /* ignore */ }
        this.#dropped(1006, "");
      }, ERROR_CLOSE_GRACE_MS);
    });
  }

  /** The credential to present now: `token()` called afresh, or the session id. */
  async #credential() {
    const { token, sessionId } = this.#opts;
    if (token !== undefined) {
      const value = typeof token === "function" ? await token() : token;
      if (typeof value !== "string" || value === "") throw new TypeError("token() gave no string");
      if (JWT_SHAPE.test(value)) return { kind: "jwt", value };
      if (value.startsWith("tk_")) return { kind: "apikey", value };
      return { kind: "session", value };
    }
    const value = typeof sessionId === "function" ? await sessionId() : sessionId;
    if (typeof value !== "string" || value === "") throw new TypeError("sessionId gave no string");
    return { kind: "session", value };
  }

  /** Stops listening to a socket without closing it. */
  #detach(ws) {
    clearTimeout(this.#timers.errorGrace);
    this.#timers.errorGrace = null;
    if (ws === this.#ws) this.#ws = null;
  }

  #closeAbandoned() {
    for (const ws of this.#abandoned) {
      try { ws.close(1000, "replaced"); } catch { /* ignore */ }
    }
    this.#abandoned.clear();
  }

  /** The current socket ended (or was given up on) with `code`. */
  #dropped(code, reason) {
    // A `disconnect` frame says why even when its close frame was lost.
    if ((code === 1005 || code === 1006) && this.#disconnect) {
      code = this.#disconnect.code;
      reason = this.#disconnect.reason;
    }
    this.#clearSocketTimers();
    this.#failSent(new TetherError("connection_lost",
      "the connection was lost before the server answered; the request may or may not have been applied",
      { closeCode: code }));
    if (this.#state === "closed" || this.#state === "idle") return;
    if (shouldReconnect(code)) {
      this.#retry(code, reason);
    } else {
      if (code !== 4507) this.#forget();
      this.#resumable = false;
      this.#closeAbandoned();
      this.#finish(code, reason, true);
    }
  }

  #retry(code, reason, extra = {}) {
    const attempt = this.#attempt++;
    const delayMs = backoff(attempt, {
      baseMs: this.#opts.backoffBaseMs,
      capMs: this.#opts.backoffCapMs,
    });
    this.#setState("reconnecting", { code, reason, attempt, delayMs, ...extra });
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = setTimeout(() => {
      this.#timers.reconnect = null;
      this.#open();
    }, delayMs);
  }

  /** The end: no more reconnects. */
  #finish(code, reason, emit) {
    this.#clearTimers();
    const error = new TetherError("closed", `closed: ${code} ${reason}`, { closeCode: code });
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      p.reject(error);
    }
    const waiters = this.#connectWaiters.splice(0);
    for (const w of waiters) w.reject(error);
    if (!emit) {
      this.#state = "closed";
      return;
    }
    this.#setState("closed", { code, reason });
    this.#emit("closed", { code, reason });
  }

  // ---- frames -----------------------------------------------------------------------

  #onFrame(ws, text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (f === null || typeof f !== "object") return;
    this.#lastReceived = Date.now();
    this.#pingSentAt = 0;
    switch (f.type) {
      case "welcome": return this.#onWelcome(ws, f);
      case "message": return this.#deliver(f, "message", f.data);
      case "session.updated": return this.#deliver(f, "session", f.updates);
      case "pong":
      case "ack":
        return this.#settle(f.id, f.type, (p) => p.resolve(f));
      case "refreshed":
        this.#expiresAt = Date.parse(f.expiresAt) || this.#expiresAt;
        this.#scheduleRefresh();
        return this.#settle(f.id, f.type, (p) => p.resolve(f));
      case "error":
        return this.#settle(f.id, null, (p) => p.reject(new TetherError(f.code, f.message, {
          retryAfterMs: f.retryAfterMs, frame: f,
        })));
      case "disconnect":
        this.#disconnect = f;
        return;
      default:
        return;
    }
  }

  #onWelcome(ws, w) {
    clearTimeout(this.#timers.connect);
    this.#timers.connect = null;
    this.#welcome = w;
    this.#connectionId = w.connectionId;
    this.#resumeToken = w.resumeToken;
    this.#userId = w.userId;
    this.#sessionId = w.sessionId ?? null;
    this.#resumable = true;
    const seq = Number.isFinite(w.seq) ? w.seq : 0;
    // A fresh connection counts from its own seq; a resumed one never above the server's
    // (a server that lost writes would otherwise have its next frames dropped here).
    this.#lastSeq = w.resumed ? Math.min(this.#lastSeq, seq) : seq;
    this.#ackedSeq = 0;
    this.#expiresAt = Date.parse(w.expiresAt) || 0;
    this.#persist();
    this.#closeAbandoned();

    this.#armHeartbeat(w.heartbeatIntervalMs);
    this.#scheduleRefresh();
    this.#timers.stable = setTimeout(() => {
      this.#timers.stable = null;
      this.#attempt = 0;
    }, this.#opts.stableAfterMs);

    this.#setState("open", {
      connectionId: w.connectionId,
      resumed: !!w.resumed,
      previousConnectionId: w.previousConnectionId ?? null,
      resumeError: w.resumeError ?? null,
    });
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve(w);
    // Requests made while there was no socket go out now.
    for (const p of this.#pending.values()) {
      if (!p.sent && ws === this.#ws) this.#sendRequest(ws, p);
    }
  }

  #deliver(f, event, payload) {
    if (Number.isFinite(f.seq)) {
      if (f.seq <= this.#lastSeq) return;
      this.#lastSeq = f.seq;
      this.#persist();
      if (!this.#timers.ack) {
        this.#timers.ack = setTimeout(() => {
          this.#timers.ack = null;
          if (this.#ws) this.#sendAck(this.#ws);
        }, this.#opts.ackIntervalMs);
      }
    }
    this.#emit(event, payload, f);
  }

  #sendAck(ws) {
    if (this.#lastSeq > this.#ackedSeq && ws.readyState === 1) {
      ws.send(JSON.stringify({ type: "ack", seq: this.#lastSeq }));
      this.#ackedSeq = this.#lastSeq;
    }
  }

  #settle(id, answer, fn) {
    if (id === undefined || id === null) return;
    const p = this.#pending.get(id);
    if (!p || (answer && p.answer !== answer)) return;
    this.#pending.delete(id);
    fn(p);
  }

  #request(frame, answer) {
    if (this.#state === "idle" || this.#state === "closed") {
      return Promise.reject(new TetherError("not_connected", "call connect() first"));
    }
    const id = this.#nextId++;
    const text = JSON.stringify({ ...frame, id });
    const max = this.#welcome?.limits?.maxMessageBytes;
    if (max && new TextEncoder().encode(text).length > max) {
      return Promise.reject(new TetherError("too_large",
        `the frame is larger than the server's maxMessageBytes (${max})`));
    }
    return new Promise((resolve, reject) => {
      const p = { id, text, answer, sent: false, resolve, reject };
      this.#pending.set(id, p);
      if (this.#state === "open" && this.#ws) this.#sendRequest(this.#ws, p);
    });
  }

  #sendRequest(ws, p) {
    if (ws.readyState !== 1) return;
    ws.send(p.text);
    p.sent = true;
  }

  /** Rejects what went out on a socket that is gone; what was not sent yet waits. */
  #failSent(error) {
    for (const [id, p] of this.#pending) {
      if (p.sent) {
        this.#pending.delete(id);
        p.reject(error);
      }
    }
  }

  // ---- heartbeat and refresh --------------------------------------------------------

  /** A page never sees the server's WebSocket pings, so silence is measured here: nothing
   * for one interval sends a `ping`; nothing for another after it gives the socket up. */
  #armHeartbeat(serverInterval) {
    const interval = this.#opts.heartbeatIntervalMs ?? serverInterval ?? 25000;
    this.#lastReceived = Date.now();
    this.#pingSentAt = 0;
    const check = () => {
      this.#timers.heartbeat = null;
      const ws = this.#ws;
      if (!ws) return;
      const now = Date.now();
      let wait;
      if (this.#pingSentAt) {
        const since = now - this.#pingSentAt;
        if (since >= interval) return this.#lost(ws);
        wait = interval - since;
      } else if (now - this.#lastReceived >= interval) {
        this.#pingSentAt = now;
        if (ws.readyState === 1) ws.send(JSON.stringify({ type: "ping", id: `hb-${this.#nextId++}` }));
        wait = interval;
      } else {
        wait = interval - (now - this.#lastReceived);
      }
      this.#timers.heartbeat = setTimeout(check, Math.max(wait, 10));
    };
    this.#timers.heartbeat = setTimeout(check, interval);
  }

  /** Gives up on a silent socket. It is not closed now: a close frame reaching a server that
   * was only stalled would end the connection we are about to resume. */
  #lost(ws) {
    this.#detach(ws);
    this.#abandoned.add(ws);
    this.#dropped(1006, "no answer to ping");
  }

  #scheduleRefresh() {
    clearTimeout(this.#timers.refresh);
    this.#timers.refresh = null;
    if (this.#credentialKind !== "jwt" || typeof this.#opts.token !== "function" || !this.#expiresAt) return;
    const remaining = this.#expiresAt - Date.now();
    // A minute early, or a fifth of the lifetime when that is shorter, and at least a second.
    const lead = Math.min(60000, Math.max(1000, remaining * 0.2));
    const delay = Math.max(0, remaining - lead);
    this.#timers.refresh = setTimeout(() => {
      this.#timers.refresh = null;
      if (delay > MAX_TIMER_MS) return this.#scheduleRefresh();
      this.#refresh();
    }, Math.min(delay, MAX_TIMER_MS));
  }

  async #refresh() {
    const ws = this.#ws;
    const gen = this.#gen;
    try {
      const cred = await this.#credential();
      if (gen !== this.#gen || ws !== this.#ws || cred.kind !== "jwt") return;
      await this.#request({ type: "refresh", token: cred.value }, "refreshed");
    } catch {
      // Try again while there is time; past expiresAt the server closes with 4004 and the
      // reconnect (with a new token) resumes the connection.
      if (gen !== this.#gen || ws !== this.#ws) return;
      const remaining = this.#expiresAt - Date.now();
      if (remaining > 2000) {
        this.#timers.refresh = setTimeout(() => {
          this.#timers.refresh = null;
          this.#refresh();
        }, Math.min(5000, remaining / 2));
      }
    }
  }

  // ---- state, storage, timers -------------------------------------------------------

  #setState(state, detail) {
    this.#state = state;
    this.#emit("state", state, detail);
  }

  #emit(event, ...args) {
    const list = this.#listeners.get(event);
    if (!list) return;
    for (const fn of [...list]) {
      try {
        fn(...args);
      } catch (e) {
        // A listener's bug is reported, and does not break delivery to the others.
        queueMicrotask(() => { throw e; });
      }
    }
  }

  #load() {
    try {
      const raw = this.#storage.getItem(this.#storageKey);
      if (!raw) return;
      const s = JSON.parse(raw);
      if (typeof s.connectionId === "string" && typeof s.resumeToken === "string") {
        this.#connectionId = s.connectionId;
        this.#resumeToken = s.resumeToken;
        this.#userId = s.userId ?? null;
        this.#sessionId = s.sessionId ?? null;
        this.#lastSeq = Number.isFinite(s.lastSeq) ? s.lastSeq : 0;
        this.#resumable = true;
      }
    } catch {
      // Unreadable storage: start fresh.
    }
  }

  #persist() {
    try {
      this.#storage.setItem(this.#storageKey, JSON.stringify({
        connectionId: this.#connectionId,
        resumeToken: this.#resumeToken,
        lastSeq: this.#lastSeq,
        userId: this.#userId,
        sessionId: this.#sessionId,
      }));
    } catch {
      // Full or unavailable storage: the client still works, only without resume after a reload.
    }
  }

  /** The server no longer keeps our connection: nothing left to resume. */
  #forget() {
    this.#resumable = false;
    try {
      const raw = this.#storage.getItem(this.#storageKey);
      const s = raw ? JSON.parse(raw) : null;
      // Storage shared with another client (another tab) may hold its state by now.
      if (!s || s.connectionId === this.#connectionId) this.#storage.removeItem?.(this.#storageKey);
    } catch {
      // ignore
    }
  }

  #clearSocketTimers() {
    for (const k of ["connect", "heartbeat", "ack", "refresh", "stable", "errorGrace"]) {
      clearTimeout(this.#timers[k]);
      this.#timers[k] = null;
    }
  }

  #clearTimers() {
    this.#clearSocketTimers();
    clearTimeout(this.#timers.reconnect);
    this.#timers.reconnect = null;
  }
}
