// The feed's snapshot: the position first (the realtime server's stream head), then the posts, their like
// counts and comments from MongoDB. Events after the position are replayed to the page, so nothing written
// between the two reads is missed (some may come twice: the page applies them idempotently).
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
  position: string | null;
}

async function position(user: string | null): Promise<string | null> {
  const token = user ? mintToken(user) : null;
  const res = await fetch(`${realtimeHttpUrl()}/poll?rooms=public&wait=0`, {
    cache: 'no-store',
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  if (!res.ok) throw new Error(`the realtime server answered ${res.status} to /poll`);
  const body = (await res.json()) as { next?: string };
  return body.next ?? null;
}

export async function loadFeed(user: string | null, limit = 20): Promise<Feed> {
  const at = await position(user);
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
