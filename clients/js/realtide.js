// realtide's JavaScript client: an ES module with no build step, for browsers
// and Node 20+ (pass `WebSocket` in Node 20, or run it with
// --experimental-websocket). One WebSocket carries every channel; after a
// reconnect each channel resubscribes with `since`/`epoch`, so no event is
// lost or repeated, and the app is told (`resync`) when the server could not
// recover what was missed.

const STATUSES = ['idle', 'connecting', 'connected', 'reconnecting', 'disconnected'];
const PING_EVERY_MS = 30000;

/**
 * @param {object} options
 * @param {string} options.url         ws(s)://host:port/api/realtime
 * @param {string} [options.token]     a JWT (sent as the `token` query parameter)
 * @param {string} [options.projectId]
 * @param {string} [options.userId]    identity in open mode
 * @param {Function} [options.WebSocket] a WebSocket implementation (default: the global one)
 * @param {number} [options.minDelayMs=250]  first reconnect delay
 * @param {number} [options.maxDelayMs=10000] longest reconnect delay
 */
export function createClient(options) {
  return new RealtimeClient(options);
}

class RealtimeClient {
  constructor({ url, token, projectId, userId, WebSocket: WS, minDelayMs = 250, maxDelayMs = 10000 }) {
    this.url = url;
    this.token = token;
    this.projectId = projectId;
    this.userId = userId;
    this.WS = WS || globalThis.WebSocket;
    if (!this.WS) throw new Error('realtide: no WebSocket implementation; pass { WebSocket }');
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

  connect() {
    this.wanted = true;
    if (this.socket) return;
    this.setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const query = new URLSearchParams();
    if (this.token) query.set('token', this.token);
    if (this.projectId) query.set('projectId', this.projectId);
    if (this.userId) query.set('userId', this.userId);
    const qs = query.toString();
    const socket = new this.WS(qs ? `${this.url}?${qs}` : this.url, ['aerostack-v1']);
    this.socket = socket;
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = () => this.dropped(socket);
    socket.onerror = () => {};
  }

  /** Closes for good; channels stay defined but receive nothing more. */
  disconnect() {
    this.wanted = false;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    const socket = this.socket;
    this.socket = null;
    this.failPending(new Error('disconnected'));
    if (socket) socket.close(1000);
    this.setStatus('disconnected');
  }

  dropped(socket) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.welcome = null;
    clearInterval(this.pinger);
    this.failPending(new Error('connection lost'));
    for (const channel of this.channels.values()) channel.connectionLost();
    if (!this.wanted) return;
    this.setStatus('reconnecting');
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
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
      this.attempt = 0;
      this.setStatus('connected');
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
  }

  /** Listens to an event: `INSERT`, `UPDATE`, `DELETE`, a custom name,
   * `presence:sync|join|leave`, `resync`, or `'*'` for every event. */
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
    if (event !== 'resync' && event !== 'subscribed') {
      for (const callback of this.listeners.get('*') ?? []) callback(payload);
    }
  }

  /** Subscribes (connecting the client if needed); resolves with `subscribed`. */
  subscribe() {
    this.wanted = true;
    this.client.connect();
    return new Promise((resolve, reject) => {
      this.onSubscribed = { resolve, reject };
      if (this.client.status === 'connected') this.resubscribe();
    });
  }

  resubscribe() {
    const frame = { type: 'subscribe', topic: this.topic };
    const { filter, echo, history } = this.options;
    if (filter !== undefined) frame.filter = filter;
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
        if (lost) this.emit('resync', { reason: 'events were missed while disconnected; reload your state' });
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
