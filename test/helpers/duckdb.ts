/** DuckDB as the test oracle: reads our outputs as users' tools would. */
import { DuckDBInstance } from '@duckdb/node-api'

export async function duckQuery(sql: string): Promise<Record<string, unknown>[]> {
  const instance = await DuckDBInstance.create(':memory:')
  const connection = await instance.connect()
  try {
    const reader = await connection.runAndReadAll(sql)
    return reader.getRowObjectsJS() as Record<string, unknown>[]
  } finally {
    connection.closeSync()
    instance.closeSync()
  }
}

export async function duckExec(statements: readonly string[]): Promise<void> {
  const instance = await DuckDBInstance.create(':memory:')
  const connection = await instance.connect()
  try {
    for (const sql of statements) await connection.run(sql)
  } finally {
    connection.closeSync()
    instance.closeSync()
  }
}
