'use client';
// Optimistic updates over realtime.js's likeOptimistically: shown at once, sent with retries, rolled back
// when the send still fails, settled by the event that confirms them (or by the send's answer).

import { useCallback, useEffect, useRef, useState } from 'react';

import { useEvent, useRoom } from './hooks.js';
import { useConnectionSnapshot, useRealtimeContext } from './provider.js';
import type { Confirmation, RealtimeEvent } from './realtime.js';

export interface OptimisticOptions {
  /** The event that confirms the update (else the send's answer does). */
  match?: (event: RealtimeEvent) => boolean;
  /** Updates with the same key supersede each other, and their sends go in order. */
  key?: string;
  /** Sends retried after a failure (3); an error with `retryable === false` is not retried. */
  retries?: number;
  /** ms: the first retry's backoff (500). */
  retryBase?: number;
  /** ms per send attempt (10000). */
  timeout?: number;
  /** ms to wait for the confirming event after the send answered (0). */
  waitForEvent?: number;
}

export interface Optimistic<T> {
  /** The optimistic value while an update is in flight, else the confirmed one. */
  readonly value: T;
  readonly pending: boolean;
  /** Why the last update was rolled back (null once a new one starts). */
  readonly error: Error | null;
  /**
   * Shows `next` at once and sends it; rejects (after the rollback) when the send still fails. A newer update
   * supersedes this one: it resolves with `via: 'superseded'`.
   */
  readonly update: (next: T, send: (signal: AbortSignal, attempt: number) => Promise<unknown>,
    options?: OptimisticOptions) => Promise<Confirmation>;
}

/**
 * The original design's optimistic update, generic: `confirmed` is the value as the server last said (from
 * props, a snapshot, events); `update(next, send)` shows `next` until the update is confirmed (then `confirmed`
 * is shown again: keep it current, from the event or in `send`) or rolled back.
 */
export function useOptimisticUpdate<T>(confirmed: T): Optimistic<T> {
  const { client } = useRealtimeContext();
  const [optimistic, setOptimistic] = useState<{ value: T } | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const serial = useRef(0);
  const update = useCallback((next: T, send: (signal: AbortSignal, attempt: number) => Promise<unknown>,
    options: OptimisticOptions = {}): Promise<Confirmation> => {
    if (!client) return Promise.reject(new Error('no realtime client yet (rendering on the server?)'));
    const mine = ++serial.current;
    const current = () => serial.current === mine;
    return client.likeOptimistically({
      ...options,
      apply: () => {
        setError(null);
        setOptimistic({ value: next });
      },
      rollback: (err) => {
        if (!current()) return;
        setOptimistic(null);
        setError(err);
      },
      confirm: () => {
        if (current()) setOptimistic(null);
      },
      send: (attempt, signal) => send(signal, attempt),
      match: options.match ?? (() => false),
    });
  }, [client]);
  return { value: optimistic ? optimistic.value : confirmed, pending: optimistic !== null, error, update };
}

export interface LikeButtonOptions {
  /** The like count and whether this user likes the post, as the page's snapshot read them. */
  initialCount?: number;
  initialLiked?: boolean;
  /** Writes the like (true) or unlike (false): the desired state, so that a retry is harmless. May answer
   * `{likes}` (the count after it). Rejects on failure; an error with `retryable === false` is not retried. */
  send: (liked: boolean, signal: AbortSignal) => Promise<unknown>;
  /** The event id the snapshot was read at: `post:{postId}` is replayed from there. */
  since?: string | null;
  /** ms to wait for the confirming event after the send answered (3000); then the answer settles it. */
  waitForEvent?: number;
  retries?: number;
  retryBase?: number;
}

export interface LikeButton {
  readonly liked: boolean;
  readonly count: number;
  /** A like or unlike of this user is on its way. */
  readonly pending: boolean;
  /** Why the last one was rolled back (null once a new one starts). */
  readonly error: Error | null;
  /** Likes or unlikes, at once on screen. */
  readonly toggle: () => void;
  readonly setLiked: (liked: boolean) => void;
}

/**
 * A like button: the count and state from `post:liked` / `post:unliked` of `post:{postId}` (held while mounted),
 * a click shown at once, sent with retries, rolled back when it still fails, settled by this user's event.
 */
export function useLikeButton(postId: string, options: LikeButtonOptions): LikeButton {
  const { initialCount = 0, initialLiked = false, since = null } = options;
  const waitForEvent = options.waitForEvent ?? 3000;
  const { client } = useRealtimeContext();
  const me = useConnectionSnapshot().user ?? client?.user ?? null;
  useRoom(`post:${postId}`, { since });
  const [confirmed, setConfirmed] = useState({ count: initialCount, liked: initialLiked });
  const [pending, setPending] = useState<boolean | null>(null);
  const [error, setError] = useState<Error | null>(null);
  const serial = useRef(0);
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  useEffect(() => { // a new snapshot (a refetch after a reset)
    setConfirmed({ count: initialCount, liked: initialLiked });
  }, [initialCount, initialLiked]);

  useEvent('event', (event: RealtimeEvent) => {
    if (event.type !== 'post:liked' && event.type !== 'post:unliked') return;
    const data = event.data as { postId?: unknown; likes?: unknown; userId?: unknown };
    if (data.postId !== postId) return;
    const liked = event.type === 'post:liked';
    setConfirmed((c) => ({
      count: typeof data.likes === 'number' ? data.likes : Math.max(0, c.count + (liked ? 1 : -1)),
      liked: me !== null && data.userId === me ? liked : c.liked,
    }));
  });

  const setLiked = useCallback((desired: boolean) => {
    if (!client) return;
    const mine = ++serial.current;
    const current = () => serial.current === mine;
    const { retries, retryBase } = latest.current;
    client.likeOptimistically({
      postId,
      liked: desired,
      waitForEvent,
      ...(retries === undefined ? {} : { retries }),
      ...(retryBase === undefined ? {} : { retryBase }),
      apply: () => {
        setError(null);
        setPending(desired);
      },
      rollback: (err) => {
        if (!current()) return;
        setPending(null);
        setError(err);
      },
      confirm: ({ via, response }) => {
        if (!current()) return;
        setPending(null);
        if (via === 'send') { // no event (yet): the answer settles it
          const likes = (response as { likes?: unknown } | null | undefined)?.likes;
          setConfirmed((c) => ({
            liked: desired,
            count: typeof likes === 'number' ? likes : Math.max(0, c.count + (c.liked === desired ? 0 : desired ? 1 : -1)),
          }));
        }
      },
      send: (_attempt, signal) => latest.current.send(desired, signal),
    }).catch(() => { /* rolled back: `error` says why */ });
  }, [client, postId, waitForEvent]);

  const liked = pending ?? confirmed.liked;
  const count = Math.max(0, confirmed.count + (pending !== null && pending !== confirmed.liked ? (pending ? 1 : -1) : 0));
  const toggle = useCallback(() => setLiked(!liked), [setLiked, liked]);
  return { liked, count, pending: pending !== null, error, toggle, setLiked };
}
