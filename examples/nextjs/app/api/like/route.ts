// POST /api/like {postId, liked}: writes the like (or removes it) in MongoDB, and nothing else: the watcher
// publishes post:liked / post:unliked with the exact count. Idempotent: a like's _id is post and user, so a
// retried request changes nothing.
import { ApiError, json, reply, route, text } from '@/lib/api';
import { likes, posts, PUBLIC } from '@/lib/db';

export const dynamic = 'force-dynamic';

export function POST(request: Request) {
  return route(async (user) => {
    const body = await json(request);
    const postId = text(body.postId, 'postId', 100);
    if (typeof body.liked !== 'boolean') throw new ApiError(400, 'bad_liked', 'liked must be true or false');
    if (!(await (await posts()).findOne({ _id: postId, ...PUBLIC }, { projection: { _id: 1 } }))) {
      throw new ApiError(404, 'no_post', 'no such post');
    }
    const collection = await likes();
    const _id = `${postId}:${user}`;
    let changed: boolean;
    if (body.liked) {
      const result = await collection.updateOne({ _id }, { $setOnInsert: { postId, userId: user } }, { upsert: true });
      changed = result.upsertedCount > 0;
    } else {
      changed = (await collection.deleteOne({ _id })).deletedCount > 0;
    }
    const count = await collection.countDocuments({ postId });
    return reply({ postId, liked: body.liked, changed, likes: count });
  });
}
