// POST /api/comments {postId, text}: a comment, written to MongoDB (the watcher publishes comment:added).
import { ApiError, json, reply, route, text } from '@/lib/api';
import { comments, newId, posts, PUBLIC } from '@/lib/db';

export const dynamic = 'force-dynamic';

export function POST(request: Request) {
  return route(async (user) => {
    const body = await json(request);
    const postId = text(body.postId, 'postId', 100);
    const words = text(body.text, 'text', 500);
    if (!(await (await posts()).findOne({ _id: postId, ...PUBLIC }, { projection: { _id: 1 } }))) {
      throw new ApiError(404, 'no_post', 'no such post');
    }
    const comment = { _id: newId('c'), postId, userId: user, text: words, createdAt: new Date() };
    await (await comments()).insertOne(comment);
    return reply({ id: comment._id, postId, userId: user, text: words }, 201);
  });
}
