/** Small reference and output shards for the eval tests, written with hyparquet-writer. */
import { fileURLToPath } from 'node:url'
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import { parquetWriteBuffer } from 'hyparquet-writer'

import { writeBuffer } from '../../helpers/shards.js'

export interface ReferenceRow {
  id: string
  caption: string
  question: string
  answer: string
  /** Scene JSON text. */
  scene: string
}

/** The first `n` rows of a `fixtures/scenes` shard (text columns only). */
export async function fixtureRows(name: string, n: number): Promise<ReferenceRow[]> {
  const file = await asyncBufferFromFile(fileURLToPath(new URL(`../../../fixtures/scenes/${name}`, import.meta.url)))
  const rows = await parquetReadObjects({ file, columns: ['id', 'caption', 'question', 'answer', 'scene'], rowEnd: n, compressors })
  return rows.map((r) => ({ ...(r as unknown as ReferenceRow), scene: typeof r.scene === 'string' ? r.scene : JSON.stringify(r.scene) }))
}

export function writeReference(path: string, rows: readonly ReferenceRow[]): void {
  writeBuffer(
    path,
    parquetWriteBuffer({
      columnData: [
        { name: 'id', data: rows.map((r) => r.id), type: 'STRING' },
        { name: 'caption', data: rows.map((r) => r.caption), type: 'STRING' },
        { name: 'question', data: rows.map((r) => r.question), type: 'STRING' },
        { name: 'answer', data: rows.map((r) => r.answer), type: 'STRING' },
        { name: 'scene', data: rows.map((r) => r.scene), type: 'JSON' },
      ],
    }),
  )
}

export interface OutputRow {
  id?: string
  status: 'ok' | 'error'
  error_code?: string | null
  caption?: string | null
  question?: string | null
  answer?: string | null
  finish_reason?: 'stop' | 'length' | null
}

/** An output shard as the pipelines write it: [id], status, error, error_code, then the result columns present in `results`. */
export function writeOutput(path: string, rows: readonly OutputRow[], results: readonly ('caption' | 'question' | 'answer' | 'finish_reason')[], withId = true): void {
  writeBuffer(
    path,
    parquetWriteBuffer({
      columnData: [
        ...(withId ? [{ name: 'id', data: rows.map((r) => r.id ?? null), type: 'STRING' as const }] : []),
        { name: 'status', data: rows.map((r) => r.status), type: 'STRING' },
        { name: 'error', data: rows.map((r) => (r.status === 'error' ? 'failed' : null)), type: 'STRING' },
        { name: 'error_code', data: rows.map((r) => r.error_code ?? null), type: 'STRING' },
        ...results.map((name) => ({ name, data: rows.map((r) => r[name] ?? null), type: 'STRING' as const })),
      ],
    }),
  )
}
