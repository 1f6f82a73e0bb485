// Test harness: the real tether binary on a free loopback port with a temporary data
// directory, HS256 tokens minted with the server's generated secret, and the admin API.
//
// Every server started here is killed and its directory removed when the test ends
// (`server.cleanup()`, registered with `t.after`), and when the test process exits.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../../..");
export const clientDir = resolve(here, "..");

/** The server binary: $TETHER_BIN, else the debug build (in $CARGO_TARGET_DIR if set). */
export function tetherBin() {
  const target = process.env.CARGO_TARGET_DIR ? resolve(repoRoot, process.env.CARGO_TARGET_DIR) : join(repoRoot, "target");
  const bin = process.env.TETHER_BIN ?? join(target, "debug/tether");
  if (!existsSync(bin)) {
    throw new Error(`no tether binary at ${bin}: run \`cargo build\` first, or set TETHER_BIN`);
  }
  return bin;
}

/** Servers not cleaned up yet: the last resort on exit kills them and removes their dirs. */
const servers = new Set();
process.on("exit", () => {
  for (const s of servers) {
    s.killNow();
    rmSync(s.tmp, { recursive: true, force: true });
  }
});
// A test process stopped from outside (a timeout, Ctrl-C) takes its servers with it.
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(sig, () => process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 })[sig]));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; fails with `what` after `timeout` ms. */
export async function waitFor(fn, { timeout = 10000, interval = 20, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** A port nobody listens on (bound, then released): connects to it are refused. */
export function deadPort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const b64url = (b) => Buffer.from(b).toString("base64url");

/** An HS256 JWT. */
export function mintJwt(secret, claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function tomlString(text, key) {
  const m = text.match(new RegExp(`^${key}\\s*=\\s*"([^"]*)"`, "m"));
  if (!m) throw new Error(`no ${key} in secrets.toml`);
  return m[1];
}

export class Server {
  /** Starts `tether serve` on 127.0.0.1:0 with a new temporary data directory. */
  static async start(args = []) {
    const tmp = mkdtempSync(join(tmpdir(), "tether-js-"));
    const s = new Server(tmp, join(tmp, "data"), args);
    await s.#spawn("127.0.0.1:0");
    return s;
  }

  constructor(tmp, dir, args) {
    this.tmp = tmp;
    this.dir = dir;
    this.args = args;
    this.child = null;
    this.log = "";
    this.port = 0;
    servers.add(this);
  }

  get base() { return `http://127.0.0.1:${this.port}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.port}/ws`; }
  get pid() { return this.child?.pid; }

  async #spawn(listen) {
    const env = { ...process.env, NO_COLOR: "1" };
    delete env.RUST_LOG;
    const child = spawn(tetherBin(), ["serve", "--listen", listen, "--data-dir", this.dir, ...this.args], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
    const listening = new Promise((res, rej) => {
      let buf = "";
      const onData = (d) => {
        this.log += d;
        buf += d;
        const m = buf.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (m) res(Number(m[1]));
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      child.once("exit", () => rej(new Error(`tether exited before listening:\n${this.log}`)));
      setTimeout(() => rej(new Error(`tether did not listen within 10 s:\n${this.log}`)), 10000).unref();
    });
    this.port = await listening;
    const secrets = readFileSync(join(this.dir, "secrets.toml"), "utf8");
    this.jwtSecret = tomlString(secrets, "jwt_secret");
    this.adminKey = tomlString(secrets, "admin_api_key");
    await waitFor(async () => {
      try {
        return (await fetch(`${this.base}/ready`)).status === 200;
      } catch {
        return false;
      }
    }, { what: "/ready" });
  }

  /** A JWT for `sub`, valid `ttlSeconds`, with `extra` claims. */
  token(sub, { ttlSeconds = 3600, ...extra } = {}) {
    const now = Math.floor(Date.now() / 1000);
    return mintJwt(this.jwtSecret, { sub, iat: now, exp: now + ttlSeconds, ...extra });
  }

  /** An admin API call: {status, body}. */
  async api(method, path, body) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.adminKey}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    return { status: r.status, body: json };
  }

  /** POST /v1/users/{id}/messages, failing the test unless it was accepted. */
  async sendToUser(user, data) {
    const r = await this.api("POST", `/v1/users/${encodeURIComponent(user)}/messages`, { data });
    if (r.status !== 200) throw new Error(`send to ${user}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  async kill9() {
    if (!this.child) return;
    this.child.kill("SIGKILL");
    await this.exited;
    this.child = null;
  }

  /** SIGTERM, and wait for the exit (the server closes its sockets with 1001 first). */
  async stop() {
    if (!this.child) return;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child?.kill("SIGKILL"), 15000);
    const r = await this.exited;
    clearTimeout(t);
    this.child = null;
    return r;
  }

  signal(sig) { this.child.kill(sig); }

  /** Starts again on the same data directory and port. */
  async restart() {
    if (this.child) await this.stop();
    await this.#spawn(`127.0.0.1:${this.port}`);
  }

  killNow() {
    try {
      this.child?.kill("SIGCONT");
      this.child?.kill("SIGKILL");
    } catch { /* gone */ }
  }

  async cleanup() {
    if (this.child) {
      this.killNow();
      await this.exited;
      this.child = null;
    }
    rmSync(this.tmp, { recursive: true, force: true });
    servers.delete(this);
  }
}

/** Records what a client emits, for assertions. */
export class Recorder {
  constructor(client) {
    this.states = [];
    this.messages = [];
    this.sessions = [];
    this.closed = [];
    client.on("state", (state, detail) => this.states.push({ state, detail, at: Date.now() }));
    client.on("message", (data, frame) => this.messages.push({ data, seq: frame.seq }));
    client.on("session", (updates, frame) => this.sessions.push({ updates, frame }));
    client.on("closed", (c) => this.closed.push(c));
  }

  /** Waits for a state (counting from `from`, an index into `states`). */
  async state(name, { from = 0, timeout = 10000 } = {}) {
    return waitFor(() => this.states.slice(from).find((s) => s.state === name), {
      timeout,
      what: `state ${name} (seen: ${this.states.map((s) => s.state).join(", ")})`,
    });
  }

  async messageCount(n, timeout = 10000) {
    await waitFor(() => this.messages.length >= n, {
      timeout,
      what: `${n} messages (have ${this.messages.length}: ${JSON.stringify(this.messages.map((m) => m.data))})`,
    });
  }
}
