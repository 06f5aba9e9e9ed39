// realtide's JavaScript client: an ES module with no build step, for browsers
// and Node 20+ (pass `WebSocket` in Node 20, or run it with
// --experimental-websocket). One WebSocket carries every channel; after a
// reconnect each channel resubscribes with `since`/`epoch`, so no event is
// lost or repeated, and the app is told (`resync`) when the server could not
// recover what was missed. Where a WebSocket cannot open (a proxy refuses
// the upgrade) the same API runs over server-sent events: the server's
// frames on one HTTP stream, the client's requests as POSTs.

const STATUSES = ['idle', 'connecting', 'connected', 'reconnecting', 'disconnected'];
const PING_EVERY_MS = 30000;
/** A connection must stay up this long before the reconnect backoff starts over. */
const STABLE_AFTER_MS = 5000;
/** A token is refreshed this long before it expires (a short-lived one at 80% of its life). */
const REFRESH_AHEAD_MS = 30000;

/**
 * @param {object} options
 * @param {string} options.url         ws(s)://host:port/api/realtime
 * @param {string} [options.token]     a JWT (sent as the `token` query parameter)
 * @param {string} [options.projectId]
 * @param {string} [options.userId]    identity in open mode
 * @param {() => (string|Promise<string>)} [options.getToken] called for a token before
 *        connecting, before the token expires, and after the server refused or expired it
 * @param {string} [options.apiKey]    a project API key (sent as the `apiKey` query parameter)
 * @param {Function} [options.WebSocket] a WebSocket implementation (default: the global one)
 * @param {string[]} [options.transports=['websocket','sse']] what to connect with, in order:
 *        the client moves to server-sent events when the server answers but a
 *        WebSocket cannot open (a proxy on the way refuses upgrades), and stays on them
 * @param {number} [options.minDelayMs=250]  first reconnect delay
 * @param {number} [options.maxDelayMs=10000] longest reconnect delay
 */
export function createClient(options) {
  return new RealtimeClient(options);
}

/** A JWT's `exp` (Unix seconds), or null. */
function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = typeof atob === 'function' ? atob(payload) : Buffer.from(payload, 'base64').toString();
    return JSON.parse(json).exp ?? null;
  } catch {
    return null;
  }
}

class RealtimeClient {
  constructor({
    url, token, projectId, userId, getToken, apiKey, WebSocket: WS, minDelayMs = 250, maxDelayMs = 10000,
    transports = ['websocket', 'sse'],
  }) {
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.apiKey = apiKey;
    this.errorListeners = new Set();
    this.lastError = null;
    this.needToken = Boolean(getToken) && !token;
    this.projectId = projectId;
    this.userId = userId;
    this.WS = WS || globalThis.WebSocket;
    this.transports = transports.filter((t) => t === 'sse' || (t === 'websocket' && this.WS));
    if (this.transports.length === 0) {
      throw new Error("realtide: no transport; pass { WebSocket } or include 'sse' in transports");
    }
    /** The transport in use: the first that works, kept once found. */
    this.transport = this.transports[0];
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.status = 'idle';
    this.statusListeners = new Set();
    this.channels = new Map();
    this.pending = new Map();
    this.nextRef = 1;
    this.attempt = 0;
    this.socket = null;
    this.welcome = null;
    this.wanted = false;
    this.timer = null;
  }

  /** Calls `listener(status)` on every change; returns a function that stops it. */
  onStatusChange(listener) {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /**
   * Calls `listener(error)` when the connection fails, with `error.code`:
   * `unauthorized` or `forbidden` (the server refused the credentials: the
   * client stops unless `getToken` can bring a new token), `token_expired`,
   * `server_gone` (nothing answers; the client keeps retrying) or `closed`
   * (the server closed the connection, `error.closeCode` says how).
   * Returns a function that stops it.
   */
  onError(listener) {
    this.errorListeners.add(listener);
    return () => this.errorListeners.delete(listener);
  }

  fail(code, message, extra = {}) {
    this.lastError = Object.assign(new Error(message), { code }, extra);
    for (const listener of this.errorListeners) listener(this.lastError);
  }

  setStatus(status) {
    if (!STATUSES.includes(status) || status === this.status) return;
    this.status = status;
    for (const listener of this.statusListeners) listener(status);
  }

  /** A channel on `topic` (one per topic and client). */
  channel(topic, options = {}) {
    let channel = this.channels.get(topic);
    if (!channel) {
      channel = new Channel(this, topic, options);
      this.channels.set(topic, channel);
    } else {
      channel.options = { ...channel.options, ...options };
    }
    return channel;
  }

  /** Swaps the token; a connected client sends it at once (`auth`). */
  setToken(token) {
    this.token = token;
    if (this.status === 'connected') return this.request({ type: 'auth', token });
    return Promise.resolve();
  }

  /** The query string of the handshake (and of its HTTP check). */
  query() {
    const query = new URLSearchParams();
    if (this.token) query.set('token', this.token);
    if (this.apiKey) query.set('apiKey', this.apiKey);
    if (this.projectId) query.set('projectId', this.projectId);
    if (this.userId) query.set('userId', this.userId);
    const qs = query.toString();
    return qs ? `?${qs}` : '';
  }

  connect() {
    this.wanted = true;
    if (this.socket || this.opening) return;
    this.setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting');
    this.opening = this.open().finally(() => {
      this.opening = null;
    });
  }

  async open() {
    if (this.needToken) {
      try {
        this.token = await this.getToken();
        this.needToken = false;
      } catch (error) {
        this.fail('unauthorized', `getToken failed: ${error?.message ?? error}`);
        return this.retry();
      }
    }
    if (!this.wanted) return;
    const socket = this.transport === 'sse'
      ? new EventStreamSocket(`${this.httpUrl()}/sse${this.query()}`)
      : new this.WS(`${this.url}${this.query()}`, ['aerostack-v1']);
    this.socket = socket;
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (event) => this.dropped(socket, event?.code);
    // Some implementations (Node's) report a refused handshake as an error only.
    socket.onerror = () => {
      if (socket.readyState !== 1) this.dropped(socket);
    };
  }

  /** The server's HTTP address for this connection's path (`http(s)://…/api/realtime`). */
  httpUrl() {
    return this.url.replace(/^ws/, 'http');
  }

  /** Asks the server over HTTP why the handshake failed: the WebSocket API hides it. */
  async why() {
    try {
      const response = await fetch(`${this.httpUrl()}/check${this.query()}`);
      if (response.ok) return null;
      const body = await response.json().catch(() => ({}));
      return { status: response.status, code: body?.error?.code, message: body?.error?.message };
    } catch {
      return { status: 0, code: 'server_gone', message: 'the server does not answer' };
    }
  }

  retry() {
    if (!this.wanted) return;
    this.setStatus('reconnecting');
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Schedules a fresh token (through `getToken`) ahead of this one's `exp`. */
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiry(this.token);
    if (!this.getToken || !exp) return;
    const left = exp * 1000 - Date.now();
    const ahead = Math.max(0, left - REFRESH_AHEAD_MS, left * 0.8);
    this.refreshTimer = setTimeout(async () => {
      try {
        await this.setToken(await this.getToken());
        this.scheduleRefresh();
      } catch (error) {
        this.fail('token_expired', `could not refresh the token: ${error?.message ?? error}`);
      }
    }, ahead);
  }

  /** Closes for good; channels stay defined but receive nothing more. */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.stableTimer);
    clearInterval(this.pinger);
    const socket = this.socket;
    this.socket = null;
    this.failPending(new Error('disconnected'));
    if (socket) socket.close(1000);
    this.setStatus('disconnected');
  }

  async dropped(socket, closeCode) {
    if (socket !== this.socket) return;
    const welcomed = this.welcome !== null;
    this.socket = null;
    this.welcome = null;
    clearInterval(this.pinger);
    clearTimeout(this.stableTimer);
    this.failPending(new Error('connection lost'));
    for (const channel of this.channels.values()) channel.connectionLost();
    if (!this.wanted) return;
    if (closeCode === 4001) {
      this.fail('token_expired', 'the token expired', { closeCode });
      if (this.getToken) this.needToken = true;
    } else if (welcomed) {
      this.fail('closed', `the server closed the connection (${closeCode ?? 'no code'})`, { closeCode });
    } else {
      // Refused, or never reached: ask why.
      const refusal = await this.why();
      if (!this.wanted) return;
      if (refusal?.code === 'unauthorized' || refusal?.code === 'forbidden') {
        this.fail(refusal.code, refusal.message ?? refusal.code, { status: refusal.status });
        if (refusal.code === 'unauthorized' && this.getToken) {
          this.needToken = true;
        } else {
          // Retrying the same credentials would be refused again.
          this.wanted = false;
          this.setStatus('disconnected');
          return;
        }
      } else if (refusal) {
        this.fail(refusal.code ?? 'server_gone', refusal.message ?? 'the handshake failed');
      } else if (this.transport === 'websocket' && this.transports.includes('sse')) {
        // The server answers and takes these credentials, yet no WebSocket
        // opened: something on the way refuses upgrades.
        this.transport = 'sse';
      }
    }
    this.retry();
  }

  failPending(error) {
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(typeof text === 'string' ? text : String(text));
    } catch {
      return;
    }
    if (frame.type === 'welcome') {
      this.welcome = frame;
      // The backoff starts over only once a connection proves stable: one
      // that dies at once keeps backing off.
      this.stableTimer = setTimeout(() => {
        this.attempt = 0;
      }, STABLE_AFTER_MS);
      this.lastError = null;
      this.setStatus('connected');
      this.scheduleRefresh();
      this.pinger = setInterval(() => this.send({ type: 'ping' }), PING_EVERY_MS);
      for (const channel of this.channels.values()) if (channel.wanted) channel.resubscribe();
      return;
    }
    if (frame.ref !== undefined && this.pending.has(frame.ref)) {
      const { resolve, reject } = this.pending.get(frame.ref);
      this.pending.delete(frame.ref);
      if (frame.type === 'error') reject(Object.assign(new Error(frame.message), { code: frame.code }));
      else resolve(frame);
    }
    if (frame.topic !== undefined) {
      for (const channel of this.channels.values()) {
        if (channel.spelling === frame.topic || channel.topic === frame.topic) channel.receive(frame);
      }
    }
  }

  send(frame) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(frame));
  }

  /** Sends a request with a fresh `ref`; resolves with its reply, rejects on `error`. */
  request(frame) {
    const ref = `r${this.nextRef++}`;
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== 1) {
        reject(new Error('not connected'));
        return;
      }
      this.pending.set(ref, { resolve, reject });
      this.send({ ...frame, ref });
    });
  }
}

/**
 * A connection over server-sent events with a WebSocket's face (`readyState`,
 * `send`, `close`, `onmessage`, `onclose`), so the client runs the same on
 * either: the server's frames come on one `fetch` stream; requests go as
 * POSTs with the stream's session secret, one at a time (queued ones
 * together, as an array), so they keep their order.
 */
class EventStreamSocket {
  constructor(url) {
    this.readyState = 0;
    this.base = url.split('?')[0];
    this.queue = [];
    this.posting = false;
    this.abort = new AbortController();
    this.run(url);
  }

  async run(url) {
    let closeCode;
    try {
      const response = await fetch(url, {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: this.abort.signal,
      });
      if (!response.ok || !response.body) throw new Error(`status ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.event === 'close') {
            closeCode = JSON.parse(event.data)?.code ?? undefined;
          } else if (event.data !== undefined) {
            this.frame(event.data);
          }
        }
      }
    } catch {
      // The stream failed or was aborted: the connection is over.
    }
    this.finish(closeCode);
  }

  frame(data) {
    if (this.readyState === 0) {
      const welcome = JSON.parse(data);
      if (welcome.type !== 'welcome') return;
      this.postUrl = `${this.base}/${welcome.conn}`;
      this.session = welcome.session;
      this.readyState = 1;
    }
    this.onmessage?.({ data });
  }

  finish(code) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.abort.abort();
    this.onclose?.({ code });
  }

  send(text) {
    this.queue.push(text);
    this.flush();
  }

  async flush() {
    if (this.posting || this.queue.length === 0 || this.readyState !== 1) return;
    this.posting = true;
    const batch = this.queue.splice(0);
    try {
      const response = await fetch(this.postUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Realtide-Session': this.session },
        body: `[${batch.join(',')}]`,
      });
      if (response.status !== 202) throw new Error(`status ${response.status}`);
    } catch {
      // A request that may not have arrived: start over on a fresh connection
      // (whose resubscribes resume), rather than leave a reply missing.
      this.posting = false;
      this.finish(undefined);
      return;
    }
    this.posting = false;
    this.flush();
  }

  close() {
    this.finish(1000);
  }
}

/** One SSE event's fields. */
function parseEvent(block) {
  const event = {};
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') event.data = event.data === undefined ? value : `${event.data}\n${value}`;
    else if (field === 'event' || field === 'id') event[field] = value;
  }
  return event;
}

/** Values compared as the server compares them: numbers numerically, strings by code point, other types never ordered. */
function compare(a, b) {
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  return null;
}

function same(a, b) {
  return a === b || (a !== null && b !== null && typeof a === 'object' && JSON.stringify(a) === JSON.stringify(b));
}

const OPERATORS = {
  eq: (v, w) => same(v, w),
  neq: (v, w) => !same(v, w),
  lt: (v, w) => compare(v, w) === -1,
  lte: (v, w) => [-1, 0].includes(compare(v, w)),
  gt: (v, w) => compare(v, w) === 1,
  gte: (v, w) => [0, 1].includes(compare(v, w)),
  in: (v, w) => Array.isArray(w) && w.some((x) => same(v, x)),
};

/** Whether `row` matches a subscription filter (`{column: value}` or `{column: {op: value}}`). */
function matches(filter, row) {
  if (!filter) return true;
  return Object.entries(filter).every(([column, wanted]) => {
    if (!(column in row)) return false;
    const value = row[column];
    if (wanted !== null && typeof wanted === 'object' && !Array.isArray(wanted)) {
      return Object.entries(wanted).every(([op, w]) => OPERATORS[op]?.(value, w) ?? false);
    }
    return same(value, wanted);
  });
}

class Channel {
  constructor(client, topic, options) {
    this.client = client;
    this.topic = topic;
    this.spelling = topic;
    this.options = options;
    this.listeners = new Map();
    this.wanted = false;
    this.subscribedOnce = false;
    this.epoch = null;
    this.lastSeq = null;
    this.presenceState = {};
    this.trackedState = null;
    this.historyLeft = 0;
    // With `rows: true` (table topics): the table's matching rows, by key.
    this.rowMap = new Map();
    this.key = null;
    this.staged = null;
  }

  /** The table's matching rows as this channel holds them (`rows: true`). */
  get rows() {
    return [...this.rowMap.values()];
  }

  /** Listens to an event: `INSERT`, `UPDATE`, `DELETE`, a custom name,
   * `presence:sync|join|leave`, `resync`, `error` (a refused subscription),
   * or `'*'` for every event. */
  on(event, callback) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(callback);
    return this;
  }

  off(event, callback) {
    this.listeners.get(event)?.delete(callback);
    return this;
  }

  emit(event, payload) {
    for (const callback of this.listeners.get(event) ?? []) callback(payload);
    if (event !== 'resync' && event !== 'subscribed' && event !== 'error') {
      for (const callback of this.listeners.get('*') ?? []) callback(payload);
    }
  }

  /**
   * Subscribes (connecting the client if needed); resolves with `subscribed`.
   * A refusal rejects the promise and reaches the channel's `error`
   * listeners, so code that ignores the promise (as the SDKs' examples do)
   * still hears of it, without an unhandled rejection.
   */
  subscribe() {
    this.wanted = true;
    this.client.connect();
    const subscribed = new Promise((resolve, reject) => {
      this.onSubscribed = { resolve, reject };
      if (this.client.status === 'connected') this.resubscribe();
    });
    subscribed.catch((error) => this.emit('error', error));
    return subscribed;
  }

  resubscribe() {
    const frame = { type: 'subscribe', topic: this.topic };
    const { filter, echo, history, rows } = this.options;
    if (filter !== undefined) frame.filter = filter;
    // The rows first (or, resuming, only what was missed: the server sends
    // rows again only when it cannot resume).
    if (rows) frame.snapshot = true;
    if (echo !== undefined) frame.echo = echo;
    if (history !== undefined && !this.subscribedOnce) {
      frame.history = history;
      // Stored messages come with older seqs: let that many through.
      this.historyLeft = history;
    }
    if (this.lastSeq !== null && this.epoch !== null) {
      frame.since = this.lastSeq;
      frame.epoch = this.epoch;
    }
    this.client
      .request(frame)
      .then((reply) => {
        const resuming = this.subscribedOnce;
        const lost = resuming && !reply.recovered;
        if (lost || this.epoch !== reply.epoch) this.lastSeq = reply.seq;
        this.epoch = reply.epoch;
        if (this.lastSeq === null) this.lastSeq = reply.seq;
        this.subscribedOnce = true;
        if (this.trackedState) this.client.send({ type: 'track', topic: this.topic, state: this.trackedState });
        this.emit('subscribed', reply);
        if (lost && !this.options.rows) this.emit('resync', { reason: 'events were missed while disconnected; reload your state' });
        this.onSubscribed?.resolve(reply);
        this.onSubscribed = null;
      })
      .catch((error) => {
        this.onSubscribed?.reject(error);
        this.onSubscribed = null;
      });
  }

  connectionLost() {
    this.presenceState = {};
  }

  receive(frame) {
    if (frame.type === 'unsubscribed' && frame.reason) {
      this.wanted = false;
      this.emit('unsubscribed', frame);
      return;
    }
    if (frame.type === 'snapshot') {
      this.snapshotPage(frame);
      return;
    }
    // `chat_message` is an event named `chat` (the SDKs' legacy chat).
    if (frame.type !== 'event' && frame.type !== 'db_change' && frame.type !== 'chat_message') return;
    if (frame.message_id !== undefined && this.historyLeft > 0 && frame.seq <= this.lastSeq) {
      this.historyLeft -= 1;
    } else if (typeof frame.seq === 'number') {
      // Exactly once: what a resume already delivered is not delivered again.
      if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
    }
    if (frame.type === 'db_change') {
      if (this.options.rows) this.applyChange(frame);
      this.emit(frame.operation, frame);
      return;
    }
    if (frame.event === 'presence:sync') this.presenceState = structuredClone(frame.data.presences);
    if (frame.event === 'presence:join') {
      const entries = (this.presenceState[frame.data.key] ?? []).filter((e) => e.conn !== frame.data.conn);
      this.presenceState[frame.data.key] = [...entries, { conn: frame.data.conn, state: frame.data.state }];
    }
    if (frame.event === 'presence:leave') {
      const entries = (this.presenceState[frame.data.key] ?? []).filter((e) => e.conn !== frame.data.conn);
      if (entries.length) this.presenceState[frame.data.key] = entries;
      else delete this.presenceState[frame.data.key];
    }
    this.emit(frame.event, frame);
  }

  /** A page of the table's rows; the last one replaces what the channel held. */
  snapshotPage(frame) {
    if (!this.options.rows) return;
    this.key = frame.key;
    this.staged ??= new Map();
    for (const row of frame.rows) this.staged.set(this.keyOf(row), row);
    if (!frame.last) return;
    this.rowMap = this.staged;
    this.staged = null;
    this.emit('rows', this.rows);
  }

  keyOf(row) {
    return JSON.stringify((this.key ?? ['id']).map((column) => row[column]));
  }

  /** A change applied to the rows: put when the new row matches the filter, else removed. */
  applyChange(frame) {
    const row = frame.data;
    const id = this.keyOf(frame.operation === 'DELETE' ? (frame.old ?? row) : row);
    if (frame.operation !== 'DELETE' && matches(this.options.filter, row)) {
      this.rowMap.set(id, row);
    } else {
      this.rowMap.delete(id);
      // An UPDATE of the key itself: the old key goes too.
      if (frame.old) this.rowMap.delete(this.keyOf(frame.old));
    }
    this.emit('rows', this.rows);
  }

  unsubscribe() {
    this.wanted = false;
    this.client.channels.delete(this.topic);
    if (this.client.status !== 'connected') return Promise.resolve();
    return this.client.request({ type: 'unsubscribe', topic: this.topic });
  }

  /** Sends a chat message to this `chat/<room>` channel (persisted); listeners of `chat` get it. */
  sendChat(text, metadata) {
    const roomId = this.topic.startsWith('chat/') ? this.topic.slice('chat/'.length) : this.topic;
    const frame = { type: 'chat', roomId, text };
    if (metadata !== undefined) frame.metadata = metadata;
    return this.client.request(frame);
  }

  /** Publishes; resolves with the ack (`seq`, and `message_id` when persisted). */
  publish(event, data, { persist = false } = {}) {
    const frame = { type: 'publish', topic: this.topic, event, data };
    if (persist) frame.persist = true;
    return this.client.request(frame);
  }

  /** Stored messages, newest first. */
  async getHistory(limit = 50, before) {
    const frame = { type: 'history', topic: this.topic, limit };
    if (before !== undefined) frame.before = before;
    const reply = await this.client.request(frame);
    return reply.messages;
  }

  /** Announces this connection's state; kept and re-sent after a reconnect. */
  track(state) {
    this.trackedState = state;
    return this.client.request({ type: 'track', topic: this.topic, state });
  }

  untrack() {
    this.trackedState = null;
    return this.client.request({ type: 'untrack', topic: this.topic });
  }

  /** Who is here now: `{ "<key>": [{ conn, state }] }`. */
  presence() {
    return structuredClone(this.presenceState);
  }
}
