// The feed page: a server component that reads the snapshot (position, then MongoDB) and hands it to the
// client components, which keep it live. When MongoDB cannot be read in time, a page that says so and retries.
import { Feed } from './feed';
import { Unavailable } from './unavailable';
import { WEBSOCKET_URL } from '@/lib/config';
import { loadFeed, type Feed as FeedData } from '@/lib/feed';
import { currentUser } from '@/lib/session';

export const dynamic = 'force-dynamic';

export default async function Page({ searchParams }: { searchParams: Promise<Record<string, string | string[]>> }) {
  const user = await currentUser((await searchParams).user);
  if (!user) {
    return (
      <main>
        <h1>realtime feed</h1>
        <p>Pick a name: <a href="/?user=alice">/?user=alice</a></p>
      </main>
    );
  }
  let feed: FeedData;
  try {
    feed = await loadFeed(user);
  } catch (err) {
    console.error('realtime example: the feed could not be read:', err);
    return <Unavailable message="The feed could not be read from the database (it is down or does not answer)." />;
  }
  const wsRetry = Number(process.env.NEXT_PUBLIC_REALTIME_WS_RETRY_MS) || undefined;
  return <Feed user={user} feed={feed} url={WEBSOCKET_URL} wsRetry={wsRetry} />;
}
