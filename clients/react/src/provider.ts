'use client';
// <RealtimeProvider>: one realtime.js client for the whole app, made in the browser only (never during
// server-side rendering), connected once (React's strict mode runs effects twice: the second run keeps the
// first one's client), closed when the provider goes away.

import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from 'react';

import { RealtimeClient, type ClientOptions, type State, type TokenSource, type Transport } from './realtime.js';
import { RoomRegistry } from './rooms.js';
import { ConnectionStore, IDLE, type ConnectionSnapshot } from './store.js';

export type ProviderOptions = Omit<ClientOptions, 'url' | 'token' | 'rooms' | 'since'>;

export interface RealtimeProviderProps {
  /** The server: `http(s)://host:port`, or its WebSocket URL (`ws(s)://host:port/ws`). */
  url?: string;
  /**
   * A JWT, or a function that returns a fresh one (called before `exp` and after the server says it expired;
   * the latest function passed is the one called), or null: anonymous. A function that returns null is
   * anonymous too; one that throws fails the attempt (an `error` event, `token_failed`) and is retried.
   */
  token?: TokenSource;
  /** Rooms the whole app listens to (`public`, `user:{me}`): held while the provider is mounted. */
  rooms?: readonly string[];
  /** The event id the app's initial state was read at: the client starts after it. Read once. */
  since?: string | null;
  /** realtime.js's other options (`transport`, `fallbackAfter`, `wsRetry`, `heartbeat`, ...). Read once. */
  options?: ProviderOptions;
  /** A client the app made and owns: used as it is (connected, never closed by the provider). */
  client?: RealtimeClient;
  children?: ReactNode;
}

export interface RealtimeContextValue {
  readonly client: RealtimeClient | null;
  readonly store: ConnectionStore;
  readonly rooms: RoomRegistry;
}

const RealtimeContext = createContext<RealtimeContextValue | null>(null);

interface Held {
  key: string;
  client: RealtimeClient;
  owned: boolean;
  stop: () => void;
  closeTimer: ReturnType<typeof setTimeout> | null;
}

function release(held: Held, rooms: RoomRegistry): void {
  if (held.closeTimer !== null) clearTimeout(held.closeTimer);
  held.closeTimer = null;
  held.stop();
  rooms.detach(held.client);
  if (held.owned) held.client.close();
}

export function RealtimeProvider(props: RealtimeProviderProps): ReactNode {
  const { url, token = null, rooms: appRooms, since, options, client: given, children } = props;
  const [store] = useState(() => new ConnectionStore());
  const [registry] = useState(() => new RoomRegistry());
  const [client, setClient] = useState<RealtimeClient | null>(null);
  const held = useRef<Held | null>(null);
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const initial = useRef({ since, options });

  // A new client when the server, the kind of token or a fixed token changes; a new token function does not.
  const key = JSON.stringify([url ?? null, typeof token === 'function' ? 'fn' : token, given ? 'given' : null]);
  useEffect(() => {
    const previous = held.current;
    if (previous && previous.key === key && previous.client === (given ?? previous.client)
        && previous.closeTimer !== null) {
      clearTimeout(previous.closeTimer); // the same provider, mounted again (strict mode): keep its client
      previous.closeTimer = null;
    } else {
      if (previous) release(previous, registry);
      const tokenOption: TokenSource = typeof tokenRef.current === 'function'
        ? () => (tokenRef.current as () => string | null | Promise<string | null>)()
        : tokenRef.current;
      const made = given ?? new RealtimeClient({
        ...initial.current.options,
        url,
        token: tokenOption,
        since: initial.current.since ?? undefined,
      });
      held.current = { key, client: made, owned: !given, stop: store.follow(made), closeTimer: null };
      registry.attach(made);
      made.connect();
      setClient(made);
    }
    const mine = held.current!;
    return () => {
      mine.closeTimer = setTimeout(() => {
        release(mine, registry);
        if (held.current === mine) held.current = null;
      }, 0);
    };
  }, [key, given, url, registry, store]);

  const roomKey = JSON.stringify(appRooms ?? []);
  useEffect(() => {
    const rooms = JSON.parse(roomKey) as string[];
    registry.acquire(rooms);
    return () => registry.release(rooms);
  }, [roomKey, registry]);

  const value = useMemo<RealtimeContextValue>(() => ({ client, store, rooms: registry }), [client, store, registry]);
  return createElement(RealtimeContext.Provider, { value }, children);
}

/** The provider's context; throws outside a <RealtimeProvider>. */
export function useRealtimeContext(): RealtimeContextValue {
  const value = useContext(RealtimeContext);
  if (!value) throw new Error('realtime hooks need a <RealtimeProvider> above them');
  return value;
}

export function useConnectionSnapshot(): ConnectionSnapshot {
  const { store } = useRealtimeContext();
  return useSyncExternalStore(store.subscribe, store.get, () => IDLE);
}

export interface Realtime {
  /** The realtime.js client (null on the server and before the first effect). */
  readonly client: RealtimeClient | null;
  readonly state: State;
  readonly transport: Transport;
  /** Events arrive live: over the WebSocket or, after the fallback, by long-polling. */
  readonly isConnected: boolean;
  /** The connection was lost (or never made) and the client is trying again. */
  readonly isReconnecting: boolean;
  /** Events arrive by long-polling (the WebSocket is blocked or failing). */
  readonly isPolling: boolean;
  readonly user: string | null;
  readonly lastId: string | null;
}

/** The client and its connection state, as the original design's `useRealtime()` gave them. */
export function useRealtime(): Realtime {
  const { client } = useRealtimeContext();
  const snap = useConnectionSnapshot();
  return useMemo(() => ({
    client,
    state: snap.state,
    transport: snap.transport,
    isConnected: snap.state === 'connected' || snap.state === 'polling',
    isReconnecting: snap.state === 'reconnecting',
    isPolling: snap.state === 'polling',
    user: snap.user,
    lastId: snap.lastId,
  }), [client, snap]);
}
