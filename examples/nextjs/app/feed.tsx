'use client';
// The live feed: one RealtimeProvider for the page; posts with like buttons, comments and typing; the
// "N new posts" banner; the connection badge. Everything the page shows is rendered as text.
import { useRouter } from 'next/navigation';
import { useCallback, useMemo, useState, type FormEvent } from 'react';
import {
  RealtimeProvider,
  useConnection,
  useEvent,
  useLikeButton,
  useNewPosts,
  useRealtime,
  useTyping,
  type RealtimeEvent,
} from 'realtime-react';

import { useRefresh } from './unavailable';
import type { Comment, Feed as FeedData, FeedPost } from '@/lib/feed';

/** The token for the realtime server, or null (the app mints none: anonymous, with `problem` saying why). */
async function fetchToken(onProblem: (problem: string) => void): Promise<string | null> {
  const res = await fetch('/api/token', { cache: 'no-store' });
  const body = (await res.json().catch(() => null)) as
    { token?: string | null; problem?: string; error?: { message?: string } } | null;
  if (!res.ok) throw new Error(`no token: ${body?.error?.message ?? `HTTP ${res.status}`}`);
  if (!body?.token) {
    const problem = body?.problem ?? 'the app gave no token';
    console.warn(`realtime: ${problem}`);
    onProblem(problem);
    return null;
  }
  return body.token;
}

class RequestError extends Error {
  constructor(readonly status: number, readonly retryable: boolean, message?: string) {
    super(message ?? (status >= 500 ? 'the app failed' : `HTTP ${status}`));
  }
}

async function post<T>(path: string, body: object, signal?: AbortSignal): Promise<T> {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) {
    const body = (await res.json().catch(() => null)) as { error?: { message?: string } } | null;
    throw new RequestError(res.status, res.status >= 500 || res.status === 429, body?.error?.message);
  }
  return (await res.json()) as T;
}

/** What a failed request says to the user. */
function failure(err: unknown): string {
  if (err instanceof RequestError) return err.message;
  return 'the app could not be reached';
}

export function Feed({ user, feed, url, wsRetry }: { user: string; feed: FeedData; url: string; wsRetry?: number }) {
  const [tokenProblem, setTokenProblem] = useState<string | null>(null);
  const token = useCallback(() => fetchToken(setTokenProblem), []);
  if (feed.position === null) return <OfflineFeed user={user} feed={feed} />;
  return (
    <RealtimeProvider url={url} token={token} rooms={['public']} since={feed.position}
      options={wsRetry ? { wsRetry } : undefined}>
      <main>
        <header>
          <h1>realtime feed</h1>
          <span className="me">signed in as <b>{user}</b></span>
          <ConnectionBadge />
        </header>
        <Problems tokenProblem={tokenProblem} />
        <FeedList key={feed.position} user={user} feed={feed} />
      </main>
    </RealtimeProvider>
  );
}

/**
 * The feed without live updates: the realtime server gave no position (it is down, hangs, or refuses the
 * app's token), and starting from anywhere else could miss events. The page reads the snapshot again every
 * few seconds; the first one that comes with a position makes the page live.
 */
function OfflineFeed({ user, feed }: { user: string; feed: FeedData }) {
  const { pending, retry } = useRefresh(5000);
  return (
    <main>
      <header>
        <h1>realtime feed</h1>
        <span className="me">signed in as <b>{user}</b></span>
        <span className="badge" data-testid="connection" data-state="offline">
          <i className="dot off" />offline
        </span>
      </header>
      <div className="notice" role="status" data-testid="offline">
        <p>Live updates are off: {feed.problem ?? 'the realtime server gave no position'}. Trying again every 5 s.</p>
        <button type="button" onClick={retry} disabled={pending}>{pending ? 'Retrying…' : 'Retry now'}</button>
      </div>
      {feed.posts.length ? (
        <ol className="feed">
          {feed.posts.map((p) => (
            <li key={p.id} className="post" data-post-id={p.id}>
              <div className="author">{p.authorId}</div>
              <p className="text" data-testid="text">{p.text}</p>
              {p.hashtags.length ? <div className="tags">{p.hashtags.map((t) => `#${t}`).join(' ')}</div> : null}
              <div className="actions"><span>♡ <span data-testid="likes">{p.likes}</span></span></div>
              <ul className="comments" data-testid="comments">
                {p.comments.map((c) => <li key={c.id}><b>{c.userId}</b> {c.text}</li>)}
              </ul>
            </li>
          ))}
        </ol>
      ) : <p className="empty" data-testid="empty">No posts yet.</p>}
    </main>
  );
}

function ConnectionBadge() {
  const { isConnected, isReconnecting, state } = useRealtime();
  const { transport, rtt, reconnects, lastEventAge } = useConnection();
  const label = isConnected ? (transport === 'polling' ? 'polling' : 'live') : isReconnecting ? 'reconnecting…' : state;
  return (
    <span className="badge" data-testid="connection" data-state={state} data-transport={transport}
      title={`reconnects ${reconnects} · last event ${lastEventAge === null ? 'never' : `${Math.round(lastEventAge / 1000)} s ago`}`}>
      <i className={`dot ${isConnected ? 'on' : 'off'}`} />
      {label}
      {rtt !== null && isConnected ? <small data-testid="rtt"> {Math.round(rtt)} ms</small> : null}
    </span>
  );
}

/** What keeps the page from being live, said on the page (and in the console). */
function Problems({ tokenProblem }: { tokenProblem: string | null }) {
  const [problem, setProblem] = useState<string | null>(null);
  useEvent('error', (e: { code?: string; message?: string }) => {
    const text = e.code === 'token_failed' ? `no token for the realtime server: ${e.message}`
      : `the realtime server said: ${e.message ?? e.code}`;
    console.error(`realtime: ${text}`);
    setProblem(text);
  });
  useEvent('closed', (e: { code?: number; reason?: string }) => {
    if (e.code === 1000) return;
    const text = e.code === 4001 ? `the realtime server refused the token (${e.reason || 'unauthorized'}): `
      + 'REALTIME_JWT_SECRET must be the realtime server\'s secret; reload once it is'
      : `the realtime server ended the connection (${e.code}${e.reason ? `: ${e.reason}` : ''}); reload to try again`;
    console.error(`realtime: ${text}`);
    setProblem(text);
  });
  useEvent('statechange', (e: { state?: string }) => {
    if (e.state === 'connected' || e.state === 'polling') setProblem(null);
  });
  if (!problem && !tokenProblem) return null;
  return (
    <div className="notice" role="status" data-testid="problem">
      {[problem, tokenProblem].filter(Boolean).map((text) => <p key={text}>{text}</p>)}
    </div>
  );
}

function FeedList({ user, feed }: { user: string; feed: FeedData }) {
  const router = useRouter();
  const [posts, setPosts] = useState<(FeedPost & { since?: string | null })[]>(feed.posts);
  const shown = useMemo(() => new Set(posts.map((p) => p.id)), [posts]);
  const known = useCallback((id: string, p: Record<string, unknown>) => shown.has(id) || p.authorId === user,
    [shown, user]);
  const waiting = useNewPosts<{ id: string; authorId: string; text: string; hashtags?: string[] }>('public',
    { known, since: feed.position });

  const showNew = () => {
    const fresh = waiting.flush().map(({ post: p, since }) => ({
      id: p.id, authorId: p.authorId, text: p.text, hashtags: p.hashtags ?? [], likes: 0, liked: false,
      comments: [], since,
    }));
    setPosts((list) => [...fresh.filter((p) => !list.some((q) => q.id === p.id)), ...list]);
  };

  useEvent('event', (e: RealtimeEvent) => {
    const data = e.data as { id?: string; authorId?: string; text?: string; hashtags?: string[] };
    if (e.type === 'post:created' && data.authorId === user && data.id && !shown.has(data.id)) {
      const own = { id: data.id, authorId: user, text: data.text ?? '', hashtags: data.hashtags ?? [], likes: 0,
        liked: false, comments: [], since: e.id };
      setPosts((list) => (list.some((p) => p.id === own.id) ? list : [own, ...list]));
    } else if (e.type === 'post:deleted') {
      setPosts((list) => list.filter((p) => p.id !== data.id));
    } else if (e.type === 'post:updated') {
      setPosts((list) => list.map((p) => (p.id === data.id ? { ...p, text: data.text ?? p.text } : p)));
    }
  });
  useEvent('reset', () => router.refresh()); // the history is gone: read the snapshot again

  const publish = async (words: string) => {
    const made = await post<FeedPost>('/api/posts', { text: words });
    setPosts((list) => (list.some((p) => p.id === made.id) ? list : [made, ...list]));
  };

  return (
    <>
      <Composer onPost={publish} />
      {waiting.count > 0 ? (
        <button type="button" className="banner" data-testid="new-posts" onClick={showNew}>
          {waiting.count === 1 ? '1 new post' : `${waiting.count} new posts`}
        </button>
      ) : null}
      {posts.length ? (
        <ol className="feed">
          {posts.map((p) => <Post key={p.id} post={p} since={p.since ?? feed.position} />)}
        </ol>
      ) : <p className="empty" data-testid="empty">No posts yet: write the first.</p>}
    </>
  );
}

function Composer({ onPost }: { onPost: (text: string) => Promise<void> }) {
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!text.trim()) return;
    setBusy(true);
    setError(null);
    try {
      await onPost(text);
      setText('');
    } catch (err) {
      setError(failure(err)); // the text stays, to send again
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="composer" onSubmit={submit}>
      <input data-testid="compose" value={text} maxLength={500} placeholder="What's new? (#tags welcome)"
        onChange={(e) => setText(e.target.value)} />
      <button type="submit" disabled={busy}>Post</button>
      {error ? <span className="error" role="alert" data-testid="compose-error">not posted: {error}</span> : null}
    </form>
  );
}

function Post({ post: p, since }: { post: FeedPost; since: string | null | undefined }) {
  const like = useLikeButton(p.id, {
    initialCount: p.likes,
    initialLiked: p.liked,
    since,
    send: (liked, signal) => post('/api/like', { postId: p.id, liked }, signal),
  });
  return (
    <li className="post" data-post-id={p.id}>
      <div className="author">{p.authorId}</div>
      <p className="text" data-testid="text">{p.text}</p>
      {p.hashtags.length ? <div className="tags">{p.hashtags.map((t) => `#${t}`).join(' ')}</div> : null}
      <div className="actions">
        <button type="button" data-testid="like" aria-pressed={like.liked} data-pending={like.pending}
          className={like.liked ? 'liked' : ''} onClick={like.toggle}>
          {like.liked ? '♥' : '♡'} <span data-testid="likes">{like.count}</span>
        </button>
        {like.error ? <span className="error" data-testid="like-error">not saved: {like.error.message}</span> : null}
      </div>
      <Comments postId={p.id} initial={p.comments} />
    </li>
  );
}

function Comments({ postId, initial }: { postId: string; initial: Comment[] }) {
  const [list, setList] = useState(initial);
  const [text, setText] = useState('');
  const room = `post:${postId}`;
  const { users: typists, typing } = useTyping(room);
  useEvent('event', (e: RealtimeEvent) => {
    if (e.room !== room) return;
    const c = e.data as { id?: string; postId?: string; userId?: string; text?: string };
    if (e.type === 'comment:added' && c.id && !list.some((x) => x.id === c.id)) {
      setList((l) => (l.some((x) => x.id === c.id) ? l : [...l, { id: c.id!, userId: c.userId ?? '?', text: c.text ?? '' }]));
    } else if (e.type === 'comment:deleted' && c.id) {
      setList((l) => l.filter((x) => x.id !== c.id));
    } else if (e.type === 'comment:updated' && c.id) {
      setList((l) => l.map((x) => (x.id === c.id ? { ...x, text: c.text ?? x.text } : x)));
    }
  });
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!text.trim()) return;
    setError(null);
    try {
      const made = await post<Comment>('/api/comments', { postId, text });
      setText('');
      setList((l) => (l.some((x) => x.id === made.id) ? l : [...l, made]));
    } catch (err) {
      setError(failure(err)); // the text stays, to send again
    }
  };
  return (
    <div className="comments">
      <ul data-testid="comments">
        {list.map((c) => <li key={c.id}><b>{c.userId}</b> {c.text}</li>)}
      </ul>
      {typists.length ? <div className="typing" data-testid="typing">{typists.join(', ')} typing…</div> : null}
      <form onSubmit={submit}>
        <input data-testid="comment" value={text} maxLength={500} placeholder="Comment"
          onChange={(e) => { setText(e.target.value); typing(); }} />
        {error ? <span className="error" role="alert" data-testid="comment-error">not sent: {error}</span> : null}
      </form>
    </div>
  );
}
