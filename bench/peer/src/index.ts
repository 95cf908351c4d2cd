/**
 * The TypeScript peer of `npm run bench`: the routes the bench compares, written the way the
 * TypeScript original writes them — a Hono router, `jsonwebtoken` for the HS256 user token,
 * `zod` for its claims and for request bodies, and Durable Object RPC (`stub.getTown(id)`) to
 * per-user and per-org DOs on SQLite storage. It answers the same JSON as the Rust worker.
 */
import { Hono } from 'hono';
import { GastownOrgDO } from './dos/GastownOrg.do';
import { GastownUserDO } from './dos/GastownUser.do';
import { handleCreateOrgTown, handleListOrgTowns } from './handlers/org-towns.handler';
import { handleCreateTown, handleGetTown } from './handlers/towns.handler';
import { kiloAuthMiddleware, userMatchMiddleware } from './middleware/kilo-auth.middleware';
import { orgAuthMiddleware } from './middleware/org-auth.middleware';
import type { GastownEnv } from './types';
import { resError } from './util/res.util';

export { GastownUserDO, GastownOrgDO };

const app = new Hono<GastownEnv>();

app.get('/health', c => c.json({ status: 'ok' }));

// ── Personal towns (user token of :userId) ──────────────────────────────
app.use('/api/users/:userId/*', kiloAuthMiddleware, userMatchMiddleware);
app.post('/api/users/:userId/towns', handleCreateTown);
app.get('/api/users/:userId/towns/:townId', handleGetTown);

// ── Org towns (user token, owner or member of :orgId) ───────────────────
app.use('/api/orgs/:orgId/*', kiloAuthMiddleware, orgAuthMiddleware);
app.post('/api/orgs/:orgId/towns', handleCreateOrgTown);
app.get('/api/orgs/:orgId/towns', handleListOrgTowns);

app.notFound(c => resError(c, 404, 'not_found', 'Not found'));
app.onError((err, c) => {
  console.error('[peer] unhandled error', err);
  return resError(c, 500, 'internal', 'Internal server error');
});

export default app;
