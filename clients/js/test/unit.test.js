// The client's own logic, without a server: the backoff and close-code functions, and the
// client driven through a scripted WebSocket (frames the real server never sends, such as a
// duplicate seq, can only be tested this way).

import { test, describe, afterEach } from "node:test";
import assert from "node:assert/strict";
import { backoff, shouldReconnect, TetherClient, TetherError } from "../tether.js";
import { sleep, waitFor } from "./harness.js";

describe("backoff", () => {
  test("stays within [0, min(cap, base * 2^attempt))", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(20000, 500 * 2 ** attempt);
      for (let i = 0; i < 200; i++) {
        const d = backoff(attempt);
        assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
      }
    }
  });

  test("is full jitter: the random draw scales the whole ceiling", () => {
    assert.equal(backoff(0, { random: () => 0 }), 0);
    assert.equal(backoff(0, { random: () => 0.5 }), 250);
    assert.equal(backoff(3, { random: () => 0.5 }), 2000);
    assert.equal(backoff(3, { random: () => 0.999999 }), 3999);
  });

  test("is capped at 20 s, even for huge attempt counts", () => {
    assert.equal(backoff(6, { random: () => 0.5 }), 10000);
    assert.equal(backoff(7, { random: () => 0.5 }), 10000);
    assert.equal(backoff(5000, { random: () => 0.5 }), 10000);
    assert.equal(backoff(2000, { random: () => 0.999999 }), 19999);
  });

  test("takes base and cap, and treats a bad attempt as the first", () => {
    assert.equal(backoff(2, { baseMs: 100, capMs: 1000, random: () => 0.5 }), 200);
    assert.equal(backoff(10, { baseMs: 100, capMs: 1000, random: () => 0.5 }), 500);
    assert.equal(backoff(-3, { random: () => 0.5 }), 250);
    assert.equal(backoff(NaN, { random: () => 0.5 }), 250);
  });
});

test("shouldReconnect follows the close-code ranges", () => {
  for (const code of [1001, 1006, 1013, 4000, 4002, 4004, 4006, 4010, 4012, 4499]) {
    assert.equal(shouldReconnect(code), true, `${code}`);
  }
  for (const code of [1000, 1009, 4500, 4501, 4503, 4505, 4506, 4507, 4508, 4509, 4999, 3000]) {
    assert.equal(shouldReconnect(code), false, `${code}`);
  }
});

/** A WebSocket whose server side the test plays. */
class FakeSocket extends EventTarget {
  static all = [];
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    const was = this.readyState;
    this.readyState = 3;
    if (was !== 3) setTimeout(() => this.#fire("close", { code: code ?? 1005, reason: reason ?? "" }), 0);
  }
  // The server's side.
  accept() {
    this.readyState = 1;
    this.#fire("open");
  }
  frame(obj) { this.#fire("message", { data: JSON.stringify(obj) }); }
  drop(code, reason = "") {
    this.readyState = 3;
    this.#fire("close", { code, reason });
  }
  #fire(type, props = {}) { this.dispatchEvent(Object.assign(new Event(type), props)); }
}

function welcome(over = {}) {
  return {
    type: "welcome", connectionId: "c1", userId: "u", sessionId: null, resumeToken: "r1",
    resumed: false, previousConnectionId: null, resumeError: null,
    expiresAt: new Date(Date.now() + 3600e3).toISOString(), heartbeatIntervalMs: 25000,
    limits: { messagesPerMinute: 120, maxMessageBytes: 65536 }, seq: 0, ...over,
  };
}

// A failed assertion must not leave a client's timers keeping the test process alive.
const made = [];
afterEach(async () => {
  for (const c of made.splice(0)) await c.close();
});

/** A client on fake sockets, with fast retries; returns it, its events, and the sockets. */
function fakeClient(opts = {}) {
  FakeSocket.all = [];
  const client = new TetherClient("ws://fake/ws", {
    token: async () => "aaa.bbb.ccc",
    WebSocket: FakeSocket,
    backoffCapMs: 10,
    ...opts,
  });
  made.push(client);
  const ev = { messages: [], states: [], closed: [] };
  client.on("message", (data, frame) => ev.messages.push(frame.seq));
  client.on("state", (s, d) => ev.states.push([s, d]));
  client.on("closed", (c) => ev.closed.push(c));
  return { client, ev, socket: (i) => waitFor(() => FakeSocket.all[i], { timeout: 2000, what: `socket ${i}` }) };
}

async function opened(sock, w) {
  sock.accept();
  await waitFor(() => sock.sent.length > 0, { what: "auth frame" });
  sock.frame(w);
}

test("each seq is delivered once and in order, across a resume, with the latest resume token", async () => {
  const { client, ev, socket } = fakeClient();
  const connected = client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  await connected;
  assert.deepEqual(s0.sent[0], { type: "auth", token: "aaa.bbb.ccc" });
  for (const seq of [1, 2, 2, 3, 1]) s0.frame({ type: "message", seq, data: seq, ts: "" });
  assert.deepEqual(ev.messages, [1, 2, 3]);
  assert.equal(client.lastSeq, 3);

  s0.drop(1006);
  const s1 = await socket(1);
  await opened(s1, welcome({ connectionId: "c2", resumeToken: "r2", resumed: true, previousConnectionId: "c1", seq: 4 }));
  assert.deepEqual(s1.sent[0].resume, { connectionId: "c1", token: "r1", lastSeq: 3 });
  for (const seq of [2, 3, 4]) s1.frame({ type: "message", seq, data: seq, ts: "" });
  assert.deepEqual(ev.messages, [1, 2, 3, 4]);
  assert.equal(client.connectionId, "c2");

  s1.drop(4012);
  const s2 = await socket(2);
  await opened(s2, welcome({ connectionId: "c3", resumeToken: "r3", resumed: true, seq: 4 }));
  assert.deepEqual(s2.sent[0].resume, { connectionId: "c2", token: "r2", lastSeq: 4 });
  await client.close();
});

test("a resume the server could not honour starts counting again from the new welcome", async () => {
  const { client, ev, socket } = fakeClient();
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  for (const seq of [1, 2, 3]) s0.frame({ type: "message", seq, data: seq, ts: "" });
  s0.drop(1006);
  const s1 = await socket(1);
  await opened(s1, welcome({ connectionId: "c9", resumeError: "unknown connection", seq: 0 }));
  s1.frame({ type: "message", seq: 1, data: "new", ts: "" });
  assert.deepEqual(ev.messages, [1, 2, 3, 1]);
  const open = ev.states.filter(([s]) => s === "open");
  assert.equal(open[1][1].resumeError, "unknown connection");
  await client.close();
});

for (const code of [1000, 1009, 4501, 4503, 4505, 4506, 4508, 4509]) {
  test(`close ${code} is final: closed is emitted and nothing reconnects`, async () => {
    const { client, ev, socket } = fakeClient();
    client.connect();
    const s0 = await socket(0);
    await opened(s0, welcome());
    s0.frame({ type: "disconnect", code, reason: "why", reconnect: false });
    s0.drop(code, "why");
    await sleep(60);
    assert.deepEqual(ev.closed, [{ code, reason: "why" }]);
    assert.equal(ev.states.at(-1)[0], "closed");
    assert.equal(FakeSocket.all.length, 1);
  });
}

for (const code of [1001, 1006, 1013, 4002, 4004, 4006, 4010, 4012, 4499]) {
  test(`close ${code} reconnects and resumes`, async () => {
    const { client, ev, socket } = fakeClient();
    client.connect();
    const s0 = await socket(0);
    await opened(s0, welcome());
    s0.drop(code, "why");
    const s1 = await socket(1);
    const [state, detail] = ev.states.find(([s]) => s === "reconnecting");
    assert.equal(state, "reconnecting");
    assert.equal(detail.code, code);
    s1.accept();
    await waitFor(() => s1.sent.length > 0, { what: "auth" });
    assert.equal(s1.sent[0].resume.connectionId, "c1");
    assert.deepEqual(ev.closed, []);
    await client.close();
  });
}

test("a close frame lost after its disconnect frame still counts as that code", async () => {
  const { client, ev, socket } = fakeClient();
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  s0.frame({ type: "disconnect", code: 4506, reason: "bye", reconnect: false });
  s0.drop(1006);
  await sleep(40);
  assert.deepEqual(ev.closed, [{ code: 4506, reason: "bye" }]);
  assert.equal(FakeSocket.all.length, 1);
  await client.close();
});

test("acks are batched: one ack with the highest seq per interval, and one on close", async () => {
  const { client, socket } = fakeClient({ ackIntervalMs: 80 });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  for (const seq of [1, 2, 3]) s0.frame({ type: "message", seq, data: seq, ts: "" });
  const acks = () => s0.sent.filter((f) => f.type === "ack");
  assert.equal(acks().length, 0);
  await waitFor(() => acks().length === 1, { what: "the batched ack" });
  assert.deepEqual(acks(), [{ type: "ack", seq: 3 }]);
  s0.frame({ type: "message", seq: 4, data: 4, ts: "" });
  await client.close();
  assert.deepEqual(acks(), [{ type: "ack", seq: 3 }, { type: "ack", seq: 4 }]);
  assert.equal(s0.closedWith.code, 1000);
});

test("updateSession resolves on its ack, rejects on its error, and on a lost socket", async () => {
  const { client, socket } = fakeClient();
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  const a = client.updateSession({ theme: "light" });
  const b = client.updateSession({ theme: "dark" });
  const [fa, fb] = s0.sent.filter((f) => f.type === "session.update");
  assert.deepEqual(fa.updates, { theme: "light" });
  assert.notEqual(fa.id, fb.id);
  s0.frame({ type: "ack", id: fb.id });
  s0.frame({ type: "error", code: "rate_limited", message: "slow down", id: fa.id, retryAfterMs: 1200 });
  await b;
  await assert.rejects(a, (e) => e instanceof TetherError && e.code === "rate_limited" && e.retryAfterMs === 1200);

  const c = client.updateSession({ x: 1 });
  s0.drop(1006);
  await assert.rejects(c, (e) => e.code === "connection_lost");
  // Made while reconnecting: sent once the next welcome arrives.
  const d = client.updateSession({ y: 2 });
  const s1 = await socket(1);
  await opened(s1, welcome({ connectionId: "c2", resumed: true }));
  const fd = s1.sent.find((f) => f.type === "session.update");
  assert.deepEqual(fd.updates, { y: 2 });
  s1.frame({ type: "ack", id: fd.id });
  await d;
  await assert.rejects(client.updateSession({ big: "x".repeat(70000) }), (e) => e.code === "too_large");
  await client.close();
  await assert.rejects(client.updateSession({}), (e) => e.code === "not_connected");
});

test("a silent socket gets a ping, then is given up on without a close frame", async () => {
  const { client, ev, socket } = fakeClient({ heartbeatIntervalMs: 100 });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  const t0 = Date.now();
  await waitFor(() => s0.sent.some((f) => f.type === "ping"), { what: "a heartbeat ping" });
  const pingAt = Date.now() - t0;
  assert.ok(pingAt >= 90 && pingAt < 300, `ping after ${pingAt} ms`);
  await waitFor(() => ev.states.some(([s]) => s === "reconnecting"), { what: "reconnecting" });
  const lostAt = Date.now() - t0;
  assert.ok(lostAt >= 190 && lostAt < 500, `lost after ${lostAt} ms`);
  assert.equal(s0.closedWith, null, "the silent socket must not be sent a close frame yet");
  const s1 = await socket(1);
  await opened(s1, welcome({ connectionId: "c2", resumed: true }));
  assert.equal(s0.closedWith?.code, 1000, "closed once the resume is done");
  await client.close();
});

test("a socket that answers stays up: any frame counts as a sign of life", async () => {
  const { client, ev, socket } = fakeClient({ heartbeatIntervalMs: 60 });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome());
  const answered = new Set();
  const answer = () => {
    for (const f of s0.sent) {
      if (f.type === "ping" && !answered.has(f.id)) {
        answered.add(f.id);
        s0.frame({ type: "pong", id: f.id });
      }
    }
  };
  const timer = setInterval(answer, 10);
  await sleep(400);
  clearInterval(timer);
  assert.ok(!ev.states.some(([s]) => s === "reconnecting"), JSON.stringify(ev.states));
  assert.ok(s0.sent.filter((f) => f.type === "ping").length >= 3);
  await client.close();
});

test("the JWT is refreshed before expiresAt with a new token() call", async () => {
  let calls = 0;
  const { client, socket } = fakeClient({ token: async () => `aaa.bbb.${++calls}` });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome({ expiresAt: new Date(Date.now() + 1600).toISOString() }));
  const refresh = await waitFor(() => s0.sent.find((f) => f.type === "refresh"), { what: "refresh", timeout: 3000 });
  assert.equal(refresh.token, "aaa.bbb.2");
  s0.frame({ type: "refreshed", expiresAt: new Date(Date.now() + 1300).toISOString(), id: refresh.id });
  const second = await waitFor(() => s0.sent.filter((f) => f.type === "refresh")[1], { what: "second refresh", timeout: 3000 });
  assert.equal(second.token, "aaa.bbb.3");
  await client.close();
});

test("a session id is sent as sessionId and never refreshed", async () => {
  const { client, socket } = fakeClient({ token: undefined, sessionId: "s_abc", heartbeatIntervalMs: 5000 });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome({ expiresAt: new Date(Date.now() + 1100).toISOString() }));
  assert.deepEqual(s0.sent[0], { type: "auth", sessionId: "s_abc" });
  await sleep(300);
  assert.ok(!s0.sent.some((f) => f.type === "refresh"));
  await client.close();
});

test("state is kept in storage and a new client resumes from it", async () => {
  const m = new Map();
  const storage = { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k) };
  const { client, socket } = fakeClient({ storage });
  client.connect();
  const s0 = await socket(0);
  await opened(s0, welcome({ connectionId: "c7", resumeToken: "r7" }));
  s0.frame({ type: "message", seq: 1, data: 1, ts: "" });
  s0.frame({ type: "message", seq: 2, data: 2, ts: "" });
  const kept = JSON.parse(m.get("tether:ws://fake/ws"));
  assert.deepEqual([kept.connectionId, kept.resumeToken, kept.lastSeq], ["c7", "r7", 2]);

  // A second client (a reloaded page) with the same storage.
  const second = fakeClient({ storage });
  assert.equal(second.client.connectionId, "c7");
  assert.equal(second.client.lastSeq, 2);
  const pending = second.client.connect();
  const t0 = await second.socket(0);
  t0.accept();
  await waitFor(() => t0.sent.length > 0, { what: "auth" });
  assert.deepEqual(t0.sent[0].resume, { connectionId: "c7", token: "r7", lastSeq: 2 });
  const ended = assert.rejects(pending, (e) => e.code === "closed", "close() before the welcome ends connect()");
  await second.client.close();
  await ended;
  assert.equal(m.get("tether:ws://fake/ws"), undefined, "a closed connection leaves nothing to resume");
  await client.close();
});

test("connect() rejects when the first connection is refused for good", async () => {
  const { client, socket } = fakeClient();
  const p = client.connect();
  const s0 = await socket(0);
  s0.accept();
  s0.frame({ type: "disconnect", code: 4501, reason: "invalid token", reconnect: false });
  s0.drop(4501, "invalid token");
  await assert.rejects(p, (e) => e.code === "closed" && e.closeCode === 4501);
});
