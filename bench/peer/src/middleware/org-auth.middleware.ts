import { createMiddleware } from 'hono/factory';
import type { GastownEnv } from '../types';
import { resError } from '../util/res.util';

/**
 * `/api/orgs/:orgId/...`: the caller must be an owner or member of the org per the token's
 * `orgMemberships` claim (no database round trip); `billing_manager` is not a member.
 */
export const orgAuthMiddleware = createMiddleware<GastownEnv>(async (c, next) => {
  const orgId = c.req.param('orgId');
  if (!orgId) return resError(c, 400, 'bad_request', 'Missing orgId');

  const membership = c.get('orgMemberships').find(m => m.orgId === orgId);
  if (!membership) return resError(c, 403, 'forbidden', 'Not an org member');
  if (membership.role === 'billing_manager') return resError(c, 403, 'forbidden', 'Insufficient permissions');

  c.set('orgId', orgId);
  c.set('orgRole', membership.role);
  await next();
});
