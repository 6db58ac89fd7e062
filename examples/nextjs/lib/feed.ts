// The feed's snapshot: the position first (the realtime server's stream head), then the posts, their like
// counts and comments from MongoDB. Events after the position are replayed to the page, so nothing written
// between the two reads is missed (some may come twice: the page applies them idempotently).
//
// Without a position (the realtime server is down, hangs or refuses this app's token), the feed is still read
// from MongoDB, with `position: null` and `problem` saying why: the page shows it without live updates (it
// cannot know from where to start them without missing some) and reads the snapshot again until a position
// comes with it. Every wait is bounded: the position POSITION_TIMEOUT_MS, the whole snapshot FEED_TIMEOUT_MS.
import { realtimeHttpUrl } from './config';
import { comments, likes, posts, PUBLIC } from './db';
import { mintToken } from './token';

export interface Comment {
  id: string;
  userId: string;
  text: string;
}

export interface FeedPost {
  id: string;
  authorId: string;
  text: string;
  hashtags: string[];
  likes: number;
  liked: boolean;
  comments: Comment[];
}

export interface Feed {
  posts: FeedPost[];
  /** The event id the snapshot was read after; null: none could be read (see `problem`). */
  position: string | null;
  /** Why there is no position, as a sentence for the page. */
  problem: string | null;
}

export const POSITION_TIMEOUT_MS = 2000;
export const FEED_TIMEOUT_MS = 8000;

/** The stream's position now, or why there is none. Never throws, never waits more than POSITION_TIMEOUT_MS. */
export async function readPosition(user: string | null): Promise<{ position: string | null; problem: string | null }> {
  const where = realtimeHttpUrl();
  const token = user ? mintToken(user) : null;
  let res: Response;
  try {
    res = await fetch(`${where}/poll?rooms=public&wait=0`, {
      cache: 'no-store',
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      signal: AbortSignal.timeout(POSITION_TIMEOUT_MS),
    });
  } catch (err) {
    const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
    const problem = timedOut ? `the realtime server (${where}) did not answer within ${POSITION_TIMEOUT_MS / 1000} s`
      : `the realtime server (${where}) is unreachable`;
    return { position: null, problem };
  }
  if (res.status === 401) {
    const body = (await res.json().catch(() => null)) as { error?: { message?: string } } | null;
    const why = body?.error?.message ? ` (${body.error.message})` : '';
    const problem = token
      ? `the realtime server refused this app's token${why}: REALTIME_JWT_SECRET must be the server's secret`
      : `the realtime server wants a token${why}: set REALTIME_JWT_SECRET in the Next.js server`;
    console.error(`realtime example: ${problem}`);
    return { position: null, problem };
  }
  if (!res.ok) return { position: null, problem: `the realtime server answered HTTP ${res.status} to /poll` };
  const body = (await res.json().catch(() => null)) as { next?: unknown } | null;
  if (typeof body?.next !== 'string') return { position: null, problem: 'the realtime server gave no position' };
  return { position: body.next, problem: null };
}

/** The snapshot; throws when MongoDB fails or it takes more than FEED_TIMEOUT_MS. */
export async function loadFeed(user: string | null, limit = 20): Promise<Feed> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the feed took more than ${FEED_TIMEOUT_MS / 1000} s to read`)),
      FEED_TIMEOUT_MS);
  });
  try {
    return await Promise.race([readFeed(user, limit), late]);
  } finally {
    clearTimeout(timer);
  }
}

async function readFeed(user: string | null, limit: number): Promise<Feed> {
  const { position: at, problem } = await readPosition(user);
  const found = await (await posts()).find(PUBLIC).sort({ createdAt: -1, _id: -1 }).limit(limit).toArray();
  const ids = found.map((p) => p._id);
  const counts = new Map<string, number>();
  for await (const row of (await likes()).aggregate<{ _id: string; n: number }>([
    { $match: { postId: { $in: ids } } },
    { $group: { _id: '$postId', n: { $sum: 1 } } },
  ])) counts.set(row._id, row.n);
  const mine = new Set(user ? (await (await likes()).find({ postId: { $in: ids }, userId: user }).toArray())
    .map((l) => l.postId) : []);
  const byPost = new Map<string, Comment[]>();
  for (const c of await (await comments()).find({ postId: { $in: ids } }).sort({ createdAt: 1, _id: 1 }).toArray()) {
    const list = byPost.get(c.postId) ?? [];
    list.push({ id: String(c._id), userId: c.userId, text: c.text });
    byPost.set(c.postId, list);
  }
  return {
    position: at,
    problem,
    posts: found.map((p) => ({
      id: p._id,
      authorId: p.authorId,
      text: p.text,
      hashtags: p.hashtags ?? [],
      likes: counts.get(p._id) ?? 0,
      liked: mine.has(p._id),
      comments: (byPost.get(p._id) ?? []).slice(-5),
    })),
  };
}
