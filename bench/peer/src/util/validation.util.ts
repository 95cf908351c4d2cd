import type { Context } from 'hono';
import type { z } from 'zod';
import { resError } from './res.util';

/** Reads a JSON body and validates it: 400 when it is not JSON, 422 naming the first bad field. */
export async function parseJsonBody<T extends z.ZodType>(
  c: Context,
  schema: T
): Promise<{ success: true; data: z.infer<T> } | { success: false; response: Response }> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    return { success: false, response: resError(c, 400, 'bad_request', 'Malformed JSON body') };
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return {
      success: false,
      response: resError(c, 422, 'invalid', issue?.message ?? 'Invalid body', issue?.path.join('.') || undefined),
    };
  }
  return { success: true, data: parsed.data };
}
