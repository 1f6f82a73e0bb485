// The dashboard (GET /dashboard) in a real headless Chromium against the real server: what
// an operator sees and does. Connections are made from Node with the platform WebSocket,
// so that the test can watch the close code each one gets.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { tmpdir } from "node:os";
import { chromium } from "playwright-core";
import { Server, waitFor } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const T = { timeout: 90000 };
const READ_KEY = "tk_dashboard_reader_0123456789abcdef";
const KEYS = `[{key = "${READ_KEY}", name = "viewer", permissions = ["read"]}]`;

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
});

/** A WebSocket connection of `user`: its welcome, and a promise of how it closed. */
async function connect(server, user, version = "test/1.0") {
  const ws = new WebSocket(`${server.wsUrl}?token=${server.token(user)}&client_version=${encodeURIComponent(version)}`);
  const closed = new Promise((r) => ws.addEventListener("close", (e) => r({ code: e.code, reason: e.reason })));
  const welcome = await new Promise((res, rej) => {
    ws.addEventListener("message", (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "welcome") res(f);
    });
    ws.addEventListener("error", () => rej(new Error(`${user}: the socket failed`)));
    setTimeout(() => rej(new Error(`${user}: no welcome`)), 10000).unref();
  });
  return { ws, welcome, id: welcome.connectionId, closed };
}

/** A server (with a read-only key besides the admin one) and a page on its dashboard. */
async function setup(t, { query = "" } = {}) {
  const server = await Server.start(["--api-keys", KEYS]);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  const elsewhere = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("request", (r) => {
    if (!r.url().startsWith(server.base)) elsewhere.push(r.url());
  });
  const sockets = [];
  t.after(async () => {
    for (const s of sockets) s.ws.close();
    await context.close();
    await server.cleanup();
  });
  const open = async (user, version) => {
    const s = await connect(server, user, version);
    sockets.push(s);
    return s;
  };
  await page.goto(`${server.base}/dashboard${query}`);
  await page.waitForSelector("body[data-ready=true]");
  return { server, page, errors, elsewhere, open };
}

async function signIn(page, key) {
  await page.fill("#api-key", key);
  await page.click("#sign-in");
}

/** The connection ids of the table's rows, in order. */
const rowIds = (page) => page.$$eval("#connections tbody tr", (rows) => rows.map((r) => r.dataset.connectionId));

async function rowsAre(page, ids, what) {
  const want = [...ids].sort();
  await waitFor(async () => JSON.stringify((await rowIds(page)).sort()) === JSON.stringify(want), {
    timeout: 10000,
    what: `${what}: rows ${JSON.stringify(want)} (have ${JSON.stringify(await rowIds(page))})`,
  });
}

test("dashboard: sign in, the counts, a row per connection, the filter, pages", T, async (t) => {
  const { server, page, errors, elsewhere, open } = await setup(t);
  const alice = [await open("alice", "web/2.1"), await open("alice"), await open("alice")];
  const bob = [await open("bob"), await open("bob")];
  const all = [...alice, ...bob].map((s) => s.id);

  assert.equal(await page.isVisible("#connections"), false, "nothing shows before signing in");
  await signIn(page, server.adminKey);
  await rowsAre(page, all, "every connection of the test");
  await page.waitForFunction(() => document.querySelector('[data-health="activeConnections"]').textContent === "5");
  assert.equal(await page.textContent('[data-health="usersWithConnections"]'), "2");
  assert.match(await page.textContent('[data-health="byClientVersion"]'), /web\/2\.1 1/);

  // One row: user id, state, type, node, client version, connected since.
  const cells = await page.$$eval(`#connections tr[data-connection-id="${alice[0].id}"] td`, (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[0], "alice");
  assert.equal(cells[1], "active");
  assert.equal(cells[2], "websocket");
  assert.notEqual(cells[3], "–", "the node holding the socket");
  assert.equal(cells[4], "web/2.1");
  assert.match(cells[5], /^\d+ s ago$/);

  // The filter narrows the table to one user, and back.
  await page.fill("#user-filter", "bob");
  await rowsAre(page, bob.map((s) => s.id), "bob's connections");
  await page.fill("#user-filter", "");
  await rowsAre(page, all, "everyone again");

  // The key is kept in this tab's sessionStorage, never in the URL; a reload stays signed in.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("tether:dashboard:apiKey")), server.adminKey);
  assert.ok(!page.url().includes(server.adminKey));
  await page.reload();
  await rowsAre(page, all, "after a reload");

  // Paged: two rows a page, three pages.
  await page.goto(`${server.base}/dashboard?pageSize=2`);
  const seen = [];
  for (let p = 1; p <= 3; p++) {
    await waitFor(async () => (await page.textContent("#page-info")) === `page ${p}` && (await rowIds(page)).length > 0, { what: `page ${p}` });
    const ids = await rowIds(page);
    assert.ok(ids.length === (p < 3 ? 2 : 1), `page ${p}: ${ids}`);
    seen.push(...ids);
    assert.equal(await page.isDisabled("#next-page"), p === 3);
    if (p < 3) await page.click("#next-page");
  }
  assert.deepEqual([...seen].sort(), [...all].sort(), "every connection once over the pages");
  await page.click("#prev-page");
  await waitFor(async () => (await page.textContent("#page-info")) === "page 2", { what: "back to page 2" });

  assert.deepEqual(elsewhere, [], "nothing fetched from another origin");
  assert.deepEqual(errors, []);
});

test("dashboard: disconnect with an admin key closes the socket with 4506; the row leaves", T, async (t) => {
  const { server, page, errors, open } = await setup(t);
  const carol = await open("carol");
  const other = await open("dan");
  await signIn(page, server.adminKey);
  await rowsAre(page, [carol.id, other.id], "both connections");
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
  await page.click(`#connections tr[data-connection-id="${carol.id}"] button[data-action=disconnect]`);
  const closed = await carol.closed;
  assert.equal(closed.code, 4506);
  assert.match(dialogs[0], /carol/, "asked first");
  await rowsAre(page, [other.id], "carol's row left");
  assert.match(await page.textContent("#notice"), /Disconnected carol/);
  assert.equal((await server.api("GET", "/v1/users/carol/connections")).body.length, 0);

  // Dismissing the confirmation closes nothing.
  page.removeAllListeners("dialog");
  page.on("dialog", (d) => d.dismiss());
  await page.click(`#connections tr[data-connection-id="${other.id}"] button[data-action=disconnect]`);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(other.ws.readyState, WebSocket.OPEN);
  assert.deepEqual(await rowIds(page), [other.id]);

  // A connection that ends by itself leaves the table too.
  other.ws.close(1000);
  await rowsAre(page, [], "the client's own close");
  assert.deepEqual(errors, []);
});

test("dashboard: a read key can look but not disconnect, and the page says so", T, async (t) => {
  const { server, page, errors, open } = await setup(t);
  const erin = await open("erin");
  await signIn(page, "tk_not_a_key_of_this_server_0000000");
  await page.waitForFunction(() => /not valid/.test(document.querySelector("#notice").textContent));
  assert.equal(await page.isVisible("#connections"), false);

  await signIn(page, READ_KEY);
  await rowsAre(page, [erin.id], "erin's connection, with a read key");
  page.on("dialog", (d) => d.accept());
  await page.click(`#connections tr[data-connection-id="${erin.id}"] button[data-action=disconnect]`);
  await page.waitForFunction(() => /lacks the admin permission/.test(document.querySelector("#notice").textContent));
  assert.equal(erin.ws.readyState, WebSocket.OPEN, "still connected");
  assert.deepEqual(await rowIds(page), [erin.id]);
  assert.equal((await server.api("GET", `/v1/connections/${erin.id}`)).status, 200);
  assert.deepEqual(errors, []);
});

test("dashboard: the event feed opens with the log's newest events, then follows the bus", T, async (t) => {
  const { server, page, errors, open } = await setup(t);
  const early = await open("frank");
  await signIn(page, server.adminKey);
  const typeOf = (id) => page.$$eval("#events li", (lis, cid) => lis.filter((li) => li.querySelector(".who").title.includes(cid)).map((li) => li.dataset.eventType), id);
  await waitFor(async () => (await typeOf(early.id)).includes("connected"), { what: "frank's connected event, from the log" });
  await page.waitForFunction(() => document.querySelector("#feed-state").textContent === "live");

  const late = await open("gina");
  await waitFor(async () => (await typeOf(late.id)).includes("connected"), { what: "gina's connected event, live" });
  const text = await page.$eval("#events li:first-child .event-type", (el) => el.textContent);
  assert.ok(["connected", "authenticated"].includes(text), `newest first: ${text}`);
  await rowsAre(page, [early.id, late.id], "gina's row appears");

  late.ws.close(1000);
  await waitFor(async () => (await typeOf(late.id)).includes("disconnected"), { what: "gina's disconnected event" });
  await rowsAre(page, [early.id], "gina's row left");
  assert.deepEqual(errors, []);
});

test("dashboard: connects per second and open connections are drawn; a screenshot", T, async (t) => {
  const { server, page, errors, open } = await setup(t);
  await signIn(page, server.adminKey);
  // Some traffic over a dozen seconds: bursts of connects, and a few that leave.
  const versions = ["web/2.1", "ios/5.0", "android/3.2"];
  const leaving = [];
  for (let i = 0; i < 8; i++) {
    for (let k = 0; k < (i % 3) + 1; k++) {
      const s = await open(["alice", "bob", "carol", "dan"][(i + k) % 4], versions[(i * 2 + k) % 3]);
      if (i === 2 && k === 0) leaving.push(s);
    }
    if (i === 5) for (const s of leaving) s.ws.close(1000);
    await new Promise((r) => setTimeout(r, 1500));
  }
  const expectOpen = String(1 + 2 + 3 + 1 + 2 + 3 + 1 + 2 - leaving.length);
  await page.waitForFunction(() => document.querySelectorAll("#chart-open polyline").length === 1
    && document.querySelector("#chart-open polyline").getAttribute("points").split(" ").length >= 3, null, { timeout: 20000 });
  await page.waitForFunction(() => document.querySelector("#chart-connects polyline") !== null);
  await page.waitForFunction((n) => document.querySelector("#open-now").textContent === n, expectOpen);
  const rate = await page.$eval("#chart-connects polyline", (p) => p.getAttribute("points").split(" ").map((xy) => Number(xy.split(",")[1])));
  assert.ok(rate.some((y) => y < 110), `some connects were drawn above the baseline: ${rate}`);
  const out = process.env.TETHER_DASHBOARD_SCREENSHOT ?? join(tmpdir(), "tether-dashboard.png");
  mkdirSync(dirname(out), { recursive: true });
  const png = await page.screenshot({ path: out, fullPage: true });
  assert.deepEqual([...png.subarray(1, 4)].map((b) => String.fromCharCode(b)).join(""), "PNG");
  assert.deepEqual(errors, []);
  await server.api("GET", "/v1/health");
});
