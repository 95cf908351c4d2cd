import type { TownRecord } from '../db/towns.table';
import type { Env } from '../types';
import { TownsStoreDO } from './towns-store';

/** GastownUserDO: one per user (`idFromName(userId)`), holding the user's personal towns. */
export class GastownUserDO extends TownsStoreDO {
  async createTown(input: { name: string; owner_user_id: string }): Promise<TownRecord> {
    return this.insertTown({
      id: crypto.randomUUID(),
      name: input.name,
      owner_type: 'user',
      owner_user_id: input.owner_user_id,
      organization_id: null,
      created_by_user_id: input.owner_user_id,
      status: 'active',
      created_at: new Date().toISOString(),
    });
  }
}

export function getGastownUserStub(env: Env, userId: string) {
  return env.GASTOWN_USER.get(env.GASTOWN_USER.idFromName(userId));
}
