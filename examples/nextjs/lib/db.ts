// The MongoDB the watcher reads, through the official driver. The app only writes documents: the watcher
// turns each write into events (nobody emits them).
import { MongoClient, type Db } from 'mongodb';

import { mongoUri } from './config';

export interface PostDoc {
  _id: string;
  authorId: string;
  text: string;
  hashtags?: string[];
  visibility?: string | null;
  createdAt?: Date;
}

export interface LikeDoc {
  _id: string;
  postId: string;
  userId: string;
}

export interface CommentDoc {
  _id: string;
  postId: string;
  userId: string;
  text: string;
  createdAt?: Date;
}

const holder = globalThis as unknown as { realtimeExampleMongo?: Promise<MongoClient> };

/**
 * Bounds on every wait for MongoDB (ms): finding the server, connecting, and any one read or write. A database
 * that is down or hangs fails a request within seconds; it never holds it for ever.
 */
export const MONGO_TIMEOUTS = { serverSelectionTimeoutMS: 3000, connectTimeoutMS: 3000, socketTimeoutMS: 5000 };

/** One client per server process (kept across hot reloads in development). */
export async function db(): Promise<Db> {
  holder.realtimeExampleMongo ??= new MongoClient(mongoUri(), MONGO_TIMEOUTS).connect();
  const client = await holder.realtimeExampleMongo.catch((err: unknown) => {
    holder.realtimeExampleMongo = undefined; // try again on the next request
    throw err;
  });
  return client.db(process.env.MONGODB_DB || undefined);
}

export const posts = async () => (await db()).collection<PostDoc>('posts');
export const likes = async () => (await db()).collection<LikeDoc>('likes');
export const comments = async () => (await db()).collection<CommentDoc>('comments');

/** A post is public when its visibility is absent or "public" (as the watcher routes it). */
export const PUBLIC = { $or: [{ visibility: { $exists: false } }, { visibility: 'public' }] };

export function newId(prefix: string): string {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}
