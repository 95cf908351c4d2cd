import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';

/** The error body our worker answers, so both sides speak the same wire format. */
export function resError(c: Context, status: ContentfulStatusCode, code: string, message: string, field?: string) {
  return c.json({ error: field ? { code, message, field } : { code, message } }, status);
}
