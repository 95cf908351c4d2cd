import jwt from 'jsonwebtoken';
import { z } from 'zod';

export const OrgMembership = z.object({
  orgId: z.string(),
  role: z.enum(['owner', 'member', 'billing_manager']),
});
export type OrgMembership = z.infer<typeof OrgMembership>;

const MAX_LIFETIME_SECONDS = 3600;
const CLOCK_SKEW_SECONDS = 60;

/** Claims of a dashboard user token (NEXTAUTH_SECRET). Other token kinds are refused. */
export const KiloUserJWTPayload = z
  .object({
    kiloUserId: z.string().min(1),
    orgMemberships: z.array(OrgMembership).default([]),
    gastownAccess: z.boolean().optional(),
    isAdmin: z.boolean().optional(),
    aud: z.union([z.string(), z.array(z.string())]).optional(),
    iat: z.number(),
    exp: z.number(),
    // sandbox and container tokens share or resemble this shape: never a user token
    type: z.never().optional(),
    scope: z.never().optional(),
  })
  .refine(p => p.exp - p.iat <= MAX_LIFETIME_SECONDS, { message: 'Token lifetime too long' })
  .refine(p => p.aud === undefined || [p.aud].flat().includes('gastown'), { message: 'Wrong audience' });
export type KiloUserJWTPayload = z.infer<typeof KiloUserJWTPayload>;

export function verifyKiloUserJWT(
  token: string,
  secret: string
): { success: true; payload: KiloUserJWTPayload } | { success: false; error: string } {
  try {
    const raw = jwt.verify(token, secret, { algorithms: ['HS256'], clockTolerance: CLOCK_SKEW_SECONDS });
    const parsed = KiloUserJWTPayload.safeParse(raw);
    if (!parsed.success) {
      return { success: false, error: 'Invalid token payload' };
    }
    return { success: true, payload: parsed.data };
  } catch (error) {
    if (error instanceof jwt.TokenExpiredError) {
      return { success: false, error: 'Token expired' };
    }
    if (error instanceof jwt.JsonWebTokenError) {
      return { success: false, error: 'Invalid token signature' };
    }
    return { success: false, error: 'Token validation failed' };
  }
}
