// The client in a real headless Chromium: a page served by this test from localhost imports
// tether.js as a module and talks to the real server. The page's token() fetches a fresh JWT
// from the page's own origin, as an app would from its backend.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Server, deadPort, sleep, clientDir } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const T = { timeout: 60000 };

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>tether client test</title>
<script type="module">
import { TetherClient } from "/tether.js";
// A WebSocket the test can cut off from the server: while gate.open is false, new sockets
// go to a port nobody listens on, as in a network outage.
window.gate = { open: true, made: 0, dead: "" };
class GatedWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(window.gate.open ? url : window.gate.dead, protocols);
    window.gate.made++;
  }
}
window.clients = {};
window.makeClient = (name, wsUrl, { user, sessionId, opts = {} }) => {
  const log = { states: [], messages: [], sessions: [], closed: [] };
  const token = sessionId
    ? async () => sessionId
    : async () => (await fetch("/token?user=" + encodeURIComponent(user))).text();
  const client = new TetherClient(wsUrl, {
    token, WebSocket: GatedWebSocket, storage: window.sessionStorage,
    storageKey: "tether:" + name, backoffCapMs: 1000, ...opts,
  });
  client.on("state", (state, detail) => log.states.push({ state, detail, at: Date.now() }));
  client.on("message", (data, frame) => log.messages.push({ data, seq: frame.seq }));
  client.on("session", (updates, frame) => log.sessions.push({ updates, frame }));
  client.on("closed", (c) => log.closed.push(c));
  window.clients[name] = { client, log };
};
window.ready = true;
</script>
`;

let browser;
let web;
let webBase;
/** The tether server of the test that is running; /token mints with its secret. */
let current = null;

before(async () => {
  web = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else if (url.pathname === "/tether.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(join(clientDir, "tether.js")));
    } else if (url.pathname === "/token" && current) {
      res.writeHead(200, { "content-type": "text/plain" }).end(current.token(url.searchParams.get("user")));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => web.listen(0, "127.0.0.1", r));
  webBase = `http://localhost:${web.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (web ? web.close(r) : r()));
});

/** A tether server and a fresh page on the test's origin, both gone when the test ends. */
async function setup(t, args = []) {
  const server = await Server.start(args);
  current = server;
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  t.after(async () => {
    await context.close();
    await server.cleanup();
    current = null;
  });
  await page.goto(webBase);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 10000 });
  await page.evaluate((port) => { window.gate.dead = `ws://127.0.0.1:${port}/ws`; }, await deadPort());
  return { server, page, errors };
}

const make = (page, name, wsUrl, spec) => page.evaluate(([n, u, s]) => window.makeClient(n, u, s), [name, wsUrl, spec]);
const connect = (page, name) => page.evaluate((n) => window.clients[n].client.connect(), name);
const log = (page, name) => page.evaluate((n) => window.clients[n].log, name);
const get = (page, name, prop) => page.evaluate(([n, p]) => window.clients[n].client[p], [name, prop]);

/** Waits until `fn(log)` holds in the page; `fn` runs in the page. */
function until(page, name, fn, timeout = 10000) {
  return page.waitForFunction(([n, src]) => (0, eval)(`(${src})`)(window.clients[n].log), [name, String(fn)], { timeout, polling: 25 });
}

/** The first state `name` after index `from`. */
async function stateAfter(page, client, name, from, timeout = 10000) {
  await until(page, client, new Function("log", `return log.states.slice(${from}).some((s) => s.state === ${JSON.stringify(name)})`), timeout);
  return (await log(page, client)).states.slice(from).find((s) => s.state === name);
}

test("chromium: connect, identity, ping, a message", T, async (t) => {
  const { server, page, errors } = await setup(t);
  await make(page, "a", server.wsUrl, { user: "alice" });
  const welcome = await connect(page, "a");
  assert.equal(welcome.userId, "alice");
  assert.equal(await get(page, "a", "connectionId"), welcome.connectionId);
  assert.equal(await get(page, "a", "userId"), "alice");
  const conns = await server.api("GET", "/v1/users/alice/connections");
  assert.deepEqual(conns.body.map((c) => c.connectionId), [welcome.connectionId]);
  assert.match(conns.body[0].metadata.userAgent, /HeadlessChrome/);
  const rtt = await page.evaluate(() => window.clients.a.client.ping());
  assert.ok(rtt >= 0 && rtt < 5000);
  await server.sendToUser("alice", { hello: "page" });
  await until(page, "a", (l) => l.messages.length === 1);
  assert.deepEqual((await log(page, "a")).messages, [{ data: { hello: "page" }, seq: 1 }]);
  const kept = JSON.parse(await page.evaluate(() => sessionStorage.getItem("tether:a")));
  assert.equal(kept.connectionId, welcome.connectionId);
  assert.equal(kept.lastSeq, 1);
  assert.deepEqual(errors, []);
});

test("chromium: kill -9 and restart, every message once and in order", T, async (t) => {
  const { server, page, errors } = await setup(t);
  await make(page, "b", server.wsUrl, { user: "bob" });
  await connect(page, "b");
  let n = 0;
  const send = async (count) => {
    const out = [];
    for (let i = 0; i < count; i++) out.push(await server.sendToUser("bob", ++n));
    return out;
  };
  await send(3);
  await until(page, "b", (l) => l.messages.length === 3);
  const ids = [await get(page, "b", "connectionId")];
  for (let round = 0; round < 2; round++) {
    const from = (await log(page, "b")).states.length;
    await page.evaluate(() => { window.gate.open = false; });
    await server.kill9();
    await stateAfter(page, "b", "reconnecting", from);
    await server.restart();
    const during = await send(3);
    assert.deepEqual(during.map((r) => r.delivered), [0, 0, 0]);
    await page.evaluate(() => { window.gate.open = true; });
    const open = await stateAfter(page, "b", "open", from, 15000);
    assert.equal(open.detail.resumed, true, open.detail.resumeError);
    assert.equal(open.detail.previousConnectionId, ids.at(-1));
    ids.push(await get(page, "b", "connectionId"));
    await send(2);
    await until(page, "b", new Function("l", `return l.messages.length >= ${n}`));
  }
  await sleep(300);
  const got = (await log(page, "b")).messages;
  assert.deepEqual(got.map((m) => m.data), Array.from({ length: n }, (_, i) => i + 1));
  assert.equal(new Set(got.map((m) => m.seq)).size, n);
  const kept = JSON.parse(await page.evaluate(() => sessionStorage.getItem("tether:b")));
  assert.equal(kept.connectionId, ids.at(-1), "storage holds the newest connection id");
  assert.equal(kept.lastSeq, got.at(-1).seq);
  assert.deepEqual(errors, []);
});

test("chromium: a session update resolves on its ack and reaches the other socket", T, async (t) => {
  const { server, page, errors } = await setup(t);
  const sid = (await server.api("POST", "/v1/sessions", { userId: "carol" })).body.sessionId;
  await make(page, "a", server.wsUrl, { sessionId: sid });
  await make(page, "b", server.wsUrl, { sessionId: sid });
  await connect(page, "a");
  await connect(page, "b");
  const ack = await page.evaluate(() => window.clients.a.client.updateSession({ theme: "light" }).then((f) => f.type));
  assert.equal(ack, "ack");
  assert.deepEqual((await server.api("GET", `/v1/sessions/${sid}`)).body.data, { theme: "light" });
  await until(page, "b", (l) => l.sessions.length === 1);
  const [{ updates, frame }] = (await log(page, "b")).sessions;
  assert.deepEqual(updates, { theme: "light" });
  assert.equal(frame.source, "websocket");
  assert.equal(frame.connectionId, await get(page, "a", "connectionId"));
  assert.deepEqual((await log(page, "a")).sessions, []);
  assert.deepEqual(errors, []);
});

test("chromium: a 4506 close is final, nothing reconnects", T, async (t) => {
  const { server, page, errors } = await setup(t);
  await make(page, "d", server.wsUrl, { user: "dave", opts: { backoffCapMs: 200 } });
  const welcome = await connect(page, "d");
  assert.equal((await server.api("DELETE", `/v1/connections/${welcome.connectionId}?reason=bye`)).status, 204);
  await until(page, "d", (l) => l.closed.length === 1);
  await sleep(1500);
  const l = await log(page, "d");
  assert.deepEqual(l.closed, [{ code: 4506, reason: "bye" }]);
  assert.equal(l.states.at(-1).state, "closed");
  assert.ok(!l.states.some((s) => s.state === "reconnecting"));
  assert.equal(await page.evaluate(() => window.gate.made), 1);
  assert.deepEqual((await server.api("GET", "/v1/users/dave/connections")).body, []);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tether:d")), null);
  assert.deepEqual(errors, []);
});

test("chromium: a stalled server is noticed by the page's own heartbeat", T, async (t) => {
  const hb = 1000;
  const { server, page, errors } = await setup(t, ["--heartbeat-interval-ms", String(hb), "--messages-per-minute", "1000"]);
  await make(page, "h", server.wsUrl, { user: "hank" });
  const welcome = await connect(page, "h");
  assert.equal(welcome.heartbeatIntervalMs, hb);
  await sleep(hb * 1.5);
  const from = (await log(page, "h")).states.length;
  const stoppedAt = Date.now();
  server.signal("SIGSTOP");
  let lost;
  try {
    lost = await stateAfter(page, "h", "reconnecting", from, hb * 4);
  } finally {
    server.signal("SIGCONT");
  }
  const after = lost.at - stoppedAt;
  assert.ok(after >= hb - 100 && after <= 2 * hb + 600, `noticed after ${after} ms (heartbeat ${hb} ms)`);
  const open = await stateAfter(page, "h", "open", from, 15000);
  assert.equal(open.detail.resumed, true, open.detail.resumeError);
  await server.sendToUser("hank", "after");
  await until(page, "h", (l) => l.messages.length === 1);
  assert.deepEqual(errors, []);
});
