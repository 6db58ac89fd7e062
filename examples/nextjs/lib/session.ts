// Who the user is. A stand-in for your app's sign-in: the name comes from `?user=` (kept in a cookie by
// middleware.ts) and is believed as it is. Never do this in production.
import { cookies } from 'next/headers';

const NAME = /^[A-Za-z0-9_-]{1,32}$/;

export function validUser(name: unknown): name is string {
  return typeof name === 'string' && NAME.test(name);
}

export async function currentUser(fromQuery?: string | string[]): Promise<string | null> {
  if (validUser(fromQuery)) return fromQuery;
  const cookie = (await cookies()).get('user')?.value;
  return validUser(cookie) ? cookie : null;
}
