// Tokens for the realtime server: HS256 JWTs signed with REALTIME_JWT_SECRET, the secret the server checks
// them with. (Your app issues them; the server only reads `sub` and `exp`.)
import { createHmac } from 'node:crypto';

import { jwtSecret } from './config';

/** What the page and the server log say when the app cannot mint tokens. */
export const NO_SECRET = 'REALTIME_JWT_SECRET is not set in the Next.js server: it mints no tokens, so pages connect '
  + 'anonymously (public rooms only, no typing), or not at all where the realtime server wants a token. Set it '
  + 'to the realtime server\'s secret and restart.';

const b64url = (data: string | Buffer) => Buffer.from(data).toString('base64url');

export function mintToken(user: string, ttlSeconds = 900): string | null {
  const secret = jwtSecret();
  if (!secret) return null;
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub: user, exp: Math.floor(Date.now() / 1000) + ttlSeconds }));
  const signature = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}
