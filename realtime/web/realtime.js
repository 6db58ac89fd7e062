// realtime.js: the browser client of `realtime serve`. One dependency-free ES module, no build step; the server
// serves it at /client/realtime.js. Reference: docs/browser.md. Protocol: docs/protocol.md.
//
//   import { RealtimeClient } from '/client/realtime.js';
//   const rt = new RealtimeClient({ token: async () => fetchToken(), rooms: ['public'] });
//   rt.addEventListener('event', (e) => render(e.detail));         // {id, type, room, data, ts}
//   rt.addEventListener('statechange', (e) => show(e.detail.state)); // connected | reconnecting | polling | closed
//   rt.connect();
//
// What it does for you: sends the token in an `auth` frame first (browsers cannot set headers on a WebSocket)
// and refreshes it before `exp` when `token` is a function; reconnects with jittered exponential backoff after
// transient close codes only, resuming with `since` = the last event id; de-duplicates events by id; falls back
// to long-polling (GET /poll) after `fallbackAfter` failed WebSocket attempts in a row and goes back to the
// WebSocket as soon as a periodic retry works; keeps presence (online users per room) and typing state per
// room; and helps with optimistic updates (`likeOptimistically`). It never touches the DOM: render what it
// hands you as text.

const TERMINAL = new Set([1000, 4001, 4002]); // close codes after which a client stops (docs/protocol.md)
const TOKEN_EXPIRED = 4003;
// an id's text: plain, or a string that reads as an ObjectId's or an integer's, marked with ~ (docs/events.md, "Ids")
const ID = '(?:[A-Za-z0-9_.:@-]{1,80}|~(?:[0-9a-f]{24}|0|[1-9][0-9]{0,78}|-[1-9][0-9]{0,77}))';
const ROOM = new RegExp(`^(?:public|(?:post|author|user):${ID}|hashtag:[\\p{L}\\p{N}][\\p{L}\\p{N}_-]{0,63})$`, 'u');
const MAX_ROOMS_PER_FRAME = 50; // the server's bound on the rooms of one subscribe frame
const SEEN_MAX = 10000; // ids remembered for de-duplication

export const STATES = Object.freeze(['connecting', 'connected', 'reconnecting', 'polling', 'closed']);

/** Whether `name` follows the server's room grammar. */
export function validRoom(name) {
  return typeof name === 'string' && name.length <= 100 && ROOM.test(name);
}

/** Compares two event ids ('<number>-<number>', numbers past 2^53): -1, 0 or 1. */
export function compareIds(a, b) {
  const [a1, a2] = splitId(a);
  const [b1, b2] = splitId(b);
  if (a1 !== b1) return a1 < b1 ? -1 : 1;
  if (a2 !== b2) return a2 < b2 ? -1 : 1;
  return 0;
}

function splitId(id) {
  const m = /^(\d+)-(\d+)$/.exec(String(id));
  if (!m) throw new TypeError(`not an event id: ${id}`);
  return [BigInt(m[1]), BigInt(m[2])];
}

const clock = () => (globalThis.performance ? globalThis.performance.now() : Date.now());

function validId(id) {
  return typeof id === 'string' && /^\d+-\d+$/.test(id);
}

/** The n-th reconnect delay (ms): uniform in [d/2, d], d = min(cap, base * 2^n). */
export function backoffDelay(attempt, base = 500, cap = 30000, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * ceiling / 2;
}

/** The claims of a JWT, unverified (to know its `sub` and `exp`); null when it is not one. */
export function jwtClaims(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function endpoints(url) {
  const base = globalThis.location ? globalThis.location.href : import.meta.url;
  const u = new URL(url ?? new URL('/', import.meta.url).href, base);
  const secure = u.protocol === 'https:' || u.protocol === 'wss:';
  const path = u.pathname.replace(/\/(?:ws|poll)?$/, '');
  return {
    ws: `${secure ? 'wss' : 'ws'}://${u.host}${path}/ws`,
    poll: `${secure ? 'https' : 'http'}://${u.host}${path}/poll`,
  };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/**
 * A connection to `realtime serve`, as an EventTarget. Events (CustomEvent, payload in `detail`):
 *
 * - `event`: every event once, `{id, type, room, data, ts}`; also dispatched under its own type
 *   (`post:liked`, `comment:added`, ...)
 * - `reset`: `{rooms, reason}`: refetch the state of those rooms, then keep applying events
 * - `statechange`: `{state, previous}`; `state` is `connecting` (the first attempt), `connected`,
 *   `reconnecting`, `polling` or `closed`
 * - `presence`: `{room, users}` (the users online in the room, sorted) whenever that set changes
 * - `typing`: `{room, users}` (the users typing in the room) whenever that set changes
 * - `rtt`: `{ms}`, the round trip of a ping over the WebSocket (heartbeats and `ping()`)
 * - `authenticated`: `{user, expires}`; `error`: `{code, message, rooms?}`; `closed`: `{code, reason}`
 */
export class RealtimeClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url] the server (`http://host:port`, or its `/ws` URL); default: where this module
   *   was loaded from
   * @param {string|(() => Promise<string|null>|string|null)|null} [options.token] a JWT, or a function returning a
   *   fresh one (called again before `exp` and after a 4003); null, or a function that returns null: anonymous (public rooms, if the server allows). A function that
   *   throws fails the attempt: an `error` event (`token_failed`, its message), then a retry after a backoff
   * @param {string[]} [options.rooms] rooms to subscribe to at once
   * @param {string} [options.since] the event id to start after (e.g. the position of a state snapshot)
   * @param {'auto'|'websocket'|'polling'} [options.transport] `polling` long-polls only; `websocket` never does
   * @param {number} [options.fallbackAfter] failed WebSocket attempts in a row before long-polling (3)
   * @param {number} [options.wsRetry] ms between WebSocket retries while long-polling (30000)
   * @param {number} [options.backoffBase] ms (500); [options.backoffCap] ms (30000)
   * @param {number} [options.connectTimeout] ms for a WebSocket to be connected and subscribed (10000)
   * @param {number} [options.heartbeat] ms of silence on the WebSocket after which the client pings (10000;
   *   0: no pings, and no check that the connection is alive)
   * @param {number} [options.heartbeatTimeout] ms after such a ping without any frame from the server before the
   *   connection counts as dead: it is dropped and the client reconnects and resumes (5000). Browsers do not
   *   show the WebSocket's own pings to pages: without this, a server that hangs (stopped, or a network path
   *   that drops everything) would look connected until TCP gives up
   * @param {number} [options.pollWait] seconds a poll waits on the server (25)
   * @param {number} [options.refreshBefore] seconds before `exp` to refresh a token (60; at most half its life)
   * @param {number} [options.typingInterval] ms between two typing notices sent for a room (1000)
   * @param {number} [options.typingTimeout] ms after which a typist is dropped without `user:stopped_typing` (10000)
   * @param {string[]|null} [options.presenceRooms] room prefixes to ask presence of on subscribe (null: all)
   */
  constructor(options = {}) {
    super();
    const o = options;
    const ends = endpoints(o.url);
    this.wsUrl = o.wsUrl ?? ends.ws;
    this.pollUrl = o.pollUrl ?? ends.poll;
    this.transportMode = o.transport ?? 'auto';
    if (!['auto', 'websocket', 'polling'].includes(this.transportMode)) {
      throw new TypeError(`transport must be auto, websocket or polling, not ${this.transportMode}`);
    }
    this.fallbackAfter = o.fallbackAfter ?? 3;
    this.wsRetry = o.wsRetry ?? 30000;
    this.backoffBase = o.backoffBase ?? 500;
    this.backoffCap = o.backoffCap ?? 30000;
    this.connectTimeout = o.connectTimeout ?? 10000;
    this.heartbeat = o.heartbeat ?? 10000;
    this.heartbeatTimeout = o.heartbeatTimeout ?? 5000;
    this.pollWait = o.pollWait ?? 25;
    this.refreshBefore = o.refreshBefore ?? 60;
    this.typingInterval = o.typingInterval ?? 1000;
    this.typingTimeout = o.typingTimeout ?? 10000;
    this.presenceRooms = o.presenceRooms === undefined ? null : o.presenceRooms;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    this._random = o.random ?? Math.random;

    this._token = o.token ?? null;
    this._tokenCache = null; // {token, exp, at} for a token function
    this._user = null;
    this._state = 'idle';
    this._closed = false;
    this._rooms = new Set();
    this._lastId = null;
    this._seen = new Set();
    this._seenOrder = [];
    this._mode = this.transportMode === 'polling' ? 'polling' : 'websocket';
    this._link = null; // the WebSocket attempt or connection: {ws, ready, timers...}
    this._linkSerial = 0;
    this._attempt = 0; // for the backoff
    this._wsFailures = 0; // WebSocket attempts in a row that never got connected
    this._reconnectTimer = null;
    this._probeTimer = null;
    this._pollGen = 0;
    this._pollAbort = null;
    this._pollRestart = false;
    this._pollErrors = 0;
    this._roomsWaiter = null;
    this._roomSince = new Map(); // room -> since, for rooms whose replay is not confirmed yet
    this._roomFloor = new Map(); // room -> since, for replayed rooms whose since is past the position (or none)
    this._presence = new Map(); // room -> Set of users
    this._noPresence = new Set(); // rooms the server does not track presence in
    this._typing = new Map(); // room -> Map user -> timer
    this._typingSent = new Map(); // room -> when we last sent typing
    this._refs = 0;
    this._pendingRefs = new Map(); // ref -> {kind, rooms|room}
    this._ops = new Map(); // key -> optimistic operation in flight
    this._pings = new Map(); // ref -> {at, link, done}: pings whose round trip is measured
    this._rtt = null;
    this._onOnline = () => this._nudge();

    if (o.since != null) {
      if (!validId(o.since)) throw new TypeError(`since must be an event id, not ${o.since}`);
      this._lastId = o.since;
    }
    if (typeof this._token === 'string') this._user = jwtClaims(this._token)?.sub ?? null;
    for (const room of o.rooms ?? []) this._addRoom(room);
  }

  // -- public API -------------------------------------------------------------------------------------------

  /** `connecting`, `connected`, `reconnecting`, `polling` or `closed` (`idle` before connect()). */
  get state() { return this._state; }

  /** `websocket` or `polling`: how events come now. */
  get transport() { return this._mode; }

  /** The authenticated user (the token's `sub`), or null. */
  get user() { return this._user; }

  /** The position: the newest event id received (send it as `since` next time). */
  get lastId() { return this._lastId; }

  get rooms() { return [...this._rooms]; }

  /** The last round trip measured over the WebSocket (ms; heartbeats and `ping()`), or null. */
  get rtt() { return this._rtt; }

  /** Users online in `room` (sorted), as the server last told. */
  presence(room) { return [...(this._presence.get(room) ?? [])].sort(); }

  /** Users typing in `room` (sorted). */
  typingUsers(room) { return [...(this._typing.get(room)?.keys() ?? [])].sort(); }

  /**
   * Measures the round trip to the server: a `ping` frame, timed until its `pong`. Resolves to milliseconds
   * (also kept in `rtt` and told by an `rtt` event, `{ms}`), or null when no WebSocket is connected (polling,
   * reconnecting) or no pong comes within `timeout` ms.
   */
  ping(timeout = 5000) {
    const link = this._link;
    if (!link?.ready) return Promise.resolve(null);
    return new Promise((resolve) => {
      const ref = `rtt${++this._refs}`;
      const timer = setTimeout(() => done(null), timeout);
      const done = (ms) => {
        clearTimeout(timer);
        this._pings.delete(ref);
        resolve(ms);
      };
      this._pings.set(ref, { at: clock(), link, done });
      if (!this._send(link, { op: 'ping', ref })) done(null);
    });
  }

  /** Starts connecting (once). Returns the client. */
  connect() {
    if (this._state !== 'idle') return this;
    globalThis.addEventListener?.('online', this._onOnline);
    this._setState(this._mode === 'polling' ? 'reconnecting' : 'connecting');
    if (this._mode === 'polling') this._startPolling(false);
    else this._attemptWs();
    return this;
  }

  /** Stops for good: closes the connection (1000), ends polling, cancels timers. */
  close() {
    this._shutdown(1000, 'client closed');
  }

  _shutdown(code, reason) {
    if (this._closed) return;
    this._closed = true;
    globalThis.removeEventListener?.('online', this._onOnline);
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._probeTimer);
    this._pollGen++;
    this._pollAbort?.abort();
    this._roomsWaiter?.();
    const link = this._link;
    if (link) {
      this._link = null;
      this._dropLink(link, 1000, 'client closed');
    }
    this._clearEphemeral([...this._presence.keys(), ...this._typing.keys()]);
    for (const ping of [...this._pings.values()]) ping.done(null);
    this._setState('closed');
    this.dispatchEvent(new CustomEvent('closed', { detail: { code, reason } }));
  }

  /**
   * Subscribes to rooms (kept across reconnects). New rooms get their events after `since` (an event id: where
   * the state you hold of those rooms was read, e.g. a snapshot's position), or after the current position.
   */
  subscribe(rooms, { since } = {}) {
    if (since != null && !validId(since)) throw new TypeError(`since must be an event id, not ${since}`);
    const added = [];
    for (const room of [].concat(rooms)) {
      if (this._addRoom(room)) added.push(room);
    }
    if (!added.length) return this;
    // Until the server confirms the replay (`synced`), a reconnect subscribes these rooms from `from` again.
    const from = since ?? this._lastId;
    if (from != null) for (const room of added) this._roomSince.set(room, from);
    const link = this._link;
    if (link?.opened) { // (before that, the connection's first frames carry every room)
      this._sendSubscribe(link, added, from);
    } else if (this._mode === 'polling') {
      this._restartPoll();
    }
    return this;
  }

  /** Unsubscribes from rooms. */
  unsubscribe(rooms) {
    const gone = [].concat(rooms).filter((r) => this._rooms.delete(r));
    for (const room of gone) {
      this._roomSince.delete(room);
      this._roomFloor.delete(room);
    }
    if (!gone.length) return this;
    const link = this._link;
    if (link?.opened) {
      for (let i = 0; i < gone.length; i += MAX_ROOMS_PER_FRAME) {
        this._send(link, { op: 'unsubscribe', rooms: gone.slice(i, i + MAX_ROOMS_PER_FRAME) });
      }
    } else if (this._mode === 'polling') {
      this._restartPoll();
    }
    this._clearEphemeral(gone);
    return this;
  }

  /**
   * Tells the other members of a post room that the user is typing. Throttled to one notice per
   * `typingInterval` per room; needs a token and the WebSocket. Returns whether a notice was sent.
   */
  typing(room) {
    const link = this._link;
    if (!link?.ready || !this._user || !validRoom(room) || !room.startsWith('post:')) return false;
    const now = Date.now();
    if (now - (this._typingSent.get(room) ?? -Infinity) < this.typingInterval) return false;
    this._typingSent.set(room, now);
    return this._send(link, { op: 'typing', room });
  }

  /**
   * An optimistic update, made for likes: `apply()` at once; confirmed by the first of the matching event (by
   * default `post:liked` when `liked` is true, `post:unliked` when false, for `postId` and this user) and the
   * `send` promise; `send` is retried with jittered backoff up to `retries` times; `rollback(error)` when it
   * still fails. A newer operation with the same `key` (default: the post) supersedes an older one: the older is
   * neither confirmed nor rolled back, and the newer's `send` waits for the older's to settle, so that the
   * server sees them in order.
   *
   * @param {object} op
   * @param {() => void} op.apply
   * @param {(error: Error) => void} op.rollback
   * @param {(attempt: number, signal: AbortSignal) => Promise<any>} op.send rejects on failure; an error with
   *   `retryable === false` is not retried
   * @param {(how: {via: 'event'|'send', event?: object, response?: any}) => void} [op.confirm]
   * @param {string} [op.postId] with `liked`, what the matching event is
   * @param {boolean} [op.liked] true: a like (default); false: an unlike
   * @param {(event: object) => boolean} [op.match] the confirming event, instead of postId/liked
   * @param {string} [op.key]
   * @param {number} [op.retries] 3
   * @param {number} [op.retryBase] ms (500)
   * @param {number} [op.timeout] ms per send attempt (10000)
   * @param {number} [op.waitForEvent] ms to wait for the event after `send` resolved before confirming with the
   *   response (0: confirm with whichever comes first)
   * @returns {Promise<{via: 'event'|'send'|'superseded', event?: object, response?: any}>} rejects after rollback
   */
  likeOptimistically(op) {
    const { apply, rollback, send } = op;
    if (typeof apply !== 'function' || typeof rollback !== 'function' || typeof send !== 'function') {
      return Promise.reject(new TypeError('likeOptimistically needs apply, rollback and send functions'));
    }
    const retries = op.retries ?? 3;
    const retryBase = op.retryBase ?? 500;
    const timeout = op.timeout ?? 10000;
    const waitForEvent = op.waitForEvent ?? 0;
    const type = op.liked === false ? 'post:unliked' : 'post:liked';
    const match = op.match ?? (op.postId == null ? null : (e) => e.type === type && e.data?.postId === op.postId
      && (this._user == null || e.data?.userId === this._user));
    const key = op.key ?? (op.postId == null ? null : `like:${op.postId}`);
    const previous = key == null ? undefined : this._ops.get(key);

    return new Promise((resolve, reject) => {
      let done = false;
      let eventTimer = null;
      const stop = new AbortController(); // cuts the wait between two attempts short, never an attempt in flight
      const entry = { sending: null, supersede: () => finish({ via: 'superseded' }, true) };
      const onEvent = (e) => { if (!done && match?.(e.detail)) finish({ via: 'event', event: e.detail }); };
      const cleanup = () => {
        done = true;
        clearTimeout(eventTimer);
        stop.abort();
        this.removeEventListener('event', onEvent);
        if (key != null && this._ops.get(key) === entry) this._ops.delete(key);
      };
      const finish = (how, superseded = false) => {
        if (done) return;
        cleanup();
        if (!superseded) {
          try { op.confirm?.(how); } catch (err) { reportError(err); }
        }
        resolve(how);
      };
      const fail = (error) => {
        if (done) return;
        cleanup();
        try { rollback(error); } catch (err) { reportError(err); }
        reject(error);
      };

      previous?.supersede();
      if (key != null) this._ops.set(key, entry);
      if (match) this.addEventListener('event', onEvent);
      try {
        apply();
      } catch (err) {
        cleanup();
        reject(err);
        return;
      }
      entry.sending = (async () => {
        if (previous?.sending) await previous.sending; // (never rejects) the server sees the writes in order
        for (let attempt = 0; !done; attempt++) {
          const attemptAbort = new AbortController();
          const timer = setTimeout(() => attemptAbort.abort(new Error('timed out')), timeout);
          try {
            const response = await Promise.race([
              send(attempt, attemptAbort.signal), // called at once (the first time: before this returns)
              new Promise((_, no) => attemptAbort.signal.addEventListener(
                'abort', () => no(attemptAbort.signal.reason ?? new Error('aborted')), { once: true })),
            ]);
            if (done) return;
            if (waitForEvent > 0 && match) {
              eventTimer = setTimeout(() => finish({ via: 'send', response }), waitForEvent);
            } else {
              finish({ via: 'send', response });
            }
            return;
          } catch (error) {
            if (done) return;
            if (error?.retryable === false || attempt >= retries) {
              fail(error instanceof Error ? error : new Error(String(error)));
              return;
            }
            await sleep(backoffDelay(attempt, retryBase, retryBase * 16, this._random), stop.signal);
          } finally {
            clearTimeout(timer);
          }
        }
      })();
    });
  }

  // -- rooms and state --------------------------------------------------------------------------------------

  _addRoom(room) {
    if (!validRoom(room)) throw new TypeError(`invalid room name: ${String(room).slice(0, 40)}`);
    if (this._rooms.has(room)) return false;
    this._rooms.add(room);
    this._roomsWaiter?.();
    return true;
  }

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.dispatchEvent(new CustomEvent('statechange', { detail: { state, previous } }));
  }

  _finish(code, reason) {
    this._shutdown(code, reason);
  }

  _remember(id) {
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > SEEN_MAX) this._seen.delete(this._seenOrder.shift());
  }

  _advance(id) {
    if (!validId(id) || (this._lastId != null && compareIds(id, this._lastId) <= 0)) return;
    this._lastId = id;
    for (const [room, floor] of this._roomFloor) {
      if (compareIds(floor, id) <= 0) this._roomFloor.delete(room); // the position has passed it
    }
  }

  /**
   * A room's replay from `since` is done: from now on it goes on from the position, unless the position is
   * none yet or older than `since` (nothing came since): then from `since`, until the position passes it.
   * (Resuming such a room from the position would miss what came while away, or replay what its state has.)
   */
  _replayed(room, since) {
    this._roomSince.delete(room);
    if (validId(since) && (this._lastId == null || compareIds(since, this._lastId) > 0)) {
      this._roomFloor.set(room, since);
    }
  }

  /** Where a reconnect resumes a room whose replay is done: the later of its floor and the position. */
  _roomPosition(room) {
    return this._roomFloor.get(room) ?? this._lastId;
  }

  /** Where the main poll goes on from: the position; before any, the oldest floor (more, never a gap). */
  _pollPosition() {
    if (this._lastId != null || !this._roomFloor.size) return this._lastId;
    return [...this._roomFloor.values()].reduce((a, b) => (compareIds(a, b) <= 0 ? a : b));
  }

  _onEvent(msg) {
    if (!validId(msg.id) || this._seen.has(msg.id)) return; // once, whichever transport or replay it came by
    this._remember(msg.id);
    this._advance(msg.id);
    const detail = Object.freeze({ id: msg.id, type: msg.type, room: msg.room, data: msg.data, ts: msg.ts });
    this.dispatchEvent(new CustomEvent('event', { detail }));
    if (typeof msg.type === 'string' && msg.type) this.dispatchEvent(new CustomEvent(msg.type, { detail }));
  }

  _onReset(rooms, reason) {
    this.dispatchEvent(new CustomEvent('reset', { detail: { rooms: [...rooms], reason } }));
  }

  // -- tokens -----------------------------------------------------------------------------------------------

  async _getToken(force = false) {
    const t = this._token;
    if (t == null) return null;
    if (typeof t === 'string') return t;
    const now = Date.now() / 1000;
    const c = this._tokenCache;
    if (!force && c && (c.exp == null || c.exp - now > Math.min(this.refreshBefore, (c.exp - c.at) / 2))) {
      return c.token;
    }
    const token = await t();
    if (token == null) { // anonymous, as a token of null is (kept like a token without exp)
      this._tokenCache = { token: null, exp: null, at: now };
      return null;
    }
    if (typeof token !== 'string' || !token) throw new Error('the token function returned no token');
    const claims = jwtClaims(token);
    this._tokenCache = { token, exp: typeof claims?.exp === 'number' ? claims.exp : null, at: now };
    if (claims?.sub && !this._user) this._user = claims.sub;
    return token;
  }

  _scheduleRefresh(link, expires) {
    clearTimeout(link.refreshTimer);
    if (typeof this._token !== 'function' || typeof expires !== 'number') return;
    const now = Date.now() / 1000;
    const left = expires - now;
    const lead = Math.min(this.refreshBefore, left / 2);
    link.refreshTimer = setTimeout(async () => {
      try {
        const token = await this._getToken(true);
        if (this._link === link && link.ws.readyState === 1) this._send(link, { op: 'auth', token, ref: 'refresh' });
      } catch (err) {
        this._error('token_refresh_failed', String(err?.message ?? err));
      }
    }, Math.max(1000, (left - lead) * 1000));
  }

  _error(code, message, extra = {}) {
    this.dispatchEvent(new CustomEvent('error', { detail: { code, message, ...extra } }));
  }

  // -- WebSocket --------------------------------------------------------------------------------------------

  _send(link, msg) {
    if (link.ws.readyState !== 1) return false;
    try {
      link.ws.send(JSON.stringify(msg));
      return true;
    } catch {
      return false;
    }
  }

  _ref(kind, extra) {
    const ref = `${kind}${++this._refs}`;
    this._pendingRefs.set(ref, { kind, ...extra });
    if (this._pendingRefs.size > 1000) this._pendingRefs.delete(this._pendingRefs.keys().next().value);
    return ref;
  }

  _sendSubscribe(link, rooms, since) {
    for (let i = 0; i < rooms.length; i += MAX_ROOMS_PER_FRAME) {
      const chunk = rooms.slice(i, i + MAX_ROOMS_PER_FRAME);
      const msg = { op: 'subscribe', rooms: chunk, ref: this._ref('sub', { rooms: chunk, since }) };
      if (since) msg.since = since;
      this._send(link, msg);
    }
    for (const room of rooms) this._queryPresence(link, room);
  }

  _queryPresence(link, room) {
    if (this._noPresence.has(room)) return;
    if (this.presenceRooms && !this.presenceRooms.some((prefix) => room.startsWith(prefix))) return;
    this._send(link, { op: 'presence', room, ref: this._ref('presence', { room }) });
  }

  async _attemptWs() {
    if (this._closed || this._link) return;
    const probe = this._mode === 'polling';
    const link = { ws: null, opened: false, ready: false, serial: ++this._linkSerial, probe, timers: [], refreshTimer: null,
      heartbeatTimer: null, lastIn: Date.now(), pingAt: null };
    this._link = link;
    let token;
    try {
      token = await this._getToken();
    } catch (err) {
      this._error('token_failed', String(err?.message ?? err));
      if (this._link === link) this._linkFailed(link, 1006, 'no token');
      return;
    }
    if (this._link !== link) return;
    let ws;
    try {
      ws = new this._WebSocket(this.wsUrl);
    } catch (err) {
      this._linkFailed(link, 1006, String(err?.message ?? err));
      return;
    }
    link.ws = ws;
    link.timers.push(setTimeout(() => {
      if (this._link === link && !link.ready) {
        this._link = null;
        this._dropLink(link, 4000, 'connect timeout');
        this._linkClosed(link, 1006, 'connect timeout');
      }
    }, this.connectTimeout));
    ws.onopen = () => {
      if (this._link !== link) return;
      link.opened = true;
      if (token) this._send(link, { op: 'auth', token, ref: 'auth' });
      // Every room from the position; rooms whose replay was not confirmed from their own `since`.
      const groups = new Map();
      for (const room of this._rooms) {
        const since = this._roomSince.get(room) ?? this._roomPosition(room);
        if (!groups.has(since)) groups.set(since, []);
        groups.get(since).push(room);
      }
      for (const [since, rooms] of groups) {
        for (let i = 0; i < rooms.length; i += MAX_ROOMS_PER_FRAME) {
          const chunk = rooms.slice(i, i + MAX_ROOMS_PER_FRAME);
          const msg = { op: 'subscribe', rooms: chunk, ref: this._ref('sub', { rooms: chunk, since }) };
          if (since) msg.since = since;
          this._send(link, msg);
        }
      }
      // Frames are answered in order: the pong comes after the subscriptions' replays.
      this._send(link, { op: 'ping', ref: `ready${link.serial}` });
    };
    ws.onmessage = (m) => {
      if (this._link !== link) return;
      link.lastIn = Date.now();
      let msg;
      try { msg = JSON.parse(m.data); } catch { return; }
      if (msg && typeof msg === 'object') this._onFrame(link, msg);
    };
    ws.onclose = (e) => {
      if (this._link !== link) return;
      this._link = null;
      this._linkClosed(link, e.code, e.reason);
    };
    ws.onerror = () => {}; // a close follows
  }

  _onReady(link) {
    link.ready = true;
    clearTimeout(link.timers.shift());
    this._attempt = 0;
    this._wsFailures = 0;
    const wasPolling = this._mode === 'polling';
    this._mode = 'websocket';
    if (wasPolling) {
      clearTimeout(this._probeTimer);
      this._pollGen++;
      this._pollAbort?.abort();
    }
    for (const room of this._rooms) this._queryPresence(link, room);
    if (this.heartbeat > 0) {
      const every = Math.max(100, Math.min(this.heartbeat, this.heartbeatTimeout) / 4);
      link.heartbeatTimer = setInterval(() => this._checkAlive(link), every);
    }
    this._setState('connected');
  }

  /**
   * Liveness, by the application's own pings (a page cannot see the WebSocket's): after `heartbeat` ms without
   * a frame, a ping; when no frame at all comes within `heartbeatTimeout` ms of it, the connection is dropped
   * and the client reconnects (resuming from its position). A late timer (a background tab) cannot drop a
   * live connection: only silence after the ping counts.
   */
  _checkAlive(link) {
    if (this._link !== link) return;
    const now = Date.now();
    if (link.pingAt != null && link.lastIn < link.pingAt) {
      if (now - link.pingAt < this.heartbeatTimeout) return;
      this._link = null;
      this._dropLink(link, 4000, 'no answer to a ping');
      this._linkClosed(link, 1006, 'no answer to a ping');
      return;
    }
    link.pingAt = null;
    if (now - link.lastIn < this.heartbeat) return;
    const ref = `hb${++this._refs}`;
    const timer = setTimeout(() => this._pings.delete(ref), this.heartbeatTimeout * 2);
    this._pings.set(ref, { at: clock(), link, done: () => { clearTimeout(timer); this._pings.delete(ref); } });
    if (this._send(link, { op: 'ping', ref })) link.pingAt = now;
  }

  _onFrame(link, msg) {
    switch (msg.op) {
      case 'event':
        this._onEvent(msg);
        break;
      case 'pong': {
        if (msg.ref === `ready${link.serial}` && !link.ready) this._onReady(link);
        const ping = this._pings.get(msg.ref);
        if (ping?.link === link) {
          const ms = Math.round((clock() - ping.at) * 10) / 10;
          this._rtt = ms;
          ping.done(ms);
          this.dispatchEvent(new CustomEvent('rtt', { detail: { ms } }));
        }
        break;
      }
      case 'authenticated':
        if (typeof msg.user === 'string') this._user = msg.user;
        this._scheduleRefresh(link, msg.expires);
        this.dispatchEvent(new CustomEvent('authenticated', { detail: { user: msg.user, expires: msg.expires } }));
        break;
      case 'reset':
        this._onReset(Array.isArray(msg.rooms) ? msg.rooms : [], msg.reason);
        break;
      case 'synced': {
        if (msg.last) this._advance(msg.last);
        const sub = this._pendingRefs.get(msg.ref);
        this._pendingRefs.delete(msg.ref);
        for (const room of sub?.rooms ?? []) {
          if (this._roomSince.get(room) === sub.since) this._replayed(room, sub.since);
        }
        break;
      }
      case 'subscribed':
        if (this._pendingRefs.get(msg.ref)?.since == null) this._pendingRefs.delete(msg.ref); // else: until synced
        break;
      case 'presence':
        if (typeof msg.type === 'string') this._onPresenceEvent(msg);
        else if (typeof msg.room === 'string' && Array.isArray(msg.users)) {
          this._pendingRefs.delete(msg.ref);
          this._setPresence(msg.room, new Set(msg.users));
        }
        break;
      case 'error':
        this._onErrorFrame(link, msg);
        break;
      default:
        break;
    }
  }

  _onErrorFrame(link, msg) {
    const pending = msg.ref == null ? undefined : this._pendingRefs.get(msg.ref);
    if (pending) this._pendingRefs.delete(msg.ref);
    if (pending?.kind === 'sub' && msg.code === 'unavailable') {
      // The server could not read the rooms' history and left them (docs/protocol.md): reconnect after a
      // backoff, which subscribes to every room again from its position.
      this._error(msg.code, msg.message, { rooms: pending.rooms });
      if (this._link === link) this._linkFailed(link, 1013, 'history unavailable');
      return;
    }
    if (pending?.kind === 'presence' && (msg.code === 'unsupported' || msg.code === 'forbidden_room')) {
      this._noPresence.add(pending.room); // presence is not tracked there: do not ask again
      return;
    }
    if (pending?.kind === 'sub' && ['forbidden_room', 'bad_room', 'too_many_rooms', 'bad_frame'].includes(msg.code)) {
      for (const room of pending.rooms) this._rooms.delete(room); // the server refused the whole frame
      this._error(msg.code, msg.message, { rooms: pending.rooms });
      return;
    }
    this._error(msg.code, msg.message);
  }

  _dropLink(link, code, reason) {
    link.timers.forEach(clearTimeout);
    clearTimeout(link.refreshTimer);
    clearInterval(link.heartbeatTimer);
    const ws = link.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code, reason); } catch { try { ws.close(); } catch { /* already closed */ } }
  }

  _linkFailed(link, code, reason) {
    this._link = null;
    this._dropLink(link, 4000, reason);
    this._linkClosed(link, code, reason);
  }

  _linkClosed(link, code, reason) {
    for (const ping of [...this._pings.values()]) if (ping.link === link) ping.done(null);
    link.timers.forEach(clearTimeout);
    clearTimeout(link.refreshTimer);
    clearInterval(link.heartbeatTimer);
    if (link.ready) this._clearEphemeral([...this._presence.keys(), ...this._typing.keys()]);
    if (this._closed) return;
    if (!link.ready && link.probe) { // a retry of the WebSocket while polling did not work: keep polling
      this._scheduleProbe(this.wsRetry);
      return;
    }
    if (TERMINAL.has(code)) {
      this._finish(code, reason);
      return;
    }
    if (code === TOKEN_EXPIRED) {
      if (typeof this._token !== 'function') {
        this._finish(code, reason || 'token expired');
        return;
      }
      this._tokenCache = null; // ask for a new one before reconnecting
    }
    if (!link.ready) this._wsFailures++;
    if (this.transportMode === 'auto' && this._wsFailures >= this.fallbackAfter) {
      this._startPolling(true);
    } else {
      this._scheduleReconnect();
    }
  }

  _scheduleReconnect(delay) {
    this._setState('reconnecting');
    clearTimeout(this._reconnectTimer);
    const ms = delay ?? backoffDelay(this._attempt++, this.backoffBase, this.backoffCap, this._random);
    this._reconnectTimer = setTimeout(() => this._attemptWs(), ms);
  }

  _nudge() { // the browser says it is online again: do not wait out the backoff
    if (this._closed) return;
    if (this._mode === 'websocket' && !this._link && this._state === 'reconnecting') this._scheduleReconnect(0);
  }

  _scheduleProbe(ms) {
    clearTimeout(this._probeTimer);
    if (this._closed || this.transportMode === 'polling') return;
    const jittered = ms * (0.8 + this._random() * 0.4);
    this._probeTimer = setTimeout(() => {
      if (this._mode === 'polling' && !this._closed) this._attemptWs();
    }, jittered);
  }

  // -- long-polling -----------------------------------------------------------------------------------------

  _startPolling(probeLater) {
    this._mode = 'polling';
    if (this._state !== 'connecting') this._setState('reconnecting'); // until a poll answers
    const gen = ++this._pollGen;
    this._pollErrors = 0;
    if (probeLater) this._scheduleProbe(this.wsRetry);
    this._pollLoop(gen);
  }

  _restartPoll() {
    this._pollRestart = true;
    this._pollAbort?.abort();
    this._roomsWaiter?.();
  }

  _pollActive(gen) {
    return !this._closed && this._mode === 'polling' && gen === this._pollGen;
  }

  async _pollOnce(rooms, since, wait, signal) {
    const token = await this._getToken();
    const q = new URLSearchParams({ rooms: rooms.join(','), wait: String(wait) });
    if (since) q.set('since', since);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await this._fetch(`${this.pollUrl}?${q}`, { headers, signal, cache: 'no-store' });
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) throw new HttpError(res.status, body?.error?.code, body?.error?.message);
    if (!body || !Array.isArray(body.events)) throw new HttpError(res.status, 'bad_reply', 'not a poll reply');
    return body;
  }

  async _pollLoop(gen) {
    let refreshed = false;
    while (this._pollActive(gen)) {
      if (!this._rooms.size) {
        await new Promise((resolve) => {
          this._roomsWaiter = () => { this._roomsWaiter = null; resolve(); };
        });
        continue;
      }
      const ctrl = new AbortController();
      this._pollAbort = ctrl;
      this._pollRestart = false;
      if (this._roomSince.size) {
        try {
          await this._catchUp(gen, ctrl.signal);
        } catch {
          // the main poll's error handling takes over
        }
        if (!this._pollActive(gen)) return;
      }
      const rooms = [...this._rooms];
      const timer = setTimeout(() => ctrl.abort(), (this.pollWait + 15) * 1000);
      let body;
      try {
        body = await this._pollOnce(rooms, this._pollPosition(), this.pollWait, ctrl.signal);
      } catch (err) {
        clearTimeout(timer);
        if (!this._pollActive(gen)) return;
        if (this._pollRestart) continue; // the rooms changed: poll again with the new ones
        if (err instanceof HttpError) {
          if (err.status === 401 && typeof this._token === 'function' && !refreshed) {
            refreshed = true; // once: a fresh token may do
            this._tokenCache = null;
            continue;
          }
          if (err.status === 401) {
            this._finish(err.code === 'token_expired' ? TOKEN_EXPIRED : 4001, err.message);
            return;
          }
          if (err.status === 400 || err.status === 403) this._error(err.code, err.message);
        }
        this._pollErrors++;
        this._setState('reconnecting');
        await sleep(backoffDelay(this._pollErrors - 1, this.backoffBase, this.backoffCap, this._random));
        continue;
      }
      clearTimeout(timer);
      if (!this._pollActive(gen)) return;
      refreshed = false;
      const recovered = this._pollErrors > 0;
      this._pollErrors = 0;
      this._setState('polling');
      if (recovered && this.transportMode === 'auto' && !this._link) {
        this._scheduleProbe(0); // the server may have been down, not the WebSocket blocked: try it at once
      }
      await this._takePoll(gen, rooms, body);
    }
  }

  async _catchUp(gen, signal) { // rooms added with their own `since`, up to now, before joining the main poll
    for (const [room, from] of [...this._roomSince]) {
      let since = from;
      for (let i = 0; i < 100 && this._pollActive(gen); i++) {
        const more = await this._pollOnce([room], since, 0, signal);
        for (const r of more.resets ?? []) this._onReset(r.rooms ?? [], r.reason);
        for (const msg of more.events) this._onEvent(msg);
        if (!more.events.length) break;
        since = more.next;
      }
      this._replayed(room, since);
    }
  }

  async _takePoll(gen, rooms, body) {
    const since = this._lastId;
    for (const r of body.resets ?? []) this._onReset(r.rooms ?? [], r.reason);
    for (const msg of body.events) this._onEvent(msg);
    if (!body.resets?.length || body.events.length) {
      this._advance(body.next);
      return;
    }
    // Only resets: polling from the same position would get them again. Take the server's position for the
    // reset rooms (their state is refetched by the application) after catching up the others.
    try {
      const resetRooms = new Set(body.resets.flatMap((r) => r.rooms ?? []));
      const now = await this._pollOnce(rooms, null, 0);
      let position = since;
      const others = rooms.filter((r) => !resetRooms.has(r));
      for (let i = 0; others.length && i < 100 && this._pollActive(gen); i++) {
        const more = await this._pollOnce(others, position, 0);
        for (const msg of more.events) this._onEvent(msg);
        if (!more.events.length) break;
        position = more.next;
      }
      this._advance(position);
      this._advance(now.next);
    } catch {
      // the next poll tries again
    }
  }

  // -- presence and typing ----------------------------------------------------------------------------------

  _setPresence(room, users) {
    const before = this._presence.get(room);
    if (before && before.size === users.size && [...users].every((u) => before.has(u))) return;
    this._presence.set(room, users);
    this.dispatchEvent(new CustomEvent('presence', { detail: { room, users: this.presence(room) } }));
  }

  _onPresenceEvent(msg) {
    const room = msg.room;
    const user = msg.data?.userId;
    if (typeof room !== 'string' || typeof user !== 'string' || !this._rooms.has(room)) return;
    switch (msg.type) {
      case 'user:online': {
        const users = new Set(this._presence.get(room) ?? []);
        users.add(user);
        this._setPresence(room, users);
        break;
      }
      case 'user:offline': {
        const users = new Set(this._presence.get(room) ?? []);
        users.delete(user);
        this._setPresence(room, users);
        this._stopTyping(room, user);
        break;
      }
      case 'user:typing': {
        let typists = this._typing.get(room);
        if (!typists) this._typing.set(room, typists = new Map());
        const had = typists.has(user);
        clearTimeout(typists.get(user));
        typists.set(user, setTimeout(() => this._stopTyping(room, user), this.typingTimeout));
        if (!had) this._announceTyping(room);
        break;
      }
      case 'user:stopped_typing':
        this._stopTyping(room, user);
        break;
      default:
        break;
    }
  }

  _stopTyping(room, user) {
    const typists = this._typing.get(room);
    if (!typists?.has(user)) return;
    clearTimeout(typists.get(user));
    typists.delete(user);
    if (!typists.size) this._typing.delete(room);
    this._announceTyping(room);
  }

  _announceTyping(room) {
    this.dispatchEvent(new CustomEvent('typing', { detail: { room, users: this.typingUsers(room) } }));
  }

  _clearEphemeral(rooms) {
    for (const room of new Set(rooms)) {
      if (this._presence.delete(room)) {
        this.dispatchEvent(new CustomEvent('presence', { detail: { room, users: [] } }));
      }
      const typists = this._typing.get(room);
      if (typists) {
        typists.forEach(clearTimeout);
        this._typing.delete(room);
        this._announceTyping(room);
      }
    }
  }
}

function reportError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

export default RealtimeClient;
