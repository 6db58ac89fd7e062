// Types of realtime.js (realtime/web/realtime.js, the browser client the server serves at /client/realtime.js;
// reference: docs/browser.md). The package ships that module as it is: it has no protocol code of its own.

export type State = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'polling' | 'closed';
export type Transport = 'websocket' | 'polling';

/** An event as the server sends it: `data` is the payload of its type (docs/events.md). */
export interface RealtimeEvent<D = Record<string, unknown>> {
  readonly id: string;
  readonly type: string;
  readonly room: string;
  readonly data: D;
  readonly ts: number;
}

export type TokenSource = string | (() => string | null | Promise<string | null>) | null;

export interface ClientOptions {
  url?: string;
  token?: TokenSource;
  rooms?: string[];
  since?: string;
  transport?: 'auto' | 'websocket' | 'polling';
  fallbackAfter?: number;
  wsRetry?: number;
  backoffBase?: number;
  backoffCap?: number;
  connectTimeout?: number;
  heartbeat?: number;
  heartbeatTimeout?: number;
  pollWait?: number;
  refreshBefore?: number;
  typingInterval?: number;
  typingTimeout?: number;
  presenceRooms?: string[] | null;
  WebSocket?: unknown;
  fetch?: typeof fetch;
  random?: () => number;
}

export interface Confirmation<R = unknown> {
  via: 'event' | 'send' | 'superseded';
  event?: RealtimeEvent;
  response?: R;
}

export interface OptimisticOperation<R = unknown> {
  apply: () => void;
  rollback: (error: Error) => void;
  send: (attempt: number, signal: AbortSignal) => Promise<R>;
  confirm?: (how: Confirmation<R>) => void;
  postId?: string;
  liked?: boolean;
  match?: (event: RealtimeEvent) => boolean;
  key?: string;
  retries?: number;
  retryBase?: number;
  timeout?: number;
  waitForEvent?: number;
}

export interface EventDetails {
  event: RealtimeEvent;
  reset: { rooms: string[]; reason: string };
  statechange: { state: State; previous: State };
  presence: { room: string; users: string[] };
  typing: { room: string; users: string[] };
  authenticated: { user: string; expires: number | null };
  error: { code: string; message: string; rooms?: string[] };
  closed: { code: number; reason: string };
  rtt: { ms: number };
}

export declare const STATES: readonly State[];
export declare function validRoom(name: unknown): boolean;
export declare function compareIds(a: string, b: string): -1 | 0 | 1;
export declare function backoffDelay(attempt: number, base?: number, cap?: number, random?: () => number): number;
export declare function jwtClaims(token: string): Record<string, unknown> | null;

export declare class RealtimeClient extends EventTarget {
  constructor(options?: ClientOptions);
  readonly state: State;
  readonly transport: Transport;
  readonly user: string | null;
  readonly lastId: string | null;
  readonly rooms: string[];
  readonly rtt: number | null;
  presence(room: string): string[];
  typingUsers(room: string): string[];
  connect(): this;
  close(): void;
  subscribe(rooms: string | string[], options?: { since?: string | null }): this;
  unsubscribe(rooms: string | string[]): this;
  typing(room: string): boolean;
  ping(timeout?: number): Promise<number | null>;
  likeOptimistically<R = unknown>(op: OptimisticOperation<R>): Promise<Confirmation<R>>;
}

export default RealtimeClient;
