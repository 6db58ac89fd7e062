'use client';
// Hooks over the provider's client: rooms, events, connection, presence, typing, new posts.

import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore } from 'react';

import { useConnectionSnapshot, useRealtimeContext } from './provider.js';
import type { EventDetails, RealtimeEvent, State, Transport } from './realtime.js';

const NOTHING: readonly string[] = Object.freeze([]);

function roomList(rooms: string | readonly string[] | null | undefined): readonly string[] {
  if (rooms == null) return NOTHING;
  return typeof rooms === 'string' ? [rooms] : rooms;
}

/**
 * Holds rooms while the component is mounted: subscribed when the first component takes them, unsubscribed
 * when the last lets go. `since` (the event id the component's state of those rooms was read at) replays what
 * came after it; without it, they start from the client's position.
 */
export function useRoom(rooms: string | readonly string[] | null | undefined, options: { since?: string | null } = {}): void {
  const { rooms: registry } = useRealtimeContext();
  const key = JSON.stringify(roomList(rooms));
  const since = options.since ?? null;
  useEffect(() => {
    const list = JSON.parse(key) as string[];
    if (!list.length) return undefined;
    registry.acquire(list, since);
    return () => registry.release(list);
  }, [key, since, registry]);
}

type Detail<T extends string> = T extends keyof EventDetails ? EventDetails[T] : RealtimeEvent;

/**
 * Calls `handler` with every event of `type` (`post:liked`, `comment:added`, ...; `event` for all of them) or
 * with the client's own notices (`reset`, `presence`, `typing`, `statechange`, `error`, `rtt`, ...). The latest
 * handler is called: it need not be memoised. Rooms are not subscribed here: see useRoom.
 */
export function useEvent<T extends string>(type: T, handler: (detail: Detail<T>) => void): void {
  const { client } = useRealtimeContext();
  const latest = useRef(handler);
  useEffect(() => {
    latest.current = handler;
  });
  useEffect(() => {
    if (!client) return undefined;
    const listener = (e: Event) => latest.current((e as CustomEvent<Detail<T>>).detail);
    client.addEventListener(type, listener);
    return () => client.removeEventListener(type, listener);
  }, [client, type]);
}

export interface Connection {
  readonly state: State;
  readonly transport: Transport;
  /** How many times a connection that worked was lost since the provider started. */
  readonly reconnects: number;
  /** Milliseconds since the last event arrived (null: none yet); refreshed every `tick` ms. */
  readonly lastEventAge: number | null;
  /** The last round trip over the WebSocket (ms), or null (polling, or not measured yet). */
  readonly rtt: number | null;
  readonly lastId: string | null;
}

/**
 * The connection as a monitor shows it: state, transport, reconnects, the age of the last event and the round
 * trip. While the WebSocket is up, the round trip is measured every `rttEvery` ms (0: only heartbeats);
 * the component renders again every `tick` ms for the age (0: only on changes).
 */
export function useConnection(options: { tick?: number; rttEvery?: number } = {}): Connection {
  const { tick = 1000, rttEvery = 10000 } = options;
  const { client } = useRealtimeContext();
  const snap = useConnectionSnapshot();
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!(tick > 0)) return undefined;
    const timer = setInterval(() => setNow(Date.now()), tick);
    return () => clearInterval(timer);
  }, [tick]);
  const live = snap.state === 'connected';
  useEffect(() => {
    if (!client || !live || !(rttEvery > 0)) return undefined;
    void client.ping();
    const timer = setInterval(() => void client.ping(), rttEvery);
    return () => clearInterval(timer);
  }, [client, live, rttEvery]);
  const at = snap.lastEventAt;
  return {
    state: snap.state,
    transport: snap.transport,
    reconnects: snap.reconnects,
    lastEventAge: at === null ? null : Math.max(0, Math.max(now, at) - at),
    rtt: snap.transport === 'websocket' ? snap.rtt : null,
    lastId: snap.lastId,
  };
}

function useRoomList(room: string | null | undefined, read: (room: string) => string[], kind: 'presence' | 'typing'): string[] {
  const { client } = useRealtimeContext();
  useRoom(room);
  const cache = useRef<{ room: string | null | undefined; users: string[] }>({ room: undefined, users: [] });
  const subscribe = useCallback((notify: () => void) => {
    if (!client || !room) return () => {};
    const listener = (e: Event) => {
      if ((e as CustomEvent<{ room: string }>).detail.room === room) notify();
    };
    client.addEventListener(kind, listener);
    return () => client.removeEventListener(kind, listener);
  }, [client, room, kind]);
  const get = () => {
    const users = client && room ? read(room) : (NOTHING as string[]);
    const held = cache.current;
    if (held.room === room && held.users.length === users.length && held.users.every((u, i) => u === users[i])) {
      return held.users; // the same list: the same array, so that React sees no change
    }
    cache.current = { room, users };
    return users;
  };
  return useSyncExternalStore(subscribe, get, () => NOTHING as string[]);
}

/** The users online in `room` (sorted), kept by the client from the server's presence; the room is held. */
export function usePresence(room: string | null | undefined): string[] {
  const { client } = useRealtimeContext();
  return useRoomList(room, (r) => client?.presence(r) ?? [], 'presence');
}

export interface Typing {
  /** The other users typing in the room (sorted). */
  readonly users: string[];
  /** Tells the room that this user is typing (throttled by the client; needs a token and the WebSocket). */
  readonly typing: () => boolean;
}

/** Who is typing in a post room, and a function to say that this user is; the room is held. */
export function useTyping(room: string | null | undefined): Typing {
  const { client } = useRealtimeContext();
  const me = useConnectionSnapshot().user;
  const all = useRoomList(room, (r) => client?.typingUsers(r) ?? [], 'typing');
  const users = useMemo(() => (me ? all.filter((u) => u !== me) : all), [all, me]);
  const typing = useCallback(() => (client && room ? client.typing(room) : false), [client, room]);
  return { users, typing };
}

export interface NewPost<P> {
  /** The post: the `data` of its `post:created` (with the edits that came while it waited). */
  readonly post: P;
  /** The id of its `post:created`: its room (`post:{id}`) is to be replayed from there. */
  readonly since: string;
}

export interface NewPosts<P> {
  /** How many new posts wait (what the "N new posts" notice shows). */
  readonly count: number;
  /** The waiting posts, newest first. */
  readonly posts: readonly NewPost<P>[];
  /** Hands over the waiting posts (newest first) and empties the list. */
  readonly flush: () => NewPost<P>[];
}

export interface NewPostsOptions {
  /** Posts not to count: those the page already shows (a replay after its snapshot may announce them
   * again), the user's own (which the page shows at once). */
  known?: (postId: string, post: Record<string, unknown>) => boolean;
  /** The event id the page's feed was read at. */
  since?: string | null;
}

/**
 * The posts created in `room` (`public` by default) since the page last took them: `post:created` events wait
 * here until `flush()`; a waiting post that is deleted (or made private) meanwhile leaves the list, and an
 * edit replaces it. Each post is the event's `data` (`{id, authorId, text, ...}`).
 */
export function useNewPosts<P extends { id: string } = { id: string } & Record<string, unknown>>(
  room: string = 'public', options: NewPostsOptions = {},
): NewPosts<P> {
  useRoom(room, { since: options.since });
  const known = useRef(options.known);
  useEffect(() => {
    known.current = options.known;
  });
  const [posts, setPosts] = useState<readonly NewPost<P>[]>([]);
  const waiting = useRef<readonly NewPost<P>[]>(posts);
  const set = (next: readonly NewPost<P>[]) => {
    waiting.current = next;
    setPosts(next);
  };
  useEvent('event', (event: RealtimeEvent) => {
    if (event.room !== room) return;
    const data = event.data as unknown as P;
    const id = typeof data?.id === 'string' ? data.id : null;
    if (id === null) return;
    const waits = waiting.current.some((p) => p.post.id === id);
    if (event.type === 'post:created') {
      if (waits || known.current?.(id, event.data)) return;
      set([{ post: data, since: event.id }, ...waiting.current]);
    } else if (event.type === 'post:deleted' && waits) {
      set(waiting.current.filter((p) => p.post.id !== id));
    } else if (event.type === 'post:updated' && waits) {
      set(waiting.current.map((p) => (p.post.id === id ? { ...p, post: { ...p.post, ...data } } : p)));
    }
  });
  const flush = useCallback(() => {
    const taken = [...waiting.current];
    waiting.current = [];
    setPosts([]);
    return taken;
  }, []);
  return { count: posts.length, posts, flush };
}
