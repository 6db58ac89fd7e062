'use client';
// What the page shows when its snapshot cannot be read: the reason, a retry button, and a retry by itself.
import { useRouter } from 'next/navigation';
import { useEffect, useTransition } from 'react';

/** Reads the page again every `every` ms (and at once with `retry()`); `pending` while it does. */
export function useRefresh(every: number | null) {
  const router = useRouter();
  const [pending, start] = useTransition();
  const retry = () => start(() => router.refresh());
  useEffect(() => {
    if (every === null) return undefined;
    const timer = setInterval(() => start(() => router.refresh()), every);
    return () => clearInterval(timer);
  }, [every, router]);
  return { pending, retry };
}

export function Unavailable({ message }: { message: string }) {
  const { pending, retry } = useRefresh(10000);
  return (
    <main>
      <h1>realtime feed</h1>
      <div className="notice" role="alert" data-testid="unavailable">
        <p>{message} Trying again every 10 s.</p>
        <button type="button" onClick={retry} disabled={pending}>{pending ? 'Retrying…' : 'Retry now'}</button>
      </div>
    </main>
  );
}
