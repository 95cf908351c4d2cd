import { DurableObject } from 'cloudflare:workers';
import { createTableTowns, TOWN_COLUMNS, TownRecord } from '../db/towns.table';
import { query } from '../util/query.util';
import type { Env } from '../types';

export const MAX_LIST_LIMIT = 500;

/** What the user and org DOs share: a `towns` table on the DO's SQLite storage. */
export abstract class TownsStoreDO extends DurableObject<Env> {
  protected sql: SqlStorage;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    void ctx.blockConcurrencyWhile(async () => {
      this.sql.exec(createTableTowns);
    });
  }

  protected insertTown(town: TownRecord): TownRecord {
    query(
      this.sql,
      /* sql */ `INSERT INTO towns (${TOWN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        town.id,
        town.name,
        town.owner_type,
        town.owner_user_id,
        town.organization_id,
        town.created_by_user_id,
        town.status,
        town.created_at,
      ]
    );
    return town;
  }

  async getTown(townId: string): Promise<TownRecord | null> {
    const rows = query(this.sql, /* sql */ `SELECT ${TOWN_COLUMNS} FROM towns WHERE id = ?`, [townId]);
    if (rows.length === 0) return null;
    return TownRecord.parse(rows[0]);
  }

  async listTowns(limit: number): Promise<TownRecord[]> {
    const rows = query(
      this.sql,
      /* sql */ `SELECT ${TOWN_COLUMNS} FROM towns ORDER BY created_at, id LIMIT ?`,
      [Math.min(limit, MAX_LIST_LIMIT)]
    );
    return TownRecord.array().parse(rows);
  }
}
