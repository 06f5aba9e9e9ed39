// realtide's console: an ES module with no build step, served by the server
// at /console. It reads the admin API with the admin key (or, when the
// server has none, from loopback without one) and follows a topic live over
// a WebSocket that the admin key opens (`?adminKey=`).

const $ = (selector) => document.querySelector(selector);
const KEY_STORE = 'realtide-admin-key';
const POLL_MS = 2000;
const TAIL_MAX = 200;

let adminKey = sessionStorage.getItem(KEY_STORE) ?? '';
let timer = null;
let tail = null;
let scrapes = [];

function text(value) {
  return value === null || value === undefined ? '' : String(value);
}

/** A table row from cells (strings or nodes). */
function row(cells, onClick) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    if (cell instanceof Node) td.append(cell);
    else td.textContent = text(cell);
    tr.append(td);
  }
  if (onClick) {
    tr.className = 'link';
    tr.addEventListener('click', onClick);
  }
  return tr;
}

/** Fills a table body; with no rows, one row saying so (`empty`). */
function fill(tbody, rows, empty = 'none yet') {
  if (rows.length) {
    tbody.replaceChildren(...rows);
    return;
  }
  const tr = document.createElement('tr');
  tr.className = 'empty';
  const td = document.createElement('td');
  td.colSpan = tbody.parentElement.querySelectorAll('thead th').length || 1;
  td.textContent = empty;
  tr.append(td);
  tbody.replaceChildren(tr);
}

/** Fills a list; with no items, one item saying so. */
function fillList(list, items, empty) {
  if (items.length) {
    list.replaceChildren(...items);
    return;
  }
  const li = document.createElement('li');
  li.className = 'empty';
  li.textContent = empty;
  list.replaceChildren(li);
}

/** An age in ms, as people read it. */
function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 1) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** How far away a coming moment (ms since the Unix epoch) is. */
function ahead(at) {
  const s = Math.round((at - Date.now()) / 1000);
  return s <= 0 ? 'now' : `in ${s} s`;
}

/** How long ago a moment (ms since the Unix epoch) was. */
function ago(at) {
  return at ? age(Date.now() - at) : '';
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers ?? {}) };
  if (adminKey) headers.Authorization = `Bearer ${adminKey}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 || response.status === 403) throw new Unauthorized(await response.text());
  const body = await response.json();
  if (!response.ok) throw new Error(body?.error?.message ?? response.statusText);
  return body;
}

function showLogin(message = '') {
  for (const section of document.querySelectorAll('main > section')) section.hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#logout').hidden = true;
}

$('#login').addEventListener('submit', (event) => {
  event.preventDefault();
  adminKey = $('#key').value;
  sessionStorage.setItem(KEY_STORE, adminKey);
  route();
});

$('#logout').addEventListener('click', () => {
  adminKey = '';
  sessionStorage.removeItem(KEY_STORE);
  showLogin();
});

// ---- metrics: rates and lag percentiles from two scrapes of /metrics ----

function parseMetrics(textBody) {
  const values = new Map();
  for (const line of textBody.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return { at: Date.now(), values };
}

function rate(name) {
  if (scrapes.length < 2) return null;
  const [a, b] = scrapes;
  const seconds = (b.at - a.at) / 1000;
  return ((b.values.get(name) ?? 0) - (a.values.get(name) ?? 0)) / seconds;
}

/** The upper bound of the bucket holding the q-quantile of what the two scrapes saw. */
function quantile(family, q) {
  if (scrapes.length < 2) return null;
  const [a, b] = scrapes;
  const buckets = [];
  for (const [key, value] of b.values) {
    const match = key.match(new RegExp(`^${family}_bucket\\{le="([^"]+)"\\}$`));
    if (match) buckets.push([Number(match[1]), value - (a.values.get(key) ?? 0)]);
  }
  buckets.sort((x, y) => x[0] - y[0]);
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const bucket = buckets.find(([, count]) => count >= q * total);
  return bucket ? bucket[0] : null;
}

function ms(seconds) {
  if (seconds === null) return '–';
  if (!Number.isFinite(seconds)) return '> 10 s';
  return seconds < 1 ? `≤ ${Math.round(seconds * 1000 * 100) / 100} ms` : `≤ ${seconds} s`;
}

function perSecond(value) {
  return value === null ? '–' : `${Math.round(value * 10) / 10}/s`;
}

const SVG = 'http://www.w3.org/2000/svg';

const WINDOW_MS = 15 * 60 * 1000;

/**
 * A line of the last 15 minutes, as a small SVG: `points` are [at, value]
 * (a null value is a gap), placed by time, so a node that started a
 * minute ago draws only the last minute's stretch.
 */
function sparkline(points, label) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 160 36');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  const known = points.filter(([, v]) => v !== null && Number.isFinite(v));
  svg.dataset.points = String(known.length);
  const title = document.createElementNS(SVG, 'title');
  const values = known.map(([, v]) => Math.round(v * 100) / 100);
  title.textContent = known.length
    ? `${label}, last 15 min: ${Math.min(...values)} to ${Math.max(...values)}`
    : `${label}: no samples yet (one every 10 s)`;
  svg.append(title);
  if (known.length < 2) return svg;
  const top = Math.max(...values, 1e-9);
  const end = points[points.length - 1][0];
  let d = '';
  let gap = true;
  for (const [at, v] of points) {
    if (v === null || !Number.isFinite(v)) {
      gap = true;
      continue;
    }
    const x = 160 - ((end - at) / WINDOW_MS) * 160;
    const y = 34 - (v / top) * 32;
    d += `${gap ? 'M' : 'L'}${x.toFixed(1)},${y.toFixed(1)}`;
    gap = false;
  }
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

async function refreshOverview() {
  const [nodes, metricsText, trends, backend] = await Promise.all([
    api('/admin/nodes'),
    fetch('/metrics').then((r) => r.text()),
    api('/admin/trends'),
    api('/admin/webhooks'),
  ]);
  showBackend(backend);
  scrapes = [...scrapes, parseMetrics(metricsText)].slice(-2);
  const latest = scrapes[scrapes.length - 1].values;
  const series = (field) => trends.samples.map((sample) => [sample.at, sample[field]]);
  const tiles = [
    ['connections', latest.get('realtide_connections'), series('connections')],
    ['topics', latest.get('realtide_topics')],
    ['subscriptions', latest.get('realtide_subscriptions')],
    ['messages in', perSecond(rate('realtide_messages_in_total')), series('messages_in_per_s')],
    ['messages out', perSecond(rate('realtide_messages_out_total')), series('messages_out_per_s')],
    ['deliveries', perSecond(rate('realtide_deliveries_total')), series('deliveries_per_s')],
    ['delivery lag p99', ms(quantile('realtide_delivery_lag_seconds', 0.99)), series('delivery_lag_p99_ms')],
    ['change lag p99', ms(quantile('realtide_change_lag_seconds', 0.99)), series('change_lag_p99_ms')],
  ];
  $('#tiles').replaceChildren(...tiles.map(([label, value, trend]) => {
    const tile = document.createElement('div');
    tile.className = 'tile';
    tile.dataset.tile = label;
    const b = document.createElement('b');
    b.textContent = text(value);
    const span = document.createElement('span');
    span.textContent = label;
    tile.append(b, span);
    if (trend) tile.append(sparkline(trend, label));
    return tile;
  }));
  const endings = [];
  for (const [key, count] of latest) {
    const closed = key.match(/^realtide_connections_closed_total\{reason="([^"]+)"\}$/);
    const refused = key.match(/^realtide_handshakes_refused_total\{code="([^"]+)"\}$/);
    if (count > 0 && closed) endings.push(['closed', closed[1], count]);
    if (count > 0 && refused) endings.push(['refused', refused[1], count]);
  }
  fill($('#endings tbody'), endings.map((cells) => {
    const tr = row(cells);
    tr.dataset.ending = `${cells[0]}:${cells[1]}`;
    return tr;
  }), 'no connection has ended or been refused yet');
  // `last_seen_ms` is the age of the node's last heartbeat, not a moment.
  fill($('#nodes tbody'), nodes.map((n) => {
    const tr = row([n.node, n.connections, ago(n.started_at), age(n.last_seen_ms)]);
    tr.dataset.node = n.node;
    return tr;
  }));
  $('#node').textContent = nodes.length === 1 ? `node ${nodes[0].node}` : `${nodes.length} nodes`;
}

/** Proxy answers so far, and the webhooks that wait and why. */
function showBackend(backend) {
  $('#webhooks-pending').textContent = backend.enabled
    ? `(${backend.pending} webhook${backend.pending === 1 ? '' : 's'} waiting)`
    : '(no --webhook-url)';
  const used = Object.entries(backend.proxies).filter(([, counts]) => Object.values(counts).some((n) => n > 0));
  fill($('#proxies tbody'), used.map(([proxy, c]) => {
    const tr = row([proxy, c.allowed, c.refused, c.timeout, c.error, c.unreachable]);
    tr.dataset.proxy = proxy;
    return tr;
  }), 'no proxy called yet');
  fill($('#webhooks-failing tbody'), backend.failing.map((w) => {
    const tr = row([w.id, w.type, w.order_key, w.attempts, ahead(w.next_at), w.last_error ?? '']);
    tr.dataset.webhook = w.id;
    return tr;
  }), 'no webhook is failing');
}

async function refreshTopics() {
  const topics = await api('/admin/topics');
  const filter = $('#filter').value.trim().toLowerCase();
  const shown = topics.filter((t) => t.topic.toLowerCase().includes(filter));
  fill($('#topic-list tbody'), shown.map((t) => row([t.topic, t.kind, t.subscribers, t.presence, t.seq], () => {
    location.hash = `#/topic/${encodeURIComponent(t.topic)}`;
  })), filter ? 'no running topic matches' : 'no topic is running on this node');
}
$('#filter').addEventListener('input', () => refreshTopics().catch(failed));
// Any topic can be opened by name, running or not (its history, its table).
$('#open-topic').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('#open-name').value.trim();
  if (name) location.hash = `#/topic/${encodeURIComponent(name)}`;
});

async function refreshConnections() {
  const { connections } = await api('/admin/connections');
  fill($('#connection-list tbody'), connections.map((c) => {
    const button = document.createElement('button');
    button.textContent = 'Disconnect';
    button.className = 'danger';
    button.dataset.conn = c.conn;
    button.addEventListener('click', async () => {
      const who = c.userId ?? 'an anonymous client';
      if (!confirm(`Disconnect ${who} (${c.conn})? The connection is closed with 4003; its app may reconnect.`)) return;
      await api(`/admin/connections/${encodeURIComponent(c.conn)}`, { method: 'DELETE' });
      refreshConnections().catch(failed);
    });
    const tr = row([c.conn, c.userId ?? '(anonymous)', c.transport, c.subscriptions.join(', '), c.tracked, ago(c.opened_at), c.frames_in, c.backlog_bytes, button]);
    tr.dataset.conn = c.conn;
    return tr;
  }), 'no client is connected to this node');
}

// ---- one topic: live tail, presence, history, publish ----

function renderPresence(presences) {
  const items = [];
  for (const [key, entries] of Object.entries(presences ?? {})) {
    for (const entry of entries) {
      const li = document.createElement('li');
      li.textContent = `${key} (${entry.conn}): ${JSON.stringify(entry.state)}`;
      items.push(li);
    }
  }
  fillList($('#presence'), items, 'nobody is present');
}

function pre(value) {
  const p = document.createElement('pre');
  p.textContent = value === undefined || value === null ? '' : JSON.stringify(value, null, 1);
  return p;
}

/** One side of a change: a label and the row. */
function side(label, value, className) {
  const div = document.createElement('div');
  div.className = className;
  const span = document.createElement('span');
  span.className = 'label';
  span.textContent = label;
  div.append(span, pre(value));
  return div;
}

function showFrame(frame) {
  const li = document.createElement('li');
  if (frame.type === 'db_change') {
    li.className = 'change';
    li.dataset.operation = frame.operation;
    const op = document.createElement('span');
    op.className = 'op';
    op.textContent = `${frame.operation} #${frame.seq}`;
    li.append(op);
    if (frame.operation === 'INSERT') li.append(side('new row', frame.data, 'new'));
    else if (frame.operation === 'DELETE') li.append(side('deleted row', frame.old ?? frame.data, 'old'));
    else li.append(side('before', frame.old, 'old'), side('after', frame.data, 'new'));
  } else {
    li.textContent = `#${frame.seq ?? '-'} ${frame.event}${frame.userId ? ` by ${frame.userId}` : ''}: ${JSON.stringify(frame.data)}`;
  }
  $('#tail').querySelector('li.empty')?.remove();
  $('#tail').prepend(li);
  while ($('#tail').children.length > TAIL_MAX) $('#tail').lastChild.remove();
}

/** A stored message as a history row. */
function historyRow(m) {
  const tr = row([m.id, new Date(m.created_at).toLocaleTimeString(), m.user_id ?? '', m.event, JSON.stringify(m.data)]);
  tr.dataset.id = m.id;
  return tr;
}

/** A persisted event that just arrived joins the top of the history. */
function showStored(frame) {
  const tbody = $('#history tbody');
  if (!frame.message_id || tbody.querySelector(`tr[data-id="${CSS.escape(frame.message_id)}"]`)) return;
  tbody.querySelector('tr.empty')?.remove();
  tbody.prepend(historyRow({
    id: frame.message_id,
    created_at: frame.timestamp,
    user_id: frame.userId,
    event: frame.event,
    data: frame.data,
  }));
}

function follow(topic) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/api/realtime?adminKey=${encodeURIComponent(adminKey)}`);
  let nextRef = 1;
  const pending = new Map();
  const request = (frame) => new Promise((resolve, reject) => {
    const ref = `c${nextRef++}`;
    pending.set(ref, { resolve, reject });
    socket.send(JSON.stringify({ ...frame, ref }));
  });
  let presences = {};
  socket.onopen = () => {
    $('#tail-state').textContent = 'connecting';
  };
  socket.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type === 'welcome') {
      request({ type: 'subscribe', topic }).then(() => {
        $('#tail-state').textContent = 'live';
      }, (error) => {
        $('#tail-state').textContent = error.message;
      });
      return;
    }
    if (frame.ref && pending.has(frame.ref)) {
      const { resolve, reject } = pending.get(frame.ref);
      pending.delete(frame.ref);
      if (frame.type === 'error') reject(new Error(frame.message));
      else resolve(frame);
      return;
    }
    if (frame.event === 'presence:sync') {
      presences = frame.data.presences;
    } else if (frame.event === 'presence:join' || frame.event === 'presence:leave') {
      const { key, conn } = frame.data;
      const others = (presences[key] ?? []).filter((e) => e.conn !== conn);
      if (frame.event === 'presence:join') others.push({ conn, state: frame.data.state });
      if (others.length) presences[key] = others;
      else delete presences[key];
    }
    if (frame.event?.startsWith('presence:')) {
      renderPresence(presences);
      return;
    }
    if (frame.type === 'event' || frame.type === 'db_change' || frame.type === 'chat_message') showFrame(frame);
    if (frame.type === 'event' || frame.type === 'chat_message') showStored(frame);
  };
  socket.onclose = () => {
    $('#tail-state').textContent = 'closed';
  };
  return { socket, request, close: () => socket.close(1000) };
}

let historyBefore = null;

async function loadHistory(topic, older) {
  const params = new URLSearchParams({ topic, limit: '20' });
  if (older && historyBefore) params.set('before_id', historyBefore);
  const { messages } = await api(`/admin/history?${params}`);
  const rows = messages.map(historyRow);
  if (older) $('#history tbody').append(...rows);
  else fill($('#history tbody'), rows, 'no stored messages (publish with persist: true to keep them)');
  if (messages.length) historyBefore = messages[messages.length - 1].id;
  $('#older').disabled = messages.length < 20;
}

async function openTopic(topic) {
  $('#topic-name').textContent = topic;
  const isTable = !topic.includes('/');
  $('#topic-meta').textContent = isTable
    ? 'table topic: every committed INSERT, UPDATE and DELETE of the table'
    : 'pub/sub topic';
  fillList($('#tail'), [], 'no events since this page opened');
  $('#history-panel').hidden = isTable;
  $('#publish-panel').hidden = isTable;
  const { presences } = await api(`/admin/presence?topic=${encodeURIComponent(topic)}`);
  renderPresence(presences);
  tail = follow(topic);
  historyBefore = null;
  if (!isTable) await loadHistory(topic, false);
  $('#older').onclick = () => loadHistory(topic, true).catch(failed);
  $('#delete-history').onclick = async () => {
    if (!confirm(`Delete every stored message of ${topic}?`)) return;
    await api(`/admin/history?topic=${encodeURIComponent(topic)}`, { method: 'DELETE' });
    historyBefore = null;
    await loadHistory(topic, false);
  };
  $('#publish').onsubmit = async (event) => {
    event.preventDefault();
    try {
      const data = JSON.parse($('#publish-data').value || 'null');
      const ack = await tail.request({ type: 'publish', topic, event: $('#publish-event').value, data, persist: true });
      $('#publish-result').textContent = `published, seq ${ack.seq}`;
      await loadHistory(topic, false);
    } catch (error) {
      $('#publish-result').textContent = error.message;
    }
  };
}

// ---- routing ----

function failed(error) {
  if (error instanceof Unauthorized) {
    showLogin(adminKey ? 'That key was refused.' : '');
    return;
  }
  console.error(error);
}

async function route() {
  clearInterval(timer);
  if (tail) {
    tail.close();
    tail = null;
  }
  const hash = location.hash.replace(/^#/, '') || '/';
  const [, view = '', arg] = hash.split('/');
  const name = view === '' ? 'overview' : view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('current', a.dataset.view === name || (name === 'topic' && a.dataset.view === 'topics'));
  try {
    // Any admin call tells whether we may read; sign-in otherwise.
    await api('/admin/nodes');
  } catch (error) {
    failed(error);
    return;
  }
  $('#login').hidden = true;
  $('#logout').hidden = !adminKey;
  for (const section of document.querySelectorAll('main > section')) section.hidden = section.id !== name;
  const refresh = { overview: refreshOverview, topics: refreshTopics, connections: refreshConnections }[name];
  try {
    if (name === 'topic') await openTopic(decodeURIComponent(arg ?? ''));
    if (refresh) {
      await refresh();
      timer = setInterval(() => refresh().catch(failed), POLL_MS);
    }
    document.body.dataset.ready = name;
  } catch (error) {
    failed(error);
  }
}

window.addEventListener('hashchange', route);
route();
