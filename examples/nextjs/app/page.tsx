// The feed page: a server component that reads the snapshot (position, then MongoDB) and hands it to the
// client components, which keep it live.
import { Feed } from './feed';
import { WEBSOCKET_URL } from '@/lib/config';
import { loadFeed } from '@/lib/feed';
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
  const feed = await loadFeed(user);
  const wsRetry = Number(process.env.NEXT_PUBLIC_REALTIME_WS_RETRY_MS) || undefined;
  return <Feed user={user} feed={feed} url={WEBSOCKET_URL} wsRetry={wsRetry} />;
}
