// A WebSocket whose server the test plays (as tests/browser/client.test.mjs does for realtime.js itself).

export interface Frame {
  op: string;
  [key: string]: unknown;
}

export class FakeSocket {
  static sockets: FakeSocket[] = [];
  readyState = 0;
  sent: Frame[] = [];
  closedWith: { code?: number; reason?: string } | null = null;
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;

  constructor(readonly url: string) {
    FakeSocket.sockets.push(this);
    setTimeout(() => this.open(), 0);
  }

  send(text: string): void {
    this.sent.push(JSON.parse(text) as Frame);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? '' }), 0);
  }

  // the server's side
  open(): void {
    if (this.readyState !== 0) return;
    this.readyState = 1;
    this.onopen?.({});
  }

  message(msg: object): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }

  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Answers the connection's ping: the subscriptions are done, the client is connected. */
  ready(): void {
    const ping = this.sent.find((m) => m.op === 'ping' && String(m.ref).startsWith('ready'));
    if (!ping) throw new Error('no ready ping sent yet');
    this.message({ op: 'pong', ref: ping.ref });
  }

  frames(op: string): Frame[] {
    return this.sent.filter((m) => m.op === op);
  }
}

export function jwt(claims: object): string {
  const b64 = (o: object) => btoa(JSON.stringify(o)).replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

export const ev = (id: string, type: string, room: string, data: object = {}) =>
  ({ op: 'event', id, type, room, data, ts: 1 });
