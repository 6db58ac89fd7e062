// Unit tests of realtime/web/realtime.js with a fake WebSocket and a fake fetch: `node --test` (run by
// tests/e2e/test_demo.py). The module is plain browser JavaScript; Node has what it uses (EventTarget,
// CustomEvent, fetch, atob, AbortController).
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// realtime/web has no package.json saying "module": import a copy named .mjs
const source = fileURLToPath(new URL('../../realtime/web/realtime.js', import.meta.url));
const copy = path.join(mkdtempSync(path.join(tmpdir(), 'realtime-js-')), 'realtime.mjs');
copyFileSync(source, copy);
const { RealtimeClient, backoffDelay, compareIds, validRoom, jwtClaims } = await import(pathToFileURL(copy).href);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(condition, what, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

/** A WebSocket that the test plays the server of. `behaviour(ws)` runs at creation. */
function fakeSockets(behaviour = (ws) => setTimeout(() => ws.open(), 0)) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
      behaviour(this);
    }
    send(text) { this.sent.push(JSON.parse(text)); }
    close(code, reason) {
      this.closedWith = { code, reason };
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? '' }), 0);
    }
    // the server's side
    open() { this.readyState = 1; this.onopen?.({}); }
    message(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
    serverClose(code, reason = '') { this.readyState = 3; this.onclose?.({ code, reason }); }
    ops() { return this.sent.map((m) => m.op); }
    ready() { // answer the connection's ping: the subscriptions are done
      const ping = this.sent.find((m) => m.op === 'ping' && String(m.ref).startsWith('ready'));
      this.message({ op: 'pong', ref: ping.ref });
    }
  }
  return { FakeWebSocket, sockets };
}

function client(options) {
  const c = new RealtimeClient({ url: 'http://rt.test', backoffBase: 5, backoffCap: 20, heartbeat: 0, ...options });
  const states = [];
  c.addEventListener('statechange', (e) => states.push(e.detail.state));
  const events = [];
  c.addEventListener('event', (e) => events.push(e.detail));
  return { c, states, events };
}

const ev = (id, type = 'post:created', room = 'public', data = {}) => ({ op: 'event', id, type, room, data, ts: 1 });
const BIG = '7713463961684803587'; // past 2^53: ids compare as integers, not floats

test('helpers: ids compare as big integers, rooms follow the grammar, backoff is jittered and capped', () => {
  assert.equal(compareIds(`${BIG}-0`, '7713463961684803586-9'), 1);
  assert.equal(compareIds(`${BIG}-2`, `${BIG}-10`), -1);
  assert.equal(compareIds('1-1', '1-1'), 0);
  for (const ok of ['public', 'post:p1', 'user:u-1@x', 'hashtag:café', 'author:a.b', 'post:65a1b2c3d4e5f60718293a4b',
    'post:~65a1b2c3d4e5f60718293a4b', 'user:~42', 'user:42', 'author:~-7']) assert.ok(validRoom(ok), ok);
  for (const bad of ['', 'private', 'post:', 'hashtag:_x', 'post:a b', `post:${'x'.repeat(81)}`, 'post:~p1', 'user:~007',
    'user:a~b', 'post:~', `user:~${'1'.repeat(80)}`]) assert.ok(!validRoom(bad), bad);
  for (let n = 0; n < 12; n++) {
    const d = Math.min(30000, 500 * 2 ** n);
    assert.equal(backoffDelay(n, 500, 30000, () => 0), d / 2);
    assert.equal(backoffDelay(n, 500, 30000, () => 1), d);
  }
  assert.deepEqual(jwtClaims(jwt({ sub: 'u1', exp: 5 })), { sub: 'u1', exp: 5 });
  assert.equal(jwtClaims('nope'), null);
});

test('auth frame first, then subscribe and a ping; connected once answered; events once each', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c, states, events } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
  c.connect();
  assert.equal(c.state, 'connecting');
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const ws = sockets[0];
  assert.equal(ws.url, 'ws://rt.test/ws');
  assert.deepEqual(ws.sent[0], { op: 'auth', token: 'tok', ref: 'auth' });
  assert.equal(ws.sent[1].op, 'subscribe');
  assert.deepEqual(ws.sent[1].rooms, ['public']);
  assert.equal(ws.sent[1].since, undefined); // no position yet: live from now
  ws.message({ op: 'authenticated', user: 'u1', expires: null });
  ws.ready();
  assert.equal(c.state, 'connected');
  assert.equal(c.user, 'u1');
  ws.message(ev(`${BIG}-1`));
  ws.message(ev(`${BIG}-1`)); // again: dropped
  ws.message(ev(`${BIG}-0`)); // older but new to us: taken, the position stays
  assert.deepEqual(events.map((e) => e.id), [`${BIG}-1`, `${BIG}-0`]);
  assert.equal(c.lastId, `${BIG}-1`);
  assert.deepEqual(states, ['connecting', 'connected']);
  c.close();
  assert.equal(c.state, 'closed');
  assert.equal(ws.closedWith.code, 1000);
});

test('a transient close reconnects with backoff and resumes from the last id; duplicates are dropped', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c, states, events } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public', 'post:p1'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  sockets[0].message(ev('5-0'));
  sockets[0].serverClose(1001, 'going away');
  assert.equal(c.state, 'reconnecting');
  await until(() => sockets[1]?.sent.length >= 3, 'a second connection');
  const again = sockets[1].sent.find((m) => m.op === 'subscribe');
  assert.deepEqual(again.rooms, ['public', 'post:p1']);
  assert.equal(again.since, '5-0');
  sockets[1].message(ev('5-0')); // replayed: already seen
  sockets[1].message(ev('6-0'));
  sockets[1].ready();
  assert.deepEqual(events.map((e) => e.id), ['5-0', '6-0']);
  assert.deepEqual(states, ['connecting', 'connected', 'reconnecting', 'connected']);
  c.close();
});

for (const code of [1000, 4001, 4002]) {
  test(`close ${code} is terminal: no reconnect`, async () => {
    const { FakeWebSocket, sockets } = fakeSockets();
    const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
    const closed = [];
    c.addEventListener('closed', (e) => closed.push(e.detail.code));
    c.connect();
    await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
    sockets[0].ready();
    sockets[0].serverClose(code);
    await sleep(60);
    assert.equal(c.state, 'closed');
    assert.equal(sockets.length, 1);
    assert.deepEqual(closed, [code]);
  });
}

test('4003 with a fixed token stops; with a token function, a new token is fetched and used', async () => {
  {
    const { FakeWebSocket, sockets } = fakeSockets();
    const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
    c.connect();
    await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
    sockets[0].ready();
    sockets[0].serverClose(4003);
    await sleep(60);
    assert.equal(c.state, 'closed');
  }
  const { FakeWebSocket, sockets } = fakeSockets();
  let n = 0;
  const token = async () => jwt({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 3600, n: ++n });
  const { c } = client({ WebSocket: FakeWebSocket, token, rooms: ['public'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  sockets[0].serverClose(4003);
  await until(() => sockets[1]?.sent.length >= 1, 'a reconnect');
  assert.equal(n, 2);
  assert.equal(jwtClaims(sockets[1].sent[0].token).n, 2);
  c.close();
});

test('a token function is called again before exp and sent in an auth frame', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  let n = 0;
  const token = async () => jwt({ sub: 'u1', exp: Math.floor(Date.now() / 1000) + 4, n: ++n });
  const { c } = client({ WebSocket: FakeWebSocket, token, rooms: ['public'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const first = jwtClaims(sockets[0].sent[0].token);
  sockets[0].message({ op: 'authenticated', user: 'u1', expires: first.exp });
  sockets[0].ready();
  await until(() => sockets[0].sent.some((m) => m.op === 'auth' && m.ref === 'refresh'), 'a refresh', 5000);
  const refresh = sockets[0].sent.find((m) => m.ref === 'refresh');
  assert.equal(jwtClaims(refresh.token).n, 2);
  assert.equal(sockets.length, 1); // on the same connection
  c.close();
});

test('after N failed attempts it long-polls, then goes back to the WebSocket when a retry works', async () => {
  let blocked = true;
  const { FakeWebSocket, sockets } = fakeSockets((ws) => setTimeout(() => (blocked ? ws.serverClose(1006) : ws.open()), 0));
  const polls = [];
  const fetch = async (url, init) => {
    const u = new URL(url);
    polls.push({ rooms: u.searchParams.get('rooms'), since: u.searchParams.get('since'), auth: init.headers.Authorization });
    if (polls.length === 1) return Response.json({ events: [ev('7-0')], resets: [], next: '7-0' });
    if (polls.length === 2) return Response.json({ events: [ev('7-0'), ev('8-0')], resets: [], next: '8-0' });
    await new Promise((resolve) => init.signal.addEventListener('abort', resolve)); // a long poll, until aborted
    throw new DOMException('aborted', 'AbortError');
  };
  const { c, states, events } = client({ WebSocket: FakeWebSocket, fetch, token: 'tok', rooms: ['public'],
    fallbackAfter: 3, wsRetry: 100, since: '6-0' });
  c.connect();
  await until(() => c.state === 'polling', 'polling');
  assert.equal(sockets.length, 3);
  assert.equal(c.transport, 'polling');
  assert.deepEqual(polls[0], { rooms: 'public', since: '6-0', auth: 'Bearer tok' });
  await until(() => polls.length >= 3, 'a third poll');
  assert.equal(polls[1].since, '7-0');
  assert.deepEqual(events.map((e) => e.id), ['7-0', '8-0']);
  blocked = false;
  await until(() => sockets.length >= 5 || sockets[3]?.readyState === 1, 'a retry of the WebSocket', 3000);
  const ws = sockets.at(-1);
  await until(() => ws.sent.length >= 3, 'its first frames');
  assert.equal(ws.sent.find((m) => m.op === 'subscribe').since, '8-0');
  ws.ready();
  assert.equal(c.state, 'connected');
  assert.equal(c.transport, 'websocket');
  assert.ok(states.includes('polling'));
  c.close();
});

test('transport: polling never opens a WebSocket', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  let calls = 0;
  const fetch = async (url, init) => {
    calls++;
    if (calls > 1) await new Promise((resolve) => init.signal.addEventListener('abort', resolve));
    if (init.signal.aborted) throw new DOMException('aborted', 'AbortError');
    return Response.json({ events: [], resets: [], next: '1-0' });
  };
  const { c } = client({ WebSocket: FakeWebSocket, fetch, transport: 'polling', rooms: ['public'], wsRetry: 10 });
  c.connect();
  await until(() => c.state === 'polling', 'polling');
  await sleep(50);
  assert.equal(sockets.length, 0);
  c.close();
});

test('presence: asked on subscribe, kept from presence frames; typing: set and cleared', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: jwt({ sub: 'me', exp: 9999999999 }), rooms: ['post:p1'],
    typingInterval: 1000 });
  const presence = [];
  const typing = [];
  c.addEventListener('presence', (e) => presence.push(e.detail));
  c.addEventListener('typing', (e) => typing.push(e.detail));
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const ws = sockets[0];
  ws.ready();
  const query = ws.sent.find((m) => m.op === 'presence');
  assert.equal(query.room, 'post:p1');
  ws.message({ op: 'presence', ref: query.ref, room: 'post:p1', users: ['me', 'u2'] });
  assert.deepEqual(c.presence('post:p1'), ['me', 'u2']);
  ws.message({ op: 'presence', type: 'user:online', room: 'post:p1', data: { userId: 'u3' }, ts: 1 });
  ws.message({ op: 'presence', type: 'user:offline', room: 'post:p1', data: { userId: 'u2' }, ts: 1 });
  assert.deepEqual(c.presence('post:p1'), ['me', 'u3']);
  assert.deepEqual(presence.at(-1), { room: 'post:p1', users: ['me', 'u3'] });
  ws.message({ op: 'presence', type: 'user:typing', room: 'post:p1', data: { userId: 'u3' }, ts: 1 });
  assert.deepEqual(c.typingUsers('post:p1'), ['u3']);
  ws.message({ op: 'presence', type: 'user:stopped_typing', room: 'post:p1', data: { userId: 'u3' }, ts: 1 });
  assert.deepEqual(c.typingUsers('post:p1'), []);
  assert.deepEqual(typing.map((t) => t.users), [['u3'], []]);
  // a room without presence tracking: asked once, never again
  c.subscribe('post:p2');
  const q2 = ws.sent.filter((m) => m.op === 'presence' && m.room === 'post:p2');
  assert.equal(q2.length, 1);
  ws.message({ op: 'error', ref: q2[0].ref, code: 'unsupported', message: 'not tracked' });
  // sending typing: throttled
  assert.equal(c.typing('post:p1'), true);
  assert.equal(c.typing('post:p1'), false);
  assert.equal(c.typing('public'), false); // post rooms only
  assert.equal(ws.sent.filter((m) => m.op === 'typing').length, 1);
  // a lost connection forgets who is there (it is asked again on the next one)
  ws.serverClose(1006);
  assert.deepEqual(c.presence('post:p1'), []);
  await until(() => sockets[1]?.sent.length >= 3, 'a reconnect');
  sockets[1].ready();
  assert.equal(sockets[1].sent.filter((m) => m.op === 'presence' && m.room === 'post:p2').length, 0);
  assert.equal(sockets[1].sent.filter((m) => m.op === 'presence' && m.room === 'post:p1').length, 1);
  c.close();
});

test('subscribe while connected: with the position or a given since; a refused subscription is dropped', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'], since: '3-0' });
  const errors = [];
  c.addEventListener('error', (e) => errors.push(e.detail));
  const resets = [];
  c.addEventListener('reset', (e) => resets.push(e.detail));
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const ws = sockets[0];
  ws.ready();
  c.subscribe('post:a');
  c.subscribe(['post:b'], { since: '1-0' });
  const subs = ws.sent.filter((m) => m.op === 'subscribe');
  assert.deepEqual(subs.map((m) => [m.rooms, m.since]), [[['public'], '3-0'], [['post:a'], '3-0'], [['post:b'], '1-0']]);
  c.subscribe('user:someone');
  const refused = ws.sent.filter((m) => m.op === 'subscribe').at(-1);
  ws.message({ op: 'error', ref: refused.ref, code: 'forbidden_room', message: 'not allowed' });
  assert.deepEqual(errors, [{ code: 'forbidden_room', message: 'not allowed', rooms: ['user:someone'] }]);
  assert.ok(!c.rooms.includes('user:someone'));
  ws.message({ op: 'reset', rooms: ['post:a'], reason: 'history_trimmed' });
  assert.deepEqual(resets, [{ rooms: ['post:a'], reason: 'history_trimmed' }]);
  assert.throws(() => c.subscribe('not a room'), TypeError);
  c.close();
});

test('unavailable in reply to a subscribe: reconnect after a backoff and subscribe again from the position', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c, states } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
  const errors = [];
  c.addEventListener('error', (e) => errors.push(e.detail));
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  sockets[0].message(ev('5-0'));
  c.subscribe('post:p1', { since: '2-0' });
  const sub = sockets[0].sent.filter((m) => m.op === 'subscribe').at(-1);
  sockets[0].message({ op: 'error', ref: sub.ref, code: 'unavailable', rooms: ['post:p1'], message: 'history is unreachable' });
  assert.deepEqual(errors, [{ code: 'unavailable', message: 'history is unreachable', rooms: ['post:p1'] }]);
  assert.ok(c.rooms.includes('post:p1'), 'the room is kept, to subscribe to again');
  assert.equal(states.at(-1), 'reconnecting');
  await until(() => sockets[1]?.sent.filter((m) => m.op === 'subscribe').length >= 1, 'a reconnect');
  const again = sockets[1].sent.filter((m) => m.op === 'subscribe').map((m) => [m.rooms, m.since]);
  assert.deepEqual(again.find(([rooms]) => rooms.includes('post:p1')), [['post:p1'], '2-0']);
  assert.deepEqual(again.find(([rooms]) => rooms.includes('public')), [['public'], '5-0']);
  c.close();
});

test('a room whose replay was cut short by a reconnect is replayed again from its own since', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  sockets[0].message(ev('9-0'));
  c.subscribe('post:old', { since: '2-0' });
  c.subscribe('post:done', { since: '3-0' });
  const subs = sockets[0].sent.filter((m) => m.op === 'subscribe');
  sockets[0].message({ op: 'subscribed', ref: subs[2].ref, rooms: ['post:done'] });
  sockets[0].message({ op: 'synced', ref: subs[2].ref, rooms: ['post:done'], last: null });
  sockets[0].message(ev('2-5', 'comment:added', 'post:old')); // the replay of post:old has begun ...
  sockets[0].serverClose(1006); // ... and is cut short
  await until(() => sockets[1]?.sent.length >= 3, 'a reconnect');
  sockets[1].ready();
  const again = sockets[1].sent.filter((m) => m.op === 'subscribe').map((m) => [m.rooms, m.since]);
  assert.deepEqual(again, [[['public', 'post:done'], '9-0'], [['post:old'], '2-0']]);
  c.close();
});

test('a room subscribed with since keeps that position across a reconnect when no event came yet', async () => {
  // Regression: once its replay was confirmed (synced, with nothing replayed), the room went back to the
  // connection's position, which was none (no event yet) or older than the room's since: a reconnect
  // subscribed it from now (missing what came while away) or from before its state (applying events twice).
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  c.subscribe('post:p1', { since: '4-0' });
  const sub = sockets[0].sent.filter((m) => m.op === 'subscribe').at(-1);
  sockets[0].message({ op: 'subscribed', ref: sub.ref, rooms: ['post:p1'] });
  sockets[0].message({ op: 'synced', ref: sub.ref, rooms: ['post:p1'] }); // nothing to replay: no `last`
  sockets[0].serverClose(1006);
  await until(() => sockets[1]?.sent.length >= 3, 'a reconnect');
  sockets[1].ready();
  let again = sockets[1].sent.filter((m) => m.op === 'subscribe').map((m) => [m.rooms, m.since]);
  assert.deepEqual(again.find(([rooms]) => rooms.includes('post:p1')), [['post:p1'], '4-0']);
  // once an event moves the position past it, the room goes on from the position like the others
  sockets[1].message(ev('6-0'));
  sockets[1].serverClose(1006);
  await until(() => sockets[2]?.sent.length >= 3, 'another reconnect');
  again = sockets[2].sent.filter((m) => m.op === 'subscribe').map((m) => [m.rooms, m.since]);
  assert.deepEqual(again, [[['public', 'post:p1'], '6-0']]);
  c.close();
});

test('a room subscribed with a since newer than the position is not replayed from the older position', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'], since: '1-0' });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  c.subscribe('post:p1', { since: '5-0' });
  const sub = sockets[0].sent.filter((m) => m.op === 'subscribe').at(-1);
  sockets[0].message({ op: 'synced', ref: sub.ref, rooms: ['post:p1'] });
  sockets[0].serverClose(1006);
  await until(() => sockets[1]?.sent.length >= 3, 'a reconnect');
  const again = sockets[1].sent.filter((m) => m.op === 'subscribe').map((m) => [m.rooms, m.since]);
  assert.deepEqual(again, [[['public'], '1-0'], [['post:p1'], '5-0']]);
  c.close();
});

test('polling: a room caught up from its since, before any event, is polled from there, not from now', async () => {
  const polls = [];
  const fetch = async (url, { signal }) => {
    const q = new URL(url).searchParams;
    polls.push([q.get('rooms'), q.get('since'), q.get('wait')]);
    if (q.get('wait') !== '0') { // the main poll waits until the client stops
      await new Promise((_, no) => signal.addEventListener('abort', () => no(new Error('aborted'))));
    }
    return { ok: true, status: 200, json: async () => ({ events: [], next: q.get('since') }) };
  };
  const { c } = client({ transport: 'polling', fetch, token: 'tok', rooms: [] });
  c.subscribe('post:p1', { since: '4-0' });
  c.connect();
  await until(() => polls.length >= 2, 'the catch-up and the main poll');
  assert.deepEqual(polls[0], ['post:p1', '4-0', '0']);
  assert.deepEqual(polls[1], ['post:p1', '4-0', '25']);
  c.close();
});

test('ping measures the round trip over the WebSocket; heartbeats too; null without a WebSocket', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'], heartbeat: 500 });
  const told = [];
  c.addEventListener('rtt', (e) => told.push(e.detail.ms));
  assert.equal(await c.ping(), null); // not connected
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const ws = sockets[0];
  ws.ready();
  assert.equal(c.rtt, null);
  const measured = c.ping();
  const ping = ws.sent.at(-1);
  assert.equal(ping.op, 'ping');
  await sleep(20);
  ws.message({ op: 'pong', ref: ping.ref });
  const ms = await measured;
  assert.ok(ms >= 15 && ms < 1000, String(ms));
  assert.equal(c.rtt, ms);
  assert.deepEqual(told, [ms]);
  // an idle connection's heartbeat is timed as well
  await until(() => ws.sent.filter((m) => m.op === 'ping').length >= 3, 'a heartbeat');
  const heartbeat = ws.sent.filter((m) => m.op === 'ping').at(-1);
  ws.message({ op: 'pong', ref: heartbeat.ref });
  assert.equal(told.length, 2);
  // a ping still in flight when the connection drops gives null
  const lost = c.ping();
  ws.serverClose(1006);
  assert.equal(await lost, null);
  c.close();
});

test('a server that stops answering is noticed by the pings: the client drops it and resumes elsewhere', async () => {
  // Browsers hide the WebSocket's own pings: a stopped server looked connected for a minute.
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c, states } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'], heartbeat: 60,
    heartbeatTimeout: 80 });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  const ws = sockets[0];
  ws.ready();
  ws.message(ev('7-0'));
  // answered pings keep it up
  for (let answered = 0; answered < 3;) {
    await until(() => ws.sent.some((m) => m.op === 'ping' && String(m.ref).startsWith('hb') && !m.answered), 'a ping');
    const ping = ws.sent.find((m) => m.op === 'ping' && String(m.ref).startsWith('hb') && !m.answered);
    ping.answered = true;
    ws.message({ op: 'pong', ref: ping.ref });
    answered++;
  }
  assert.equal(sockets.length, 1);
  assert.equal(ws.closedWith, null);
  // then silence: no frame after a ping
  await until(() => sockets.length === 2, 'a new connection after the unanswered ping', 3000);
  assert.equal(ws.closedWith.code, 4000);
  assert.deepEqual(states, ['connecting', 'connected', 'reconnecting']);
  await until(() => sockets[1].sent.some((m) => m.op === 'subscribe'), 'a subscribe');
  assert.equal(sockets[1].sent.find((m) => m.op === 'subscribe').since, '7-0'); // resumed from the position
  c.close();
});

test('with the default options, a silent server is noticed within 20 s (it took over 50 s)', async () => {
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
  try {
    const { FakeWebSocket, sockets } = fakeSockets();
    const { c } = client({ WebSocket: FakeWebSocket, token: 'tok', rooms: ['public'], heartbeat: undefined });
    const advance = async (ms) => {
      for (let t = 0; t < ms; t += 100) {
        mock.timers.tick(100);
        for (let i = 0; i < 5; i++) await Promise.resolve();
      }
    };
    c.connect();
    await advance(300);
    sockets[0].ready();
    assert.equal(c.state, 'connected');
    await advance(9000);
    assert.equal(sockets[0].ops().filter((op) => op === 'ping').length, 1); // (the ready ping) quiet is fine
    await advance(11000);
    assert.ok(sockets[0].sent.some((m) => m.op === 'ping' && String(m.ref).startsWith('hb')), 'no ping was sent');
    assert.equal(sockets[0].closedWith?.code, 4000, 'the silent connection is still up after 20 s');
    assert.ok(sockets.length >= 2, 'no new connection');
    c.close();
  } finally {
    mock.timers.reset();
  }
});

test('a token function that returns null connects anonymously, as a token of null does', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  let calls = 0;
  const { c } = client({ WebSocket: FakeWebSocket, token: async () => { calls++; return null; }, rooms: ['public'] });
  const errors = [];
  c.addEventListener('error', (e) => errors.push(e.detail));
  c.connect();
  await until(() => sockets[0]?.sent.length >= 2, 'the first frames');
  assert.deepEqual(sockets[0].ops(), ['subscribe', 'ping']); // no auth frame
  sockets[0].ready();
  assert.equal(c.state, 'connected');
  assert.deepEqual(errors, []);
  sockets[0].serverClose(1001);
  await until(() => sockets[1]?.sent.length >= 2, 'a second connection');
  assert.deepEqual(sockets[1].ops(), ['subscribe', 'ping']);
  assert.equal(calls, 1);
  c.close();
});

test('a token function that throws: an error event with its message, and a retry', async () => {
  const { FakeWebSocket, sockets } = fakeSockets();
  let calls = 0;
  const { c } = client({ WebSocket: FakeWebSocket, rooms: ['public'], token: async () => {
    calls++;
    if (calls === 1) throw new Error('REALTIME_JWT_SECRET is not set');
    return 'tok';
  } });
  const errors = [];
  c.addEventListener('error', (e) => errors.push(e.detail));
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'a connection after the retry');
  assert.deepEqual(errors, [{ code: 'token_failed', message: 'REALTIME_JWT_SECRET is not set' }]);
  assert.deepEqual(sockets[0].sent[0], { op: 'auth', token: 'tok', ref: 'auth' });
  c.close();
});

// -- optimistic likes -------------------------------------------------------------------------------------------

async function connected(user = 'me') {
  const { FakeWebSocket, sockets } = fakeSockets();
  const { c } = client({ WebSocket: FakeWebSocket, token: jwt({ sub: user, exp: 9999999999 }), rooms: ['post:p1'] });
  c.connect();
  await until(() => sockets[0]?.sent.length >= 3, 'the first frames');
  sockets[0].ready();
  return { c, ws: sockets[0] };
}

function recorder() {
  const log = [];
  return {
    log,
    apply: () => log.push('apply'),
    rollback: (err) => log.push(`rollback:${err.message}`),
    confirm: (how) => log.push(`confirm:${how.via}`),
  };
}

test('likeOptimistically: applied at once, confirmed by the matching event', async () => {
  const { c, ws } = await connected();
  const r = recorder();
  let release;
  const send = () => new Promise((resolve) => { release = resolve; }); // slower than the event
  const done = c.likeOptimistically({ postId: 'p1', liked: true, ...r, send });
  assert.deepEqual(r.log, ['apply']);
  ws.message(ev('9-0', 'post:liked', 'post:p1', { likes: 3, postId: 'p1', userId: 'other' })); // not ours
  ws.message(ev('9-1', 'post:unliked', 'post:p1', { likes: 2, postId: 'p1', userId: 'me' })); // not the kind
  assert.deepEqual(r.log, ['apply']);
  ws.message(ev('9-2', 'post:liked', 'post:p1', { likes: 3, postId: 'p1', userId: 'me' }));
  const how = await done;
  assert.equal(how.via, 'event');
  assert.equal(how.event.data.likes, 3);
  assert.deepEqual(r.log, ['apply', 'confirm:event']);
  release({ ok: true });
  c.close();
});

test('likeOptimistically: send retried with backoff, then confirmed by its answer', async () => {
  const { c } = await connected();
  const r = recorder();
  let calls = 0;
  const send = async () => {
    calls++;
    if (calls < 3) throw Object.assign(new Error('HTTP 503'), { retryable: true });
    return { liked: true, likes: 1 };
  };
  const how = await c.likeOptimistically({ postId: 'p1', ...r, send, retries: 3, retryBase: 5 });
  assert.equal(calls, 3);
  assert.equal(how.via, 'send');
  assert.deepEqual(how.response, { liked: true, likes: 1 });
  assert.deepEqual(r.log, ['apply', 'confirm:send']);
  c.close();
});

test('likeOptimistically: rolled back after the retries run out, at once for a non-retryable error', async () => {
  const { c } = await connected();
  {
    const r = recorder();
    let calls = 0;
    const send = async () => { calls++; throw new Error('down'); };
    await assert.rejects(c.likeOptimistically({ postId: 'p1', ...r, send, retries: 2, retryBase: 2 }), /down/);
    assert.equal(calls, 3);
    assert.deepEqual(r.log, ['apply', 'rollback:down']);
  }
  {
    const r = recorder();
    let calls = 0;
    const send = async () => { calls++; throw Object.assign(new Error('forbidden'), { retryable: false }); };
    await assert.rejects(c.likeOptimistically({ postId: 'p1', ...r, send, retries: 5 }), /forbidden/);
    assert.equal(calls, 1);
    assert.deepEqual(r.log, ['apply', 'rollback:forbidden']);
  }
  {
    const r = recorder(); // a send that never answers times out, and counts as a failure
    await assert.rejects(c.likeOptimistically({ postId: 'p1', ...r, send: () => new Promise(() => {}), retries: 0,
      timeout: 20 }), /timed out/);
    assert.deepEqual(r.log, ['apply', 'rollback:timed out']);
  }
  c.close();
});

test('likeOptimistically: a newer operation on the post supersedes the older; sends go in order', async () => {
  const { c } = await connected();
  const order = [];
  const r1 = recorder();
  const r2 = recorder();
  let release1;
  const first = c.likeOptimistically({ postId: 'p1', liked: true, ...r1,
    send: () => new Promise((resolve) => { order.push('send1'); release1 = () => { order.push('done1'); resolve({}); }; }) });
  const second = c.likeOptimistically({ postId: 'p1', liked: false, ...r2,
    send: async () => { order.push('send2'); return { liked: false }; } });
  assert.deepEqual(await first, { via: 'superseded' });
  await sleep(10);
  assert.deepEqual(order, ['send1']); // the second waits for the first's request
  release1();
  assert.equal((await second).via, 'send');
  assert.deepEqual(order, ['send1', 'done1', 'send2']);
  assert.deepEqual(r1.log, ['apply']); // neither confirmed nor rolled back
  assert.deepEqual(r2.log, ['apply', 'confirm:send']);
  c.close();
});

test('likeOptimistically: waitForEvent prefers the event to the answer of send', async () => {
  const { c, ws } = await connected();
  const r = recorder();
  const done = c.likeOptimistically({ postId: 'p1', ...r, send: async () => ({ liked: true }), waitForEvent: 1000 });
  await sleep(20);
  assert.deepEqual(r.log, ['apply']); // answered, but the event is awaited
  ws.message(ev('9-9', 'post:liked', 'post:p1', { likes: 1, postId: 'p1', userId: 'me' }));
  assert.equal((await done).via, 'event');
  const r2 = recorder(); // no event: the answer confirms after the wait
  const how = await c.likeOptimistically({ postId: 'p1', ...r2, send: async () => ({ liked: true }), waitForEvent: 20 });
  assert.equal(how.via, 'send');
  c.close();
});
