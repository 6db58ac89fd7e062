// GET /api/token: a short-lived token for the realtime server, for the signed-in user.
import { reply, route } from '@/lib/api';
import { mintToken } from '@/lib/token';

export const dynamic = 'force-dynamic';

export function GET() {
  return route(async (user) => reply({ user, token: mintToken(user) }));
}
