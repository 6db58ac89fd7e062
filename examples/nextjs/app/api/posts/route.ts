// POST /api/posts {text}: a public post, written to MongoDB (the watcher publishes post:created; #tags go to
// their hashtag: rooms).
import { json, reply, route, text } from '@/lib/api';
import { newId, posts } from '@/lib/db';

export const dynamic = 'force-dynamic';

export function POST(request: Request) {
  return route(async (user) => {
    const words = text((await json(request)).text, 'text', 500);
    const hashtags = [...new Set([...words.matchAll(/#([\p{L}\p{N}][\p{L}\p{N}_-]{0,63})/gu)].map((m) => m[1]!.toLowerCase()))];
    const post = { _id: newId('p'), authorId: user, text: words, hashtags, createdAt: new Date() };
    await (await posts()).insertOne(post);
    return reply({ id: post._id, authorId: user, text: words, hashtags, likes: 0, liked: false, comments: [] }, 201);
  });
}
