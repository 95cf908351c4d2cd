import { createMiddleware } from 'hono/factory';
import type { GastownEnv } from '../types';
import { verifyKiloUserJWT } from '../util/jwt.util';
import { resError } from '../util/res.util';

/** Verifies the dashboard's user JWT and puts its claims on the context. */
export const kiloAuthMiddleware = createMiddleware<GastownEnv>(async (c, next) => {
  const header = c.req.header('Authorization');
  const token = header?.startsWith('Bearer ') ? header.slice(7) : undefined;
  if (!token) return resError(c, 401, 'unauthorized', 'Authentication required');

  const result = verifyKiloUserJWT(token, c.env.NEXTAUTH_SECRET);
  if (!result.success) return resError(c, 401, 'unauthorized', result.error);

  c.set('kiloUserId', result.payload.kiloUserId);
  c.set('orgMemberships', result.payload.orgMemberships);
  await next();
});

/** `/api/users/:userId/...`: the token's user must be the route's user. */
export const userMatchMiddleware = createMiddleware<GastownEnv>(async (c, next) => {
  if (c.req.param('userId') !== c.get('kiloUserId')) {
    return resError(c, 403, 'forbidden', 'Not your resource');
  }
  await next();
});
