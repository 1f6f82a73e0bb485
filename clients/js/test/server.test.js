// The client against the real server: restarts (kill -9 and SIGTERM), operator closes,
// session updates, token refresh and a stalled server, each checked the way a user would.
// Needs Node 20+ with a WebSocket (run with --experimental-websocket on Node 20 and 21).

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TetherClient } from "../tether.js";
import { Server, Recorder, waitFor, sleep, deadPort, clientDir } from "./harness.js";

if (typeof WebSocket !== "function") {
  throw new Error("no global WebSocket: run these tests with node --experimental-websocket (Node 20/21)");
}

const T = { timeout: 60000 };

/** A WebSocket the test can cut off from the server, like a network outage: while
 * `gate.open` is false, every new socket goes to a port nobody listens on. */
async function gatedWebSocket() {
  const gate = { open: true, made: 0, dead: `ws://127.0.0.1:${await deadPort()}/ws` };
  class GatedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(gate.open ? url : gate.dead, protocols);
      gate.made++;
    }
  }
  return { gate, GatedWebSocket };
}

async function setup(t, args = []) {
  const server = await Server.start(args);
  t.after(() => server.cleanup());
  return server;
}

/** A client for `user` whose token() mints a fresh JWT each call. */
function clientFor(t, server, user, opts = {}) {
  const client = new TetherClient(server.wsUrl, {
    token: async () => server.token(user),
    backoffCapMs: 1000,
    ...opts,
  });
  t.after(() => client.close());
  return { client, rec: new Recorder(client) };
}

test("connect: welcome, identity getters, ping", T, async (t) => {
  const server = await setup(t);
  const { client, rec } = clientFor(t, server, "alice");
  const welcome = await client.connect();
  assert.equal(welcome.userId, "alice");
  assert.equal(client.userId, "alice");
  assert.equal(client.connectionId, welcome.connectionId);
  assert.equal(client.sessionId, null);
  assert.equal(client.lastSeq, 0);
  assert.deepEqual(rec.states.map((s) => s.state), ["connecting", "open"]);
  const conns = await server.api("GET", "/v1/users/alice/connections");
  assert.deepEqual(conns.body.map((c) => c.connectionId), [client.connectionId]);
  const rtt = await client.ping();
  assert.ok(rtt >= 0 && rtt < 5000);
  await server.sendToUser("alice", { n: 1 });
  await rec.messageCount(1);
  assert.deepEqual(rec.messages[0], { data: { n: 1 }, seq: 1 });
  assert.equal(client.lastSeq, 1);
  // The batched ack reaches the server on close at the latest.
  await client.close();
  assert.deepEqual(rec.closed, [{ code: 1000, reason: "client closed" }]);
  await waitFor(async () => (await server.api("GET", "/v1/users/alice/connections")).body.length === 0,
    { what: "the closed connection to be removed" });
});

test("kill -9 twice: every message once and in order, sent before and during each outage", T, async (t) => {
  const server = await setup(t);
  const { gate, GatedWebSocket } = await gatedWebSocket();
  const { client, rec } = clientFor(t, server, "bob", { WebSocket: GatedWebSocket });
  await client.connect();
  let n = 0;
  const send = async (count) => {
    const out = [];
    for (let i = 0; i < count; i++) out.push(await server.sendToUser("bob", { n: ++n }));
    return out;
  };
  await send(3);
  await rec.messageCount(3);

  const ids = [client.connectionId];
  for (let round = 0; round < 2; round++) {
    const from = rec.states.length;
    gate.open = false;
    await server.kill9();
    await rec.state("reconnecting", { from });
    await server.restart();
    // The client cannot reach the server yet: these wait in the replay buffer.
    const during = await send(3);
    assert.deepEqual(during.map((r) => r.delivered), [0, 0, 0], "sent while the client was away");
    gate.open = true;
    const open = await rec.state("open", { from, timeout: 15000 });
    assert.equal(open.detail.resumed, true, `round ${round}: resumed (${open.detail.resumeError})`);
    assert.equal(open.detail.previousConnectionId, ids.at(-1));
    assert.notEqual(client.connectionId, ids.at(-1), "a resume gives a new connection id");
    ids.push(client.connectionId);
    await send(2);
    await rec.messageCount(n);
  }

  await sleep(300);
  assert.deepEqual(rec.messages.map((m) => m.data.n), Array.from({ length: n }, (_, i) => i + 1));
  const seqs = rec.messages.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(seqs).size, seqs.length);
  assert.equal(client.lastSeq, seqs.at(-1));
  assert.equal((await server.api("GET", `/v1/connections/${client.connectionId}`)).status, 200);
  for (const old of ids.slice(0, -1)) {
    assert.equal((await server.api("GET", `/v1/connections/${old}`)).status, 404, "the old id stops existing");
  }
  assert.deepEqual(rec.closed, []);
});

test("graceful restart: close 1001, then a resume with what was sent meanwhile", T, async (t) => {
  const server = await setup(t);
  const { gate, GatedWebSocket } = await gatedWebSocket();
  const { client, rec } = clientFor(t, server, "carol", { WebSocket: GatedWebSocket });
  await client.connect();
  await server.sendToUser("carol", "before");
  await rec.messageCount(1);
  const first = client.connectionId;
  gate.open = false;
  const from = rec.states.length;
  await server.stop();
  const lost = await rec.state("reconnecting", { from });
  assert.equal(lost.detail.code, 1001, `reconnecting after ${JSON.stringify(lost.detail)}`);
  await server.restart();
  assert.equal((await server.sendToUser("carol", "while away")).delivered, 0);
  gate.open = true;
  const open = await rec.state("open", { from, timeout: 15000 });
  assert.equal(open.detail.resumed, true, open.detail.resumeError);
  assert.equal(open.detail.previousConnectionId, first);
  await server.sendToUser("carol", "after");
  await rec.messageCount(3);
  await sleep(200);
  assert.deepEqual(rec.messages.map((m) => m.data), ["before", "while away", "after"]);
});

test("an operator's 4506 is final: closed is emitted and nothing reconnects", T, async (t) => {
  const server = await setup(t);
  const { gate, GatedWebSocket } = await gatedWebSocket();
  const storage = new Map();
  const store = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v), removeItem: (k) => storage.delete(k) };
  const { client, rec } = clientFor(t, server, "dave", { WebSocket: GatedWebSocket, storage: store, backoffCapMs: 200 });
  await client.connect();
  assert.equal(storage.size, 1);
  const r = await server.api("DELETE", `/v1/connections/${client.connectionId}?reason=policy`);
  assert.equal(r.status, 204);
  await waitFor(() => rec.closed.length === 1, { what: "closed" });
  assert.deepEqual(rec.closed, [{ code: 4506, reason: "policy" }]);
  assert.equal(rec.states.at(-1).state, "closed");
  await sleep(1500);
  assert.equal(gate.made, 1, "no new socket after a 45xx close");
  assert.ok(!rec.states.some((s) => s.state === "reconnecting"));
  assert.deepEqual((await server.api("GET", "/v1/users/dave/connections")).body, []);
  assert.equal(storage.size, 0, "nothing left to resume");
  await assert.rejects(client.ping(), (e) => e.code === "not_connected");
});

test("an operator's 4006 (reconnect=true) reconnects", T, async (t) => {
  const server = await setup(t);
  const { client, rec } = clientFor(t, server, "erin");
  await client.connect();
  const first = client.connectionId;
  const from = rec.states.length;
  await server.api("DELETE", `/v1/connections/${first}?reason=rebalance&reconnect=true`);
  const lost = await rec.state("reconnecting", { from });
  assert.equal(lost.detail.code, 4006);
  await rec.state("open", { from });
  assert.notEqual(client.connectionId, first);
  const conns = await server.api("GET", "/v1/users/erin/connections");
  assert.deepEqual(conns.body.map((c) => c.connectionId), [client.connectionId]);
  assert.deepEqual(rec.closed, []);
});

test("a session update resolves on its ack, is stored, and reaches the session's other socket", T, async (t) => {
  const server = await setup(t);
  const created = await server.api("POST", "/v1/sessions", { userId: "frank", data: { theme: "dark" } });
  assert.equal(created.status, 201);
  const sid = created.body.sessionId;
  const a = clientFor(t, server, "frank", { token: async () => sid });
  const b = clientFor(t, server, "frank", { token: async () => server.token("frank", { sid }) });
  await a.client.connect();
  await b.client.connect();
  assert.equal(a.client.sessionId, sid);
  assert.equal(b.client.sessionId, sid);

  await a.client.updateSession({ theme: "light", layout: { compact: true } });
  // Acknowledged means stored.
  const stored = await server.api("GET", `/v1/sessions/${sid}`);
  assert.deepEqual(stored.body.data, { theme: "light", layout: { compact: true } });
  await waitFor(() => b.rec.sessions.length === 1, { what: "session.updated on the other socket" });
  const [{ updates, frame }] = b.rec.sessions;
  assert.deepEqual(updates, { theme: "light", layout: { compact: true } });
  assert.equal(frame.source, "websocket");
  assert.equal(frame.connectionId, a.client.connectionId);
  assert.equal(frame.sessionId, sid);

  // An HTTP change reaches both, in seq order with messages.
  await server.api("PATCH", `/v1/sessions/${sid}`, { data: { theme: null } });
  await waitFor(() => a.rec.sessions.length === 1 && b.rec.sessions.length === 2, { what: "the HTTP update on both" });
  assert.deepEqual(a.rec.sessions.map((s) => s.frame.source), ["http"], "the sender does not get its own update");
  assert.deepEqual(b.rec.sessions[1].updates, { theme: null });
  assert.equal(a.client.lastSeq, a.rec.sessions[0].frame.seq);

  // A connection without a session gets the server's refusal.
  const lone = clientFor(t, server, "frank");
  await lone.client.connect();
  await assert.rejects(lone.client.updateSession({ theme: "x" }), (e) => e.code === "no_session");
});

test("the JWT is refreshed before the connection expires: same connection, later expiresAt", T, async (t) => {
  const server = await setup(t, ["--ttl-seconds", "4"]);
  let calls = 0;
  const { client, rec } = clientFor(t, server, "gina", {
    token: async () => { calls++; return server.token("gina", { ttlSeconds: 60 }); },
  });
  const welcome = await client.connect();
  const id = client.connectionId;
  const before = Date.parse(welcome.expiresAt);
  // Past the first expiry, and the sweeper's tick after it.
  await sleep(before - Date.now() + 2500);
  assert.deepEqual(rec.states.map((s) => s.state), ["connecting", "open"], "no 4004 and no reconnect");
  assert.equal(client.connectionId, id);
  const info = await server.api("GET", `/v1/connections/${id}`);
  assert.equal(info.status, 200);
  assert.equal(info.body.state, "active");
  assert.ok(Date.parse(info.body.expiresAt) > before, `${info.body.expiresAt} after ${welcome.expiresAt}`);
  assert.ok(calls >= 2, `token() called ${calls} times`);
});

test("a stalled server (SIGSTOP) is noticed within two heartbeats, and the client resumes after SIGCONT", T, async (t) => {
  const hb = 1000;
  const server = await setup(t, ["--heartbeat-interval-ms", String(hb), "--messages-per-minute", "1000"]);
  const { client, rec } = clientFor(t, server, "hank");
  await client.connect();
  await server.sendToUser("hank", 1);
  await rec.messageCount(1);
  const first = client.connectionId;
  // Let a heartbeat round go by first, so the client is in its steady rhythm.
  await sleep(hb * 1.5);
  const from = rec.states.length;
  const stoppedAt = Date.now();
  server.signal("SIGSTOP");
  let lost;
  try {
    lost = await rec.state("reconnecting", { from, timeout: hb * 4 });
  } finally {
    server.signal("SIGCONT");
  }
  const after = lost.at - stoppedAt;
  // Silence since the last frame: one interval to the ping, one more to give up; a frame
  // came at most an interval before the stop.
  assert.ok(after >= hb - 100 && after <= 2 * hb + 600, `noticed after ${after} ms (heartbeat ${hb} ms)`);
  assert.equal(lost.detail.code, 1006);
  const open = await rec.state("open", { from, timeout: 15000 });
  assert.equal(open.detail.resumed, true, open.detail.resumeError);
  assert.equal(open.detail.previousConnectionId, first);
  await server.sendToUser("hank", 2);
  await rec.messageCount(2);
  await sleep(200);
  assert.deepEqual(rec.messages.map((m) => m.data), [1, 2]);
  assert.equal((await server.api("GET", `/v1/connections/${first}`)).status, 404);
  assert.deepEqual((await server.api("GET", "/v1/users/hank/connections")).body.map((c) => c.connectionId),
    [client.connectionId]);
});

/** Runs a fixture script in its own Node process; resolves with its exit and output. */
function runFixture(name, args, { onLine, timeout = 20000 } = {}) {
  const child = spawn(process.execPath, ["--experimental-websocket", join(clientDir, "test/fixtures", name), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  let buf = "";
  child.stdout.on("data", (d) => {
    out += d;
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      onLine?.(JSON.parse(line));
    }
  });
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.on("exit", (code, signal) => { clearTimeout(timer); resolve({ code, signal, out, err }); });
  });
  return { child, done };
}

test("a client process killed without a close resumes from its storage in a new client", T, async (t) => {
  const server = await setup(t);
  const dir = mkdtempSync(join(tmpdir(), "tether-js-storage-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "storage.json");
  const lines = [];
  const { child, done } = runFixture("storage-client.js", [server.wsUrl, server.token("ivy"), file], {
    onLine: (l) => lines.push(l),
  });
  await waitFor(() => lines.some((l) => l.event === "open"), { what: "the child's welcome" });
  const childId = lines.find((l) => l.event === "open").connectionId;
  await server.sendToUser("ivy", "m1");
  await server.sendToUser("ivy", "m2");
  await waitFor(() => lines.filter((l) => l.event === "message").length === 2, { what: "the child's messages" });
  child.kill("SIGKILL");
  await done;
  await waitFor(async () => (await server.api("GET", `/v1/connections/${childId}`)).body?.state === "detached",
    { what: "the dead client's connection to be detached" });
  assert.equal((await server.sendToUser("ivy", "m3")).delivered, 0);

  const kept = JSON.parse(readFileSync(file, "utf8"));
  const storage = { getItem: (k) => kept[k] ?? null, setItem: (k, v) => (kept[k] = v), removeItem: (k) => delete kept[k] };
  const { client, rec } = clientFor(t, server, "ivy", { storage });
  assert.equal(client.connectionId, childId);
  assert.equal(client.lastSeq, 2);
  const welcome = await client.connect();
  assert.equal(welcome.resumed, true, welcome.resumeError);
  assert.equal(welcome.previousConnectionId, childId);
  await rec.messageCount(1);
  await sleep(300);
  assert.deepEqual(rec.messages.map((m) => m.data), ["m3"], "only what the dead client had not seen");
});

test("close() stops every timer: a Node process exits by itself right after it", T, async (t) => {
  // The default 25 s heartbeat and an hour's TTL: a timer left behind outlives the 20 s
  // the fixture is given.
  const server = await setup(t);
  const lines = [];
  const { done } = runFixture("close-exits.js", [server.wsUrl, server.token("jack")], {
    onLine: (l) => lines.push({ ...l, at: Date.now() }),
  });
  await waitFor(() => lines.some((l) => l.event === "open"), { what: "the child's welcome" });
  await server.sendToUser("jack", "hello");
  const r = await done;
  const closed = lines.find((l) => l.event === "closed");
  assert.ok(closed, `the child closed (stdout ${r.out}, stderr ${r.err})`);
  assert.equal(r.signal, null, "killed by the test's timeout: something kept the process alive");
  assert.equal(r.code, 0, r.err);
  const lingered = Date.now() - closed.at;
  assert.ok(lingered < 3000, `the process lived ${lingered} ms after close()`);
});
