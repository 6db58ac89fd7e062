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

import type { Comment, Feed as FeedData, FeedPost } from '@/lib/feed';

async function fetchToken(): Promise<string> {
  const res = await fetch('/api/token', { cache: 'no-store' });
  if (!res.ok) throw new Error(`no token: HTTP ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

class RequestError extends Error {
  constructor(readonly status: number, readonly retryable: boolean) {
    super(`HTTP ${status}`);
  }
}

async function post<T>(path: string, body: object, signal?: AbortSignal): Promise<T> {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw new RequestError(res.status, res.status >= 500 || res.status === 429);
  return (await res.json()) as T;
}

export function Feed({ user, feed, url, wsRetry }: { user: string; feed: FeedData; url: string; wsRetry?: number }) {
  return (
    <RealtimeProvider url={url} token={fetchToken} rooms={['public']} since={feed.position}
      options={wsRetry ? { wsRetry } : undefined}>
      <main>
        <header>
          <h1>realtime feed</h1>
          <span className="me">signed in as <b>{user}</b></span>
          <ConnectionBadge />
        </header>
        <FeedList key={feed.position ?? 'start'} user={user} feed={feed} />
      </main>
    </RealtimeProvider>
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
      <ol className="feed">
        {posts.map((p) => <Post key={p.id} post={p} since={p.since ?? feed.position} />)}
      </ol>
    </>
  );
}

function Composer({ onPost }: { onPost: (text: string) => Promise<void> }) {
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!text.trim()) return;
    setBusy(true);
    try {
      await onPost(text);
      setText('');
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="composer" onSubmit={submit}>
      <input data-testid="compose" value={text} maxLength={500} placeholder="What's new? (#tags welcome)"
        onChange={(e) => setText(e.target.value)} />
      <button type="submit" disabled={busy}>Post</button>
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
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!text.trim()) return;
    const made = await post<Comment>('/api/comments', { postId, text });
    setText('');
    setList((l) => (l.some((x) => x.id === made.id) ? l : [...l, made]));
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
      </form>
    </div>
  );
}
