import type { TownRecord } from '../db/towns.table';
import type { Env } from '../types';
import { TownsStoreDO } from './towns-store';

/** GastownOrgDO: one per organisation (`idFromName(orgId)`), holding org towns and their creator. */
export class GastownOrgDO extends TownsStoreDO {
  async createTown(input: { name: string; organization_id: string; created_by_user_id: string }): Promise<TownRecord> {
    return this.insertTown({
      id: crypto.randomUUID(),
      name: input.name,
      owner_type: 'org',
      // the creator acts as the town's owner user (container tokens carry it)
      owner_user_id: input.created_by_user_id,
      organization_id: input.organization_id,
      created_by_user_id: input.created_by_user_id,
      status: 'active',
      created_at: new Date().toISOString(),
    });
  }
}

export function getGastownOrgStub(env: Env, orgId: string) {
  return env.GASTOWN_ORG.get(env.GASTOWN_ORG.idFromName(orgId));
}
