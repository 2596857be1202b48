/*
 * TypeScript declarations of the wsgi_longpoll browser client: the ES module longpoll.js
 * and the plain script longpoll.global.js (globalThis.WsgiLongpoll).
 */

/** An event as the server sends it. */
export interface LongpollEvent<Data = unknown> {
  /** Epoch milliseconds. */
  timestamp: number;
  category: string;
  data: Data;
  /** A UUID. */
  id: string;
}

/** Where a client is: just after the event it handed out last. */
export interface Cursor {
  sinceTime: number;
  lastId: string;
}

/** Where to start: null = from now, a number = after that epoch-ms time, or a cursor. */
export type CursorOption = null | number | { sinceTime: number; lastId?: string | null };

export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "stopped";

/** With "reconnecting": the errors in a row, the pause before the next poll, the error. */
export interface ReconnectingDetail {
  failures: number;
  delayMs: number;
  error: Error;
}

/** One category's gap: the newest event the server dropped before the client saw it. */
export interface Gap {
  category: string;
  sinceTime: number;
  lastId: string;
}

export interface GapDetail {
  gaps: Gap[];
  /** Where the client was when it asked. */
  cursor: Cursor | null;
}

export interface BackoffOptions {
  /** The first pause's ceiling, ms (default 500). */
  initialMs?: number;
  /** The largest pause, ms (default 30000). */
  maximumMs?: number;
  /** How much the ceiling grows after each error in a row (default 2). */
  multiplier?: number;
  /** A number in [0, 1) (default Math.random). */
  random?: () => number;
}

/** Pauses after errors, with exponential growth and full jitter. */
export class Backoff {
  constructor(options?: BackoffOptions);
  readonly initialMs: number;
  readonly maximumMs: number;
  readonly multiplier: number;
  random: () => number;
  /** The largest pause after the n-th error in a row. */
  ceiling(failures: number): number;
  /** A pause drawn uniformly from [0, ceiling(failures)]. */
  delay(failures: number): number;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface LongpollClientOptions<Data = unknown> {
  /** The subscription endpoint, e.g. "/events". */
  subscribeUrl: string;
  /** The category to follow (this or `categories` is required). */
  category?: string;
  /** More categories to follow in the same polls (a wsgi_longpoll extension). */
  categories?: Iterable<string>;
  /** The publish endpoint, for publish(). */
  publishUrl?: string;
  /** The long-poll timeout asked of the server (default 45). */
  timeoutSeconds?: number;
  cursor?: CursorOption;
  /** Keep the cursor in `storage` under this key and start from it. */
  storageKey?: string;
  /** Default: localStorage when storageKey is given. */
  storage?: StorageLike;
  username?: string;
  password?: string;
  headers?: Record<string, string>;
  /** fetch's credentials mode (default "same-origin"). */
  credentials?: RequestCredentials;
  backoff?: Backoff | BackoffOptions;
  onEvent?: (event: LongpollEvent<Data>) => void;
  onState?: (state: ClientState, detail: ReconnectingDetail | null) => void;
  /** Each failed poll (delayMs: the pause before the next), or a rejection (null). */
  onError?: (error: Error, delayMs: number | null) => void;
  onGap?: (detail: GapDetail) => void;
  fetch?: typeof fetch;
  /**
   * "longpoll" (default): long polls with fetch. "eventsource": Server-Sent Events through
   * EventSource, falling back to long polls from the same cursor where it is missing or
   * the server answers no stream; throws a TypeError with `headers` or basic auth.
   * "auto": "eventsource" where it can be used, else "longpoll".
   */
  transport?: Transport;
  /** The EventSource constructor to use (default: the global one). */
  EventSource?: typeof EventSource;
  /**
   * A subscribe token for a server that requires one (sent as the `token` query
   * parameter), or a function that returns one: called before the first poll and again
   * whenever the server refuses the token (401 or 403: it expired).
   */
  token?: string | (() => string | Promise<string>);
}

export type Transport = "longpoll" | "eventsource" | "auto";

/** Follows one category, or several with one cursor, and publishes. */
export class LongpollClient<Data = unknown> {
  constructor(options: LongpollClientOptions<Data>);
  readonly categories: string[];
  /** The first category followed; publish()'s default. */
  readonly category: string;
  readonly subscribeUrl: string;
  readonly publishUrl: string | null;
  readonly timeoutSeconds: number;
  readonly transport: Transport;
  /** What the client uses (or will use on start()). */
  readonly transportInUse: "eventsource" | "longpoll";
  readonly storageKey: string | null;
  readonly storage: StorageLike | null;
  username: string;
  password: string;
  headers: Record<string, string>;
  credentials: RequestCredentials;
  backoff: Backoff;
  onEvent: (event: LongpollEvent<Data>) => void;
  onState: (state: ClientState, detail: ReconnectingDetail | null) => void;
  onError: (error: Error, delayMs: number | null) => void;
  onGap: (detail: GapDetail) => void;
  /** Just after the last event handed out, or null. */
  readonly cursor: Cursor | null;
  readonly state: ClientState;
  /** Start following; returns at once. */
  start(): void;
  /** Stop following; no event is handed out after. */
  stop(): void;
  /** Publish `data` (any JSON value but null) to `category` (default: the first followed). */
  publish(data: unknown, category?: string): Promise<{ success: true }>;
}

/** The server refused the subscription in a way that trying again cannot fix. */
export class SubscriptionRejected extends Error {
  constructor(message: string, status: number, serverError?: string | null);
  readonly name: "SubscriptionRejected";
  /** The HTTP status (200 with a protocol error). */
  readonly status: number;
  /** The server's "error" text, or null. */
  readonly serverError: string | null;
}

/** A publish was not accepted; `status` is the HTTP status (0: no answer). */
export class PublishError extends Error {
  constructor(message: string, status: number, serverError?: string | null);
  readonly name: "PublishError";
  readonly status: number;
  readonly serverError: string | null;
}

/** The client's version: the package's. */
export const VERSION: string;

/** What longpoll.global.js defines as globalThis.WsgiLongpoll (and longpoll.js exports). */
export interface WsgiLongpollApi {
  VERSION: typeof VERSION;
  Backoff: typeof Backoff;
  LongpollClient: typeof LongpollClient;
  PublishError: typeof PublishError;
  SubscriptionRejected: typeof SubscriptionRejected;
}

declare const api: WsgiLongpollApi;
export default api;

declare global {
  /** Defined by longpoll.global.js. */
  var WsgiLongpoll: WsgiLongpollApi;
}
