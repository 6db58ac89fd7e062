// Where things are, from the environment (docs/react.md lists the variables).

/** The realtime server's WebSocket URL, as the browser reaches it. */
export const WEBSOCKET_URL = process.env.NEXT_PUBLIC_WEBSOCKET_URL || 'ws://127.0.0.1:8000/ws';

/** The realtime server over HTTP, as this server reaches it (REALTIME_URL, else from the WebSocket URL). */
export function realtimeHttpUrl(): string {
  if (process.env.REALTIME_URL) return process.env.REALTIME_URL.replace(/\/$/, '');
  const u = new URL(WEBSOCKET_URL);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/ws$/, '');
  return u.href.replace(/\/$/, '');
}

export function mongoUri(): string {
  const uri = process.env.MONGODB_URI;
  if (!uri) throw new Error('set MONGODB_URI to the database the watcher reads (realtime dev prints it)');
  return uri;
}

/** The secret the realtime server checks tokens with (HS256); without it, the app mints none. */
export function jwtSecret(): string | null {
  return process.env.REALTIME_JWT_SECRET || null;
}
