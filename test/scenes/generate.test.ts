import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { DuckDBInstance } from '@duckdb/node-api'
import { parquetMetadata, parquetReadObjects } from 'hyparquet'
import { afterAll, describe, expect, it } from 'vitest'

import { main } from '../../scenes/cli.js'
import { generate, planUnit, shardNames, VQA_PER_IMAGE, type GenerateOptions } from '../../scenes/generate.js'
import { answerQuestion, captionOf } from '../../scenes/grammar.js'
import { parseNpyHeader } from '../../scenes/npy.js'
import { resizeForModel } from '../../scenes/pixels.js'
import type { Scene } from '../../scenes/scene.js'
import { PipelineConfigError } from '../../src/errors.js'
import { checkSeed } from '../../scenes/splits.js'

const dirs: string[] = []
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'evflow-scenes-'))
  dirs.push(d)
  return d
}
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })))

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex')

function hashDir(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir)
      .sort()
      .map((f) => [f, sha256(readFileSync(join(dir, f)))]),
  )
}

async function readRows(path: string): Promise<Record<string, any>[]> {
  const buf = readFileSync(path)
  const file = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
  return parquetReadObjects({ file, utf8: false })
}

describe('generate', () => {
  const cases: Omit<GenerateOptions, 'out'>[] = [
    { split: 'val', kind: 'caption', seed: 2_000_123, rows: 40, shardRows: 16, rowGroupSize: 8 },
    { split: 'test', kind: 'vqa', seed: 3_000_123, rows: 21, rowGroupSize: 8 },
    { split: 'train', kind: 'video', seed: 1_000_123, rows: 10, rowGroupSize: 4 },
  ]

  it.each(cases)('writes byte-identical files for the same options, whatever the concurrency ($kind)', async (c) => {
    const a = tempDir()
    const b = tempDir()
    await generate({ ...c, out: a, concurrency: 1 })
    await generate({ ...c, out: b, concurrency: 16 })
    const ha = hashDir(a)
    expect(Object.keys(ha)).toContain('vocab.txt')
    expect(hashDir(b)).toEqual(ha)
  })

  it('pins the text of a fixed seed (captions, questions, answers, scenes), independent of the machine', async () => {
    const text = [0, 1, 2, 3, 4, 5, 6, 7]
      .flatMap((u) => [...planUnit('val', 'caption', 2_000_000, u), ...planUnit('test', 'video', 3_000_000, u)])
      .map((r) => JSON.stringify([r.id, r.caption, r.question, r.answer, r.qa, r.scene]))
      .join('\n')
    // changes when the grammar, the sampling or the PRNG changes: regenerate the fixtures then
    expect(sha256(text)).toBe('89b118d54af91194929557a7b45d58baa69555a2faa7d500b4d1fdf811d11526')
  })

  it('splits shards, writes row groups, the training export and a manifest', async () => {
    const out = tempDir()
    const result = await generate({ split: 'val', seed: 2_000_001, rows: 40, out, shardRows: 16, rowGroupSize: 8, name: 'x' })
    expect(result.rows).toBe(40)
    expect(result.parquet).toEqual(['x-00000-of-00003.parquet', 'x-00001-of-00003.parquet', 'x-00002-of-00003.parquet'])
    expect(readdirSync(out).sort()).toEqual([...result.parquet, 'vocab.txt', 'x.images.npy', 'x.jsonl', 'x.manifest.json'].sort())

    const rows: Record<string, any>[] = []
    for (const [i, name] of result.parquet.entries()) {
      const buf = readFileSync(join(out, name))
      const meta = parquetMetadata(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength))
      expect(meta.created_by).toBe('evflow scenes generator')
      expect(meta.row_groups.map((g) => Number(g.num_rows))).toEqual(i < 2 ? [8, 8] : [8])
      const kv = JSON.parse(meta.key_value_metadata!.find((k) => k.key === 'evflow.scenes')!.value!)
      expect(kv).toMatchObject({ split: 'val', kind: 'caption', seed: 2_000_001, shard: i, shards: 3, first_row: i * 16 })
      rows.push(...(await readRows(join(out, name))))
    }
    expect(rows.map((r) => r.id)).toEqual(Array.from({ length: 40 }, (_, u) => `val-caption-2000001-${String(u).padStart(7, '0')}`))

    const npy = readFileSync(join(out, 'x.images.npy'))
    const header = parseNpyHeader(npy)
    expect(header).toMatchObject({ descr: '|u1', shape: [40, 64, 64, 3] })
    expect(npy.byteLength).toBe(header.dataOffset + 40 * 64 * 64 * 3)
    expect(header.dataOffset % 64).toBe(0)

    const lines = readFileSync(join(out, 'x.jsonl'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))
    expect(lines).toHaveLength(40)
    for (const i of [0, 17, 39]) {
      const row = rows[i]
      expect(lines[i]).toMatchObject({ id: row.id, caption: row.caption, question: row.question, answer: row.answer })
      expect(lines[i].scene).toEqual(row.scene)
      const qa = lines[i].qa as { question: string; answer: string }[]
      expect(qa).toContainEqual(expect.objectContaining({ question: row.question, answer: row.answer }))
      // the export's pixels are resizeForModel of the stored image
      const pixels = npy.subarray(header.dataOffset + i * 12288, header.dataOffset + (i + 1) * 12288)
      expect(Buffer.compare(pixels, await resizeForModel(row.image))).toBe(0)
    }
    const manifest = JSON.parse(readFileSync(join(out, 'x.manifest.json'), 'utf8'))
    expect(manifest.pixels).toEqual({ file: 'x.images.npy', dtype: 'uint8', shape: [40, 64, 64, 3], layout: 'NHWC' })
  })

  it('writes vqa rows with several questions per image and video rows as list<binary> DuckDB reads', async () => {
    const out = tempDir()
    await generate({ split: 'test', kind: 'vqa', seed: 3_000_002, rows: 9, out })
    await generate({ split: 'test', kind: 'video', seed: 3_000_002, rows: 6, out })
    const vqa = await readRows(join(out, 'test-vqa.parquet'))
    expect(vqa).toHaveLength(9)
    expect(new Set(vqa.map((r) => r.id)).size).toBe(9)
    expect(vqa.filter((r) => r.image_id === vqa[0].image_id)).toHaveLength(VQA_PER_IMAGE)
    for (const r of vqa) expect(answerQuestion(r.scene as Scene, r.question)).toBe(r.answer)

    const video = await readRows(join(out, 'test-video.parquet'))
    const frames = readFileSync(join(out, 'test-video.frames.npy'))
    expect(parseNpyHeader(frames).shape).toEqual([6, 8, 64, 64, 3])
    const db = await DuckDBInstance.create(':memory:')
    const conn = await db.connect()
    try {
      const file = join(out, 'test-video.parquet').replace(/'/g, "''")
      const reader = await conn.runAndReadAll(
        `select id, typeof(frames) as t, len(frames) as n, octet_length(frames[1]) as b, scene->>'$.frames' as f, caption from '${file}'`,
      )
      const got = reader.getRowObjectsJS()
      expect(got).toHaveLength(6)
      for (const [i, row] of got.entries()) {
        expect(row.t).toBe('BLOB[]')
        expect(Number(row.n)).toBe(video[i].frames.length)
        expect(Number(row.n)).toBe(Number(row.f))
        expect(Number(row.b)).toBe(video[i].frames[0].byteLength)
        expect(row.caption).toBe(captionOf(video[i].scene))
      }
      const img = join(out, 'test-vqa.parquet').replace(/'/g, "''")
      const types = (await conn.runAndReadAll(`select typeof(image) t, typeof(scene) s from '${img}' limit 1`)).getRowObjectsJS()
      expect(types).toEqual([{ t: 'BLOB', s: 'JSON' }])
    } finally {
      conn.closeSync()
    }
  })
})

describe('splits', () => {
  it('refuses a seed of another split', () => {
    expect(() => checkSeed('test', 1_000_000)).toThrow(PipelineConfigError)
    expect(() => checkSeed('test', 1_000_000)).toThrow(/belongs to the train split; test seeds are 3000000-3999999/)
    expect(() => checkSeed('train', 5)).toThrow(/belongs to no split/)
    expect(() => checkSeed('val', 2_999_999)).not.toThrow()
  })

  it('the CLI exits 2 on a bad seed and writes nothing', async () => {
    const out = join(tempDir(), 'never')
    const errors: string[] = []
    const original = console.error
    console.error = (m: string) => errors.push(m)
    try {
      const code = await main(['node', 'cli', '--split', 'test', '--seed', '1000000', '--rows', '4', '--out', out])
      expect(code).toBe(2)
    } finally {
      console.error = original
    }
    expect(errors.join('\n')).toMatch(/seed: 1000000 belongs to the train split/)
    expect(() => readdirSync(out)).toThrow()
  })

  it('names shards', () => {
    expect(shardNames('val', 256, 4096)).toEqual(['val.parquet'])
    expect(shardNames('train', 8193, 4096)).toEqual([
      'train-00000-of-00003.parquet',
      'train-00001-of-00003.parquet',
      'train-00002-of-00003.parquet',
    ])
  })
})
