// What the API routes share: the user from the session, JSON in and out, errors as {error: {code, message}}.
import { NextResponse } from 'next/server';

import { currentUser } from './session';

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export function reply(body: unknown, status = 200): NextResponse {
  return NextResponse.json(body, { status, headers: { 'Cache-Control': 'no-store' } });
}

export async function route(handler: (user: string) => Promise<NextResponse>): Promise<NextResponse> {
  try {
    const user = await currentUser();
    if (!user) throw new ApiError(401, 'no_user', 'sign in first (?user=<name>)');
    return await handler(user);
  } catch (err) {
    if (err instanceof ApiError) return reply({ error: { code: err.code, message: err.message } }, err.status);
    console.error(err);
    return reply({ error: { code: 'internal', message: 'something went wrong' } }, 500);
  }
}

export async function json(request: Request): Promise<Record<string, unknown>> {
  try {
    const body: unknown = await request.json();
    if (body && typeof body === 'object' && !Array.isArray(body)) return body as Record<string, unknown>;
  } catch {
    // below
  }
  throw new ApiError(400, 'bad_json', 'send a JSON object');
}

export function text(value: unknown, name: string, max: number): string {
  if (typeof value !== 'string' || !value.trim()) throw new ApiError(400, `bad_${name}`, `${name} is required`);
  if (value.length > max) throw new ApiError(400, `bad_${name}`, `${name} is longer than ${max} characters`);
  return value.trim();
}
