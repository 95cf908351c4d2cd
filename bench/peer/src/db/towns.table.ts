import { z } from 'zod';

/** A town as the API shows it (the same JSON as the Rust worker's `Town`). */
export const TownRecord = z.object({
  id: z.string(),
  name: z.string(),
  owner_type: z.enum(['user', 'org']),
  owner_user_id: z.string(),
  organization_id: z.string().nullable(),
  created_by_user_id: z.string(),
  status: z.enum(['active', 'stopped']),
  created_at: z.string(),
});
export type TownRecord = z.infer<typeof TownRecord>;

export const TOWN_COLUMNS =
  'id, name, owner_type, owner_user_id, organization_id, created_by_user_id, status, created_at';

export const createTableTowns = /* sql */ `
  CREATE TABLE IF NOT EXISTS towns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_type TEXT NOT NULL,
    owner_user_id TEXT NOT NULL,
    organization_id TEXT,
    created_by_user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE INDEX IF NOT EXISTS towns_by_created_at ON towns (created_at, id);
`;

/** POST .../towns body: `name` is required; any other field is ignored. */
export const CreateTownBody = z.object({
  name: z.string().trim().min(1).max(200),
});
