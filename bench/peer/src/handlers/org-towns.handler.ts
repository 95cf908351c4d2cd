import type { Context } from 'hono';
import { z } from 'zod';
import { CreateTownBody } from '../db/towns.table';
import { getGastownOrgStub } from '../dos/GastownOrg.do';
import { MAX_LIST_LIMIT } from '../dos/towns-store';
import type { GastownEnv } from '../types';
import { resError } from '../util/res.util';
import { parseJsonBody } from '../util/validation.util';

const ListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(MAX_LIST_LIMIT).default(MAX_LIST_LIMIT),
});

/** POST /api/orgs/:orgId/towns {name} → 201 town (the caller is recorded as its creator) */
export async function handleCreateOrgTown(c: Context<GastownEnv>) {
  const body = await parseJsonBody(c, CreateTownBody);
  if (!body.success) return body.response;

  const town = await getGastownOrgStub(c.env, c.get('orgId')).createTown({
    name: body.data.name,
    organization_id: c.get('orgId'),
    created_by_user_id: c.get('kiloUserId'),
  });
  return c.json(town, 201);
}

/** GET /api/orgs/:orgId/towns?limit= */
export async function handleListOrgTowns(c: Context<GastownEnv>) {
  const parsed = ListQuery.safeParse(c.req.query());
  if (!parsed.success) return resError(c, 422, 'invalid', 'Invalid limit', 'limit');

  const towns = await getGastownOrgStub(c.env, c.get('orgId')).listTowns(parsed.data.limit);
  return c.json(towns);
}
