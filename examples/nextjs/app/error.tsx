'use client';
// Anything else that fails while rendering the page: say so, and offer to try again.
import { useRouter } from 'next/navigation';
import { startTransition } from 'react';

export default function PageError({ reset }: { error: Error; reset: () => void }) {
  const router = useRouter();
  return (
    <main>
      <h1>realtime feed</h1>
      <div className="notice" role="alert">
        <p>Something went wrong while showing the feed.</p>
        <button type="button" onClick={() => startTransition(() => { router.refresh(); reset(); })}>Try again</button>
      </div>
    </main>
  );
}
