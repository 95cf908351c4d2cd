import type { Context } from 'hono';
import { CreateTownBody } from '../db/towns.table';
import { getGastownUserStub } from '../dos/GastownUser.do';
import type { GastownEnv } from '../types';
import { resError } from '../util/res.util';
import { parseJsonBody } from '../util/validation.util';

/** POST /api/users/:userId/towns {name} → 201 town */
export async function handleCreateTown(c: Context<GastownEnv>) {
  const body = await parseJsonBody(c, CreateTownBody);
  if (!body.success) return body.response;

  const town = await getGastownUserStub(c.env, c.get('kiloUserId')).createTown({
    name: body.data.name,
    owner_user_id: c.get('kiloUserId'),
  });
  return c.json(town, 201);
}

/** GET /api/users/:userId/towns/:townId */
export async function handleGetTown(c: Context<GastownEnv>) {
  const town = await getGastownUserStub(c.env, c.get('kiloUserId')).getTown(c.req.param('townId') ?? '');
  if (!town) return resError(c, 404, 'not_found', 'Town not found');
  return c.json(town);
}
