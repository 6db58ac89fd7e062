// `?user=<name>` signs in as that user (a cookie the API routes read). A stand-in for your app's sign-in.
import { NextResponse, type NextRequest } from 'next/server';

export function middleware(request: NextRequest) {
  const user = request.nextUrl.searchParams.get('user');
  const response = NextResponse.next();
  if (user && /^[A-Za-z0-9_-]{1,32}$/.test(user)) {
    response.cookies.set('user', user, { httpOnly: true, sameSite: 'lax', path: '/' });
  }
  return response;
}

export const config = { matcher: '/' };
