// Runs once when the Next.js server starts: say at once what the configuration lacks.
export function register(): void {
  if (process.env.NEXT_RUNTIME !== 'nodejs') return;
  if (!process.env.REALTIME_JWT_SECRET) {
    console.warn('realtime example: REALTIME_JWT_SECRET is not set: /api/token mints no tokens, and pages connect '
      + 'anonymously (public rooms only, no typing) or not at all. Set it to the realtime server\'s secret.');
  }
  if (!process.env.MONGODB_URI) {
    console.warn('realtime example: MONGODB_URI is not set: the feed cannot be read (realtime dev prints the URI).');
  }
}
