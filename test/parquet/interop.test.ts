/**
 * Shards written by DuckDB (footer v1 and v2, snappy and zstd), by hyparquet-writer and by parquetjs-lite
 * are read correctly; DuckDB reads evflow's output shards and sees exactly the rows and values written.
 */
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { readShards } from '../../operators/read-shards.js'
import { scanPipeline } from '../../pipelines/scan.js'
import { runPipeline } from '../../pipelines/run.js'
import type { ImageRow } from '../../src/records.js'
import { duckExec, duckQuery } from '../helpers/duckdb.js'
import * as img from '../helpers/images.js'
import { imageShardBuffer, writeBuffer } from '../helpers/shards.js'
import { collect, tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
const images: Buffer[] = []

beforeAll(async () => {
  ;({ dir, cleanup } = tempDir())
  mkdirSync(join(dir, 'png'))
  for (let i = 0; i < 6; i++) {
    images.push(await img.png(16 + i, 16, i))
    writeFileSync(join(dir, 'png', `${i}.png`), images[i])
  }
})
afterAll(() => cleanup())

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

async function expectImages(file: string, imageColumn?: string) {
  const rows = (await collect(readShards(file, imageColumn ? { imageColumn } : {}))) as ImageRow[]
  expect(rows).toHaveLength(6)
  rows.forEach((r, i) => {
    expect(r.kind).toBe('image-row')
    expect(sha(r.image!)).toBe(sha(images[i]))
  })
  return rows
}

describe('reading shards written by other tools', () => {
  for (const version of ['V1', 'V2']) {
    for (const codec of ['snappy', 'zstd']) {
      it(`DuckDB footer ${version}, ${codec}`, async () => {
        const file = join(dir, `duck-${version}-${codec}.parquet`)
        await duckExec([
          `COPY (SELECT regexp_extract(filename, '(\\d+)\\.png', 1)::INT AS n, 'img-' || n AS id, content AS image
                 FROM read_blob('${join(dir, 'png')}/*.png') ORDER BY n)
           TO '${file}' (FORMAT parquet, COMPRESSION ${codec}, PARQUET_VERSION ${version}, ROW_GROUP_SIZE 4)`,
        ])
        const rows = await expectImages(file)
        expect(rows.map((r) => r.id)).toEqual(images.map((_, i) => `img-${i}`))
      })
    }
  }

  it('hyparquet-writer', async () => {
    const file = join(dir, 'hyparquet.parquet')
    writeBuffer(file, imageShardBuffer(images.map((image, i) => ({ id: `h${i}`, image })), 4))
    await expectImages(file)
  })

  it('parquetjs-lite', async () => {
    const require = createRequire(import.meta.url)
    const parquet = require('parquetjs-lite') as {
      ParquetSchema: new (s: object) => unknown
      ParquetWriter: { openFile(schema: unknown, path: string): Promise<{ appendRow(r: object): Promise<void>; close(): Promise<void> }> }
    }
    const schema = new parquet.ParquetSchema({ id: { type: 'UTF8' }, image: { type: 'BYTE_ARRAY' } })
    const file = join(dir, 'parquetjs.parquet')
    const writer = await parquet.ParquetWriter.openFile(schema, file)
    for (const [i, image] of images.entries()) await writer.appendRow({ id: `p${i}`, image })
    await writer.close()
    const rows = await expectImages(file, 'image')
    expect(rows.map((r) => r.id)).toEqual(images.map((_, i) => `p${i}`))
  })
})

describe('DuckDB reads evflow output', () => {
  it('sees exactly the rows and values written by a scan', async () => {
    const input = join(dir, 'in', 'shard.parquet')
    const rows = images.map((image, i) => ({ id: `r${i}`, image: i === 2 ? img.garbage(10, 1) : image, url: `u${i}` }))
    writeBuffer(input, imageShardBuffer(rows, 4))
    const out = join(dir, 'out')
    const summary = await runPipeline(scanPipeline, scanPipeline.defaults, { inputs: [input], outDir: out, keep: ['url'] })
    expect(summary.rows).toEqual({ in: 6, ok: 5, error: 1 })
    const result = await duckQuery(`SELECT * FROM read_parquet('${join(out, 'shard.parquet')}')`)
    expect(result).toHaveLength(6)
    result.forEach((row, i) => {
      expect(row.id).toBe(`r${i}`)
      expect(row.url).toBe(`u${i}`)
      if (i === 2) {
        expect(row).toMatchObject({ status: 'error', error_code: 'unsupported-format', width: null, sha256: null })
        expect(String(row.error)).toContain('unsupported')
      } else {
        expect(row).toMatchObject({ status: 'ok', error: null, width: 16 + i, height: 16, format: 'png', channels: 3, bit_depth: 8, sha256: sha(images[i]) })
        expect(Number(row.bytes)).toBe(images[i].length)
      }
    })
    const meta = await duckQuery(`SELECT decode(key) AS key FROM parquet_kv_metadata('${join(out, 'shard.parquet')}')`)
    expect(meta.map((m) => m.key)).toEqual(expect.arrayContaining(['evflow.config_hash', 'evflow.config', 'evflow.input_fingerprint']))
    expect(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')).toContain('"pipeline": "scan"')
  })
})
