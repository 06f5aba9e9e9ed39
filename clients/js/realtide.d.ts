// Types of realtide's JavaScript client (realtide.js), for editors and TypeScript.

export type Status = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'disconnected';

export type ErrorCode =
  | 'unauthorized'
  | 'forbidden'
  | 'token_expired'
  | 'server_gone'
  | 'closed'
  | (string & {});

export interface RealtimeError extends Error {
  code: ErrorCode;
  /** The WebSocket close code, when the server closed the connection. */
  closeCode?: number;
  /** The HTTP status of a refused handshake. */
  status?: number;
}

export interface ClientOptions {
  /** ws(s)://host:port/api/realtime */
  url: string;
  /** A JWT, sent as the `token` query parameter. */
  token?: string;
  /** Called for a token before connecting, before it expires, and after it was refused or expired. */
  getToken?: () => string | Promise<string>;
  /** A project API key, sent as the `apiKey` query parameter. */
  apiKey?: string;
  projectId?: string;
  /** The identity in open mode (no JWT secret on the server). */
  userId?: string;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: unknown;
  /**
   * What to connect with, in order (default `['websocket', 'sse']`): when the
   * server answers but a WebSocket cannot open (a proxy refuses upgrades),
   * the client moves to server-sent events and stays on them.
   */
  transports?: Array<'websocket' | 'sse'>;
  /** First reconnect delay (default 250 ms). */
  minDelayMs?: number;
  /** Longest reconnect delay (default 10 s). */
  maxDelayMs?: number;
}

export interface ChannelOptions {
  /** Table topics: rows to receive, e.g. `{ status: 'shipped', amount: { gt: 100 } }`. */
  filter?: Record<string, unknown>;
  /** Pub/sub topics: whether this client hears its own publishes (default true). */
  echo?: boolean;
  /** Pub/sub topics: the last N stored messages first (at most 100). */
  history?: number;
  /**
   * Table topics: keep the table's matching rows (`channel.rows`, and a
   * `rows` event whenever they change). They are loaded with the
   * subscription and kept by every change after; across reconnects the
   * channel resumes, and reloads the rows only when it cannot.
   */
  rows?: boolean;
}

export interface Frame {
  type: string;
  topic?: string;
  event?: string;
  operation?: 'INSERT' | 'UPDATE' | 'DELETE';
  data?: any;
  old?: any;
  userId?: string | null;
  timestamp?: number;
  seq?: number;
  message_id?: string;
  [field: string]: unknown;
}

export interface HistoryMessage {
  id: string;
  room_id: string;
  user_id: string | null;
  event: string;
  data: any;
  created_at: number;
  seq: number;
}

export type Presence = Record<string, { conn: string; state: Record<string, unknown> }[]>;

export interface Channel {
  readonly topic: string;
  /** With `rows: true`: the table's matching rows as this channel holds them. */
  readonly rows: Record<string, unknown>[];
  /** `INSERT`, `UPDATE`, `DELETE`, `rows` (with `rows: true`), an event name, `chat`, `presence:sync|join|leave`, `resync`, `unsubscribed`, `error` (a refused subscription), or `'*'`. */
  on(event: string, callback: (frame: Frame) => void): Channel;
  off(event: string, callback: (frame: Frame) => void): Channel;
  /** Subscribes (connecting the client if needed); resolves with `subscribed`. */
  subscribe(): Promise<Frame>;
  unsubscribe(): Promise<Frame | void>;
  /** Resolves with the ack (`seq`, and `message_id` when persisted). */
  publish(event: string, data: unknown, options?: { persist?: boolean }): Promise<Frame>;
  /** The legacy chat of `chat/<room>` channels: a persisted `chat` event. */
  sendChat(text: string, metadata?: Record<string, unknown>): Promise<Frame>;
  /** Stored messages, newest first, before a time (ms) or a message id. */
  getHistory(limit?: number, before?: number | string): Promise<HistoryMessage[]>;
  track(state: Record<string, unknown>): Promise<Frame>;
  untrack(): Promise<Frame>;
  presence(): Presence;
}

export interface RealtimeClient {
  readonly status: Status;
  readonly lastError: RealtimeError | null;
  /** The server's `welcome` frame while connected. */
  readonly welcome: Frame | null;
  channel(topic: string, options?: ChannelOptions): Channel;
  connect(): void;
  disconnect(): void;
  /** Swaps the token; a connected client sends it at once. */
  setToken(token: string): Promise<unknown>;
  onStatusChange(listener: (status: Status) => void): () => void;
  onError(listener: (error: RealtimeError) => void): () => void;
}

export function createClient(options: ClientOptions): RealtimeClient;
