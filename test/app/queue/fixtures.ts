/** Inputs and output checks shared by the distributed-mode tests. */
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parquetReadObjects } from 'hyparquet'

import * as img from '../../helpers/images.js'
import { imageShardBuffer, writeBuffer } from '../../helpers/shards.js'

/**
 * Writes `count` shards `part-000NN.parquet` of `rows` rows each (valid JPEGs only, so that every decode is
 * deterministic whatever the concurrency), row groups of `rowGroupSize`.
 */
export async function writeImageShards(dir: string, count: number, rows: number, options: { size?: number; rowGroupSize?: number; seed?: number } = {}): Promise<string[]> {
  const size = options.size ?? 48
  const seed = options.seed ?? 1
  const pool = await Promise.all(Array.from({ length: 8 }, (_, i) => img.jpeg(size + i, size, seed * 100 + i, 80)))
  const files: string[] = []
  for (let s = 0; s < count; s++) {
    const file = join(dir, `part-${String(s).padStart(5, '0')}.parquet`)
    const data = Array.from({ length: rows }, (_, i) => ({ id: `s${s}-r${i}`, image: pool[(s * 3 + i) % pool.length], url: `https://example.org/${s}/${i}` }))
    writeBuffer(file, imageShardBuffer(data, options.rowGroupSize ?? 100))
    files.push(file)
  }
  return files
}

/** A file with valid `PAR1` magic at both ends and a garbage footer: unreadable at planning. */
export function writePoisonShard(path: string): void {
  const footer = Buffer.from('this is not a thrift footer at all', 'utf8')
  const length = Buffer.alloc(4)
  length.writeUInt32LE(footer.length)
  writeFileSync(path, Buffer.concat([Buffer.from('PAR1'), Buffer.alloc(64, 7), footer, length, Buffer.from('PAR1')]))
}

/** The `.parquet` files directly in `dir` (none when it does not exist). */
export const parquetFiles = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.parquet')).sort() : [])

export const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex')

/** Every row of a Parquet file, bigints as strings (comparable with `toEqual`). */
export async function readRows(path: string): Promise<Record<string, unknown>[]> {
  const bytes = readFileSync(path)
  const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
  const rows = (await parquetReadObjects({ file })) as Record<string, unknown>[]
  return rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, typeof v === 'bigint' ? String(v) : v])))
}

/** Rows of every output shard of `dir`, by file name. */
export async function readOutput(dir: string): Promise<Record<string, Record<string, unknown>[]>> {
  const out: Record<string, Record<string, unknown>[]> = {}
  for (const file of parquetFiles(dir)) out[file] = await readRows(join(dir, file))
  return out
}

/** Polls `predicate` every 50 ms until it holds. */
export async function waitUntil(predicate: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now()
  while (!(await predicate())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}
