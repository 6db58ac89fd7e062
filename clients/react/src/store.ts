// What the provider knows of its client's connection, as an external store (useSyncExternalStore): one
// immutable snapshot, replaced on each change, so that a render reads one consistent state.

import type { RealtimeClient, RealtimeEvent, State, Transport } from './realtime.js';

export interface ConnectionSnapshot {
  /** `idle` on the server and before the client starts; then realtime.js's state. */
  readonly state: State;
  readonly transport: Transport;
  /** How many times a connection that worked (WebSocket or polling) was lost. */
  readonly reconnects: number;
  /** When the last event arrived (Date.now()), or null. */
  readonly lastEventAt: number | null;
  /** The last round trip measured over the WebSocket (ms), or null. */
  readonly rtt: number | null;
  /** The client's position: the newest event id it has. */
  readonly lastId: string | null;
  /** The token's user, once known. */
  readonly user: string | null;
}

export const IDLE: ConnectionSnapshot = Object.freeze({
  state: 'idle',
  transport: 'websocket',
  reconnects: 0,
  lastEventAt: null,
  rtt: null,
  lastId: null,
  user: null,
});

export class ConnectionStore {
  private snapshot: ConnectionSnapshot = IDLE;
  private readonly listeners = new Set<() => void>();

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  readonly get = (): ConnectionSnapshot => this.snapshot;

  set(change: Partial<ConnectionSnapshot>): void {
    const next = { ...this.snapshot, ...change };
    const keys = Object.keys(change) as (keyof ConnectionSnapshot)[];
    if (keys.every((k) => next[k] === this.snapshot[k])) return;
    this.snapshot = Object.freeze(next);
    for (const listener of [...this.listeners]) listener();
  }

  /** Follows `client` until the returned function is called. */
  follow(client: RealtimeClient): () => void {
    const read = () => ({ state: client.state, transport: client.transport, lastId: client.lastId, user: client.user });
    this.set(read());
    const onState = (e: Event) => {
      const { state, previous } = (e as CustomEvent<{ state: State; previous: State }>).detail;
      const lost = state === 'reconnecting' && (previous === 'connected' || previous === 'polling');
      this.set({ ...read(), reconnects: this.snapshot.reconnects + (lost ? 1 : 0) });
    };
    const onEvent = (e: Event) => {
      const event = (e as CustomEvent<RealtimeEvent>).detail;
      this.set({ lastEventAt: Date.now(), lastId: client.lastId ?? event.id });
    };
    const onRtt = (e: Event) => this.set({ rtt: (e as CustomEvent<{ ms: number }>).detail.ms });
    const onAuth = () => this.set({ user: client.user });
    client.addEventListener('statechange', onState);
    client.addEventListener('event', onEvent);
    client.addEventListener('rtt', onRtt);
    client.addEventListener('authenticated', onAuth);
    return () => {
      client.removeEventListener('statechange', onState);
      client.removeEventListener('event', onEvent);
      client.removeEventListener('rtt', onRtt);
      client.removeEventListener('authenticated', onAuth);
    };
  }
}
