/**
 * Writing small Parquet shards for tests, benchmarks and fixtures with hyparquet-writer.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import type { SchemaElement } from 'hyparquet'
import { parquetWriteBuffer } from 'hyparquet-writer'

export interface ImageShardRow {
  id: string
  image: Uint8Array | null
  url?: string | null
}

/** A shard with `id` (string), `image` (binary) and `url` (string) columns. */
export function imageShardBuffer(rows: readonly ImageShardRow[], rowGroupSize = 100): ArrayBuffer {
  return parquetWriteBuffer({
    columnData: [
      { name: 'id', data: rows.map((r) => r.id), type: 'STRING' },
      { name: 'image', data: rows.map((r) => r.image), type: 'BYTE_ARRAY' },
      { name: 'url', data: rows.map((r) => r.url ?? null), type: 'STRING' },
    ],
    rowGroupSize,
    createdBy: 'evflow-test',
  })
}

/** A shard in the Hugging Face `datasets` layout: `image` is a struct `{bytes, path}`. */
export function hfShardBuffer(rows: readonly { id: string; bytes: Uint8Array | null; path: string | null }[], rowGroupSize = 100): ArrayBuffer {
  const schema: SchemaElement[] = [
    { name: 'root', num_children: 2 },
    { name: 'id', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
    { name: 'image', repetition_type: 'OPTIONAL', num_children: 2 },
    { name: 'bytes', type: 'BYTE_ARRAY', repetition_type: 'OPTIONAL' },
    { name: 'path', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' },
  ]
  return parquetWriteBuffer({
    columnData: [
      { name: 'id', data: rows.map((r) => r.id) },
      { name: 'image', data: rows.map((r) => ({ bytes: r.bytes, path: r.path })) },
    ],
    schema,
    rowGroupSize,
    createdBy: 'evflow-test',
  })
}

export function writeBuffer(path: string, buffer: ArrayBuffer): void {
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, new Uint8Array(buffer))
}
