import { readFileSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { DuckDBInstance } from '@duckdb/node-api'
import { parquetMetadata, parquetReadObjects } from 'hyparquet'
import sharp from 'sharp'
import { describe, expect, it } from 'vitest'

import { planUnit, VQA_PER_IMAGE } from '../../scenes/generate.js'
import { answerQuestion, captionOf } from '../../scenes/grammar.js'
import type { Scene } from '../../scenes/scene.js'
import type { Kind, Split } from '../../scenes/splits.js'

const DIR = new URL('../../fixtures/scenes/', import.meta.url)
const FIXTURES = [
  { file: 'val.parquet', split: 'val', kind: 'caption', seed: 2_000_000, rows: 256 },
  { file: 'test.parquet', split: 'test', kind: 'caption', seed: 3_000_000, rows: 512 },
  { file: 'vqa.parquet', split: 'test', kind: 'vqa', seed: 3_000_001, rows: 512 },
  { file: 'video.parquet', split: 'test', kind: 'video', seed: 3_000_002, rows: 128 },
] as const

function load(file: string): ArrayBuffer {
  const buf = readFileSync(new URL(file, DIR))
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
}

describe('fixtures/scenes', () => {
  it('weigh at most 15 MB together', () => {
    const total = FIXTURES.reduce((s, f) => s + statSync(new URL(f.file, DIR)).size, 0)
    expect(total).toBeLessThanOrEqual(15 * 1024 * 1024)
  })

  describe.each(FIXTURES)('$file', (f) => {
    it('records how it was generated and matches a regeneration of its text (README command)', async () => {
      const file = load(f.file)
      const meta = parquetMetadata(file)
      const kv = JSON.parse(meta.key_value_metadata!.find((k) => k.key === 'evflow.scenes')!.value!)
      expect(kv).toMatchObject({ split: f.split, kind: f.kind, seed: f.seed, rows: f.rows, shards: 1 })
      expect(Number(meta.num_rows)).toBe(f.rows)

      const rows = await parquetReadObjects({ file, utf8: false, columns: ['id', 'caption', 'question', 'answer', 'scene'] })
      const perUnit = f.kind === 'vqa' ? VQA_PER_IMAGE : 1
      const expected = Array.from({ length: f.rows / perUnit }, (_, u) => planUnit(f.split as Split, f.kind as Kind, f.seed, u)).flat()
      expect(rows.map((r) => r.id)).toEqual(expected.map((r) => r.id))
      for (const [i, r] of rows.entries()) {
        expect([r.caption, r.question, r.answer]).toEqual([expected[i].caption, expected[i].question, expected[i].answer])
        expect(r.scene).toEqual(expected[i].scene)
      }
    })

    it('re-derives every caption and answer from the stored scene JSON, and every image decodes', async () => {
      const rows = await parquetReadObjects({ file: load(f.file), utf8: false })
      expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length)
      for (const r of rows) {
        const scene = r.scene as Scene
        expect(r.caption).toBe(captionOf(scene))
        expect(answerQuestion(scene, r.question)).toBe(r.answer)
        const media: Uint8Array[] = scene.kind === 'video' ? r.frames : [r.image]
        expect(media).toHaveLength(scene.kind === 'video' ? scene.frames : 1)
        for (const m of media) {
          expect(m).toBeInstanceOf(Uint8Array)
          const info = await sharp(m, { failOn: 'error' }).raw().toBuffer({ resolveWithObject: true })
          expect([info.info.width, info.info.height, info.info.channels]).toEqual([scene.width, scene.height, 3])
        }
      }
    })
  })

  it('are read by DuckDB with the intended types', async () => {
    const db = await DuckDBInstance.create(':memory:')
    const conn = await db.connect()
    try {
      for (const f of FIXTURES) {
        const path = fileURLToPath(new URL(f.file, DIR)).replace(/'/g, "''")
        const media = f.kind === 'video' ? 'frames' : 'image'
        const reader = await conn.runAndReadAll(
          `select count(*) as n, any_value(typeof(${media})) as m, any_value(typeof(scene)) as s, ` +
            `any_value(typeof(caption)) as c, count(distinct id) as ids from '${path}'`,
        )
        expect(reader.getRowObjectsJS(), f.file).toEqual([
          { n: BigInt(f.rows), m: f.kind === 'video' ? 'BLOB[]' : 'BLOB', s: 'JSON', c: 'VARCHAR', ids: BigInt(f.rows) },
        ])
      }
    } finally {
      conn.closeSync()
    }
  })
})
