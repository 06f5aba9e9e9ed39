// realtide's React binding: an ES module with no build step (no JSX), React
// as a peer dependency. It speaks the names of `@aerostack/react`, so a
// component written against that package runs unchanged when the bundler
// resolves `@aerostack/react` here:
//
//   const { realtime } = useAerostack()
//   realtime.channel('orders').on('UPDATE', ({ data }) => ...).subscribe()
//
// The client underneath (`realtide`, clients/js) resumes every channel after
// a reconnect with `since`/`epoch`, so a page stays live across a server
// restart or deploy.

import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
} from 'react';
import { createClient } from 'realtide';

const AerostackContext = createContext(null);

/** The WebSocket URL from `url`, or from `baseUrl` (default: the page's origin). */
function socketUrl(url, baseUrl) {
  if (url) return url;
  const base = baseUrl ?? globalThis.location?.origin;
  if (!base) throw new Error('AerostackProvider: pass `url` (ws://host:port/api/realtime) or `baseUrl`');
  return `${String(base).replace(/\/+$/, '').replace(/^http/, 'ws')}/api/realtime`;
}

/**
 * Channels shared by the hooks of one provider: several components may
 * follow one topic, and the topic is unsubscribed when the last one leaves.
 */
class SharedChannels {
  constructor(realtime) {
    this.realtime = realtime;
    this.users = new Map();
  }

  acquire(topic, options) {
    const channel = this.realtime.channel(topic, options);
    this.users.set(topic, (this.users.get(topic) ?? 0) + 1);
    if (!channel.wanted) return { channel, subscribed: channel.subscribe() };
    // Subscribed already (by another hook, or by code calling `channel()` itself).
    if (channel.subscribedOnce) return { channel, subscribed: Promise.resolve() };
    const subscribed = new Promise((resolve) => {
      const once = () => {
        channel.off('subscribed', once);
        resolve();
      };
      channel.on('subscribed', once);
    });
    return { channel, subscribed };
  }

  release(topic) {
    const count = (this.users.get(topic) ?? 1) - 1;
    if (count > 0) {
      this.users.set(topic, count);
      return;
    }
    this.users.delete(topic);
    this.realtime.channels.get(topic)?.unsubscribe().catch(() => {});
  }
}

/**
 * Connects to realtide and gives its children `useAerostack()` and the hooks.
 *
 * Props: `url` (ws://host:port/api/realtime) or `baseUrl` (http(s)://host:port;
 * default the page's origin), `projectId`, `token` or `getToken`, `apiKey`,
 * `userId` (open mode only). A changed `token` is sent on the open connection.
 */
export function AerostackProvider({
  url, baseUrl, projectId, token, getToken, apiKey, userId, children,
}) {
  const getTokenRef = useRef(getToken);
  getTokenRef.current = getToken;
  const endpoint = socketUrl(url, baseUrl);
  const value = useMemo(() => {
    const realtime = createClient({
      url: endpoint,
      projectId,
      token,
      apiKey,
      userId,
      getToken: getTokenRef.current ? () => getTokenRef.current() : undefined,
    });
    return { realtime, sdk: { realtime }, shared: new SharedChannels(realtime) };
    // A new token goes over the open connection (below), not a new client.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [endpoint, projectId, apiKey, userId]);
  useEffect(() => {
    value.realtime.connect();
    return () => value.realtime.disconnect();
  }, [value]);
  useEffect(() => {
    if (token && token !== value.realtime.token) value.realtime.setToken(token).catch(() => {});
  }, [token, value]);
  return createElement(AerostackContext.Provider, { value }, children);
}

/**
 * `{ realtime, sdk: { realtime } }`: `realtime` is the same client on every
 * render (`channel(name).on(event, cb).subscribe()`, `unsubscribe()`,
 * `publish`, `track`, `getHistory`, `onStatusChange`, `onError`).
 */
export function useAerostack() {
  const value = useContext(AerostackContext);
  if (!value) throw new Error('useAerostack() must be called inside <AerostackProvider>');
  return value;
}

/**
 * Follows `topic`; `{ data, error, loading }` where `data` is the latest
 * event (a table's `{ operation, data, old }`, a pub/sub `{ event, data,
 * userId }`), `error` a refused subscription, `loading` true until the
 * server confirmed it. Options: `event` (default every event), `filter`
 * (table topics).
 */
export function useSubscription(topic, { event = '*', filter } = {}) {
  const { shared } = useAerostack();
  const [state, setState] = useState({ data: null, error: null, loading: Boolean(topic) });
  const filterKey = JSON.stringify(filter ?? null);
  useEffect(() => {
    if (!topic) return undefined;
    let live = true;
    setState({ data: null, error: null, loading: true });
    const { channel, subscribed } = shared.acquire(topic, filter ? { filter } : {});
    const listener = (payload) => {
      if (live) setState({ data: payload, error: null, loading: false });
    };
    channel.on(event, listener);
    subscribed.then(
      () => live && setState((s) => ({ ...s, loading: false })),
      (error) => live && setState({ data: null, error, loading: false }),
    );
    return () => {
      live = false;
      channel.off(event, listener);
      shared.release(topic);
    };
    // `filterKey` stands for `filter`: a new object with the same content is the same filter.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shared, topic, event, filterKey]);
  return state;
}

/**
 * A table's rows, kept live: `{ rows, loading, error }`. `rows` are the
 * table's rows that match `filter` (and the token's forced filter) as the
 * server holds them: loaded with the subscription, then kept by every
 * change, across reconnects (reloaded only when the server cannot resume).
 */
export function useTable(table, { filter } = {}) {
  const { shared } = useAerostack();
  const [state, setState] = useState({ rows: [], error: null, loading: Boolean(table) });
  const filterKey = JSON.stringify(filter ?? null);
  useEffect(() => {
    if (!table) return undefined;
    let live = true;
    setState({ rows: [], error: null, loading: true });
    const options = filter ? { filter, rows: true } : { rows: true };
    const { channel, subscribed } = shared.acquire(table, options);
    const listener = (rows) => {
      if (live) setState({ rows, error: null, loading: false });
    };
    channel.on('rows', listener);
    if (channel.subscribedOnce && channel.options.rows) listener(channel.rows);
    subscribed.catch((error) => live && setState({ rows: [], error, loading: false }));
    return () => {
      live = false;
      channel.off('rows', listener);
      shared.release(table);
    };
    // `filterKey` stands for `filter`: a new object with the same content is the same filter.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shared, table, filterKey]);
  return state;
}

/**
 * Who is on `topic` now: `{ "<key>": [{ conn, state }] }`. With `state`,
 * this connection is tracked there with it (and untracked on unmount).
 */
export function usePresence(topic, state) {
  const { shared } = useAerostack();
  const [presence, setPresence] = useState({});
  const stateKey = state === undefined ? undefined : JSON.stringify(state);
  useEffect(() => {
    if (!topic) return undefined;
    const { channel, subscribed } = shared.acquire(topic, {});
    const update = () => setPresence(channel.presence());
    const events = ['presence:sync', 'presence:join', 'presence:leave'];
    for (const event of events) channel.on(event, update);
    subscribed.then(() => {
      update();
      if (stateKey !== undefined) channel.track(JSON.parse(stateKey)).catch(() => {});
    }, () => {});
    return () => {
      for (const event of events) channel.off(event, update);
      if (stateKey !== undefined) channel.untrack().catch(() => {});
      shared.release(topic);
    };
  }, [shared, topic, stateKey]);
  return presence;
}

/**
 * The connection's `{ status, error }`: status is `idle`, `connecting`,
 * `connected`, `reconnecting` or `disconnected`; error the last failure
 * (`error.code`: `unauthorized`, `forbidden`, `token_expired`,
 * `server_gone`, `closed`), cleared once connected again.
 */
export function useRealtimeStatus() {
  const { realtime } = useAerostack();
  const subscribe = useMemo(
    () => (onChange) => {
      const stopStatus = realtime.onStatusChange(onChange);
      const stopErrors = realtime.onError(onChange);
      return () => {
        stopStatus();
        stopErrors();
      };
    },
    [realtime],
  );
  const status = useSyncExternalStore(subscribe, () => realtime.status);
  const error = useSyncExternalStore(subscribe, () => realtime.lastError);
  return { status, error };
}
