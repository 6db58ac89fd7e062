// GET /api/token: a short-lived token for the realtime server, for the signed-in user. Without
// REALTIME_JWT_SECRET the app mints none: `token` is null (the page then connects anonymously, where the
// realtime server allows it) and `problem` says what is missing.
import { reply, route } from '@/lib/api';
import { NO_SECRET, mintToken } from '@/lib/token';

export const dynamic = 'force-dynamic';

export function GET() {
  return route(async (user) => {
    const token = mintToken(user);
    return reply({ user, token, ...(token ? {} : { problem: NO_SECRET }) });
  });
}
