// Type declarations for tether.js. The wire protocol is described in docs/protocol.md.

/** Where the client keeps connectionId, resumeToken and lastSeq (sessionStorage fits). */
export interface TetherStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem?(key: string): void;
}

export interface TetherClientOptions {
  /** Called on every (re)connect and before each refresh. A JWT, an API key (`tk_…`) or a
   * session id; a JWT (three dot-separated parts) is refreshed before the connection expires. */
  token?: string | (() => string | Promise<string>);
  /** A session id, when `token` is not given. */
  sessionId?: string | (() => string | Promise<string>);
  /** Where state is kept between page loads; in memory when absent. */
  storage?: TetherStorage;
  /** The key under which state is kept (default `tether:<url>`). */
  storageKey?: string;
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** Backoff before a reconnect: random(0, min(cap, base · 2^attempt)). Defaults 500 and 20000. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** A connection open this long resets the backoff (default 10000). */
  stableAfterMs?: number;
  /** Acks are sent at most this long after a delivery (default 2000), and on close(). */
  ackIntervalMs?: number;
  /** Time from opening a socket to its welcome before it is given up (default 10000). */
  connectTimeoutMs?: number;
  /** Silence before a ping, and after it before the socket counts as lost (default: the
   * welcome's heartbeatIntervalMs). */
  heartbeatIntervalMs?: number;
}

export type TetherState = "connecting" | "open" | "reconnecting" | "closed";

export interface WelcomeFrame {
  type: "welcome";
  connectionId: string;
  userId: string;
  sessionId: string | null;
  resumeToken: string;
  resumed: boolean;
  previousConnectionId: string | null;
  resumeError: string | null;
  expiresAt: string;
  heartbeatIntervalMs: number;
  limits: { messagesPerMinute: number; maxMessageBytes: number };
  seq: number;
}

export interface MessageFrame<T = unknown> {
  type: "message";
  seq: number;
  data: T;
  ts: string;
}

export interface SessionUpdatedFrame {
  type: "session.updated";
  seq: number;
  sessionId: string;
  updates: Record<string, unknown>;
  source: "http" | "websocket";
  connectionId: string | null;
  ts: string;
}

export interface AckFrame {
  type: "ack";
  id: number | string;
}

export type StateDetail =
  | { attempt: number } // connecting
  | { connectionId: string; resumed: boolean; previousConnectionId: string | null; resumeError: string | null } // open
  | { code: number; reason: string; attempt: number; delayMs: number; error?: unknown } // reconnecting
  | { code: number; reason: string }; // closed

export interface TetherEvents {
  message: (data: unknown, frame: MessageFrame) => void;
  session: (updates: Record<string, unknown>, frame: SessionUpdatedFrame) => void;
  state: (state: TetherState, detail: StateDetail) => void;
  closed: (close: { code: number; reason: string }) => void;
}

export class TetherClient {
  constructor(url: string | URL, options: TetherClientOptions);
  /** The current connection id; a resume gives a new one. */
  readonly connectionId: string | null;
  readonly userId: string | null;
  readonly sessionId: string | null;
  /** The seq of the last `message` or `session.updated` delivered. */
  readonly lastSeq: number;
  on<E extends keyof TetherEvents>(event: E, listener: TetherEvents[E]): this;
  off<E extends keyof TetherEvents>(event: E, listener: TetherEvents[E]): this;
  /** Resolves with the first welcome; rejects if the client closes for good first. */
  connect(): Promise<WelcomeFrame>;
  /** Resolves on the server's ack; rejects with a TetherError on its error frame. */
  updateSession(updates: Record<string, unknown>): Promise<AckFrame>;
  /** Resolves with the round trip in ms. */
  ping(): Promise<number>;
  /** Acks, closes with 1000 and stops every timer; resolves once the socket is closed. */
  close(): Promise<void>;
}

export class TetherError extends Error {
  /** The server's error code, or `connection_lost`, `not_connected`, `closed`, `too_large`. */
  code: string;
  retryAfterMs?: number;
  closeCode?: number;
  frame?: { type: "error"; code: string; message: string; id: number | string | null; retryAfterMs?: number };
}

/** Full-jitter backoff in ms: random(0, min(capMs, baseMs · 2^attempt)). */
export function backoff(
  attempt: number,
  options?: { baseMs?: number; capMs?: number; random?: () => number },
): number;

/** Whether a close code means "reconnect and resume". */
export function shouldReconnect(code: number): boolean;
