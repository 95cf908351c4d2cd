/** Runs one statement on a Durable Object's SQLite storage and returns its rows. */
export function query(sql: SqlStorage, statement: string, params: unknown[]): Record<string, SqlStorageValue>[] {
  return [...sql.exec(statement, ...params)];
}
