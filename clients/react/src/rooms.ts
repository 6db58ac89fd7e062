// The rooms the components of an app hold, counted: a room is subscribed while one component holds it and
// unsubscribed when the last lets go. A release takes effect a tick later, so that a component that lets go
// and takes the same room again at once (React's strict mode runs effects twice; a list re-keyed) does not
// unsubscribe and subscribe again.

import type { RealtimeClient } from './realtime.js';

export class RoomRegistry {
  private readonly counts = new Map<string, number>();
  private readonly sinces = new Map<string, string | undefined>(); // the since the first holder asked for
  private client: RealtimeClient | null = null;
  private flushTimer: ReturnType<typeof setTimeout> | null = null;

  acquire(rooms: readonly string[], since?: string | null): void {
    const added: string[] = [];
    for (const room of new Set(rooms)) {
      const count = this.counts.get(room) ?? 0;
      this.counts.set(room, count + 1);
      if (count === 0 && !this.client?.rooms.includes(room)) {
        added.push(room);
        this.sinces.set(room, since ?? undefined);
      }
    }
    if (added.length && this.client) this.client.subscribe(added, { since: since ?? undefined });
  }

  release(rooms: readonly string[]): void {
    for (const room of new Set(rooms)) {
      const count = this.counts.get(room) ?? 0;
      if (count <= 1) this.counts.delete(room);
      else this.counts.set(room, count - 1);
    }
    if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.flush(), 0);
  }

  /** The client the rooms are subscribed on: every held room is subscribed on it (with its since). */
  attach(client: RealtimeClient): void {
    this.client = client;
    const groups = new Map<string | undefined, string[]>();
    for (const room of this.counts.keys()) {
      if (client.rooms.includes(room)) continue;
      const since = this.sinces.get(room);
      groups.set(since, [...(groups.get(since) ?? []), room]);
    }
    for (const [since, rooms] of groups) client.subscribe(rooms, { since });
  }

  detach(client: RealtimeClient): void {
    if (this.client === client) this.client = null;
  }

  private flush(): void {
    this.flushTimer = null;
    const gone = [...this.sinces.keys()].filter((room) => !this.counts.has(room));
    for (const room of gone) this.sinces.delete(room);
    const subscribed = gone.filter((room) => this.client?.rooms.includes(room));
    if (subscribed.length) this.client?.unsubscribe(subscribed);
  }
}
