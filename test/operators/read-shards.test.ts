import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { take } from 'rxjs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { readShards, type ShardRecord } from '../../operators/read-shards.js'
import { InFlight } from '../../src/engine/in-flight.js'
import { InputNotFoundError, PipelineConfigError } from '../../src/errors.js'
import type { ErrorRecord, ImageRow, ShardNotice } from '../../src/records.js'
import * as img from '../helpers/images.js'
import { hfShardBuffer, imageShardBuffer, writeBuffer } from '../helpers/shards.js'
import { loopingShard } from '../parquet/hostile.js'
import { collect, tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void

beforeAll(async () => {
  ;({ dir, cleanup } = tempDir())
  const rows = await Promise.all(Array.from({ length: 25 }, async (_, i) => ({ id: `a-${i}`, image: i === 3 ? null : await img.png(8, 8, i), url: `u${i}` })))
  writeBuffer(join(dir, 'a.parquet'), imageShardBuffer(rows, 10))
  writeBuffer(join(dir, 'sub', 'b.parquet'), imageShardBuffer(rows.slice(0, 5), 10))
  writeBuffer(join(dir, 'hf.parquet'), hfShardBuffer([{ id: 'h0', bytes: await img.png(8, 8, 1), path: 'x.png' }, { id: 'h1', bytes: null, path: 'y.png' }]))
  writeBuffer(join(dir, 'empty', 'e.parquet'), imageShardBuffer([], 10))
  writeFileSync(join(dir, 'broken.parquet'), 'PAR1 this is not parquet PAR1')
})
afterAll(() => cleanup())

const rowsOf = (records: ShardRecord[]) => records.filter((r): r is ImageRow => r.kind === 'image-row')

describe('readShards', () => {
  it('reads one file: one ImageRow per row, in order, with keys, ids and bytes', async () => {
    const out = await collect(readShards(join(dir, 'a.parquet')))
    expect(out).toHaveLength(25)
    const rows = rowsOf(out)
    expect(rows.map((r) => r.key.row)).toEqual([...Array(25).keys()])
    expect(rows[12].key).toEqual({ shard: 'a', rowGroup: 1, row: 12 })
    expect(rows[12].id).toBe('a-12')
    expect(rows[12].image).toBeInstanceOf(Uint8Array)
    expect(rows[3].image).toBeNull()
    expect(rows[0].source).toMatchObject({ name: 'a', rows: 25, rowGroups: 3, imageColumn: 'image', idColumn: 'id' })
  })

  it('reads folders recursively and globs, sorted, with unique output names', async () => {
    const fromFolder = await collect(readShards(dir, { keep: ['url'] }))
    const names = [...new Set(fromFolder.map((r) => r.source.name))]
    expect(names.sort()).toEqual(['a', 'b', 'broken', 'e', 'hf'])
    const glob = await collect(readShards(join(dir, '**/b.parquet')))
    expect(rowsOf(glob)).toHaveLength(5)
    expect(rowsOf(fromFolder).find((r) => r.source.name === 'a')?.kept).toEqual({ id: 'a-0', url: 'u0' })
  })

  it('reads the Hugging Face {bytes, path} layout', async () => {
    const rows = rowsOf(await collect(readShards(join(dir, 'hf.parquet'))))
    expect(rows[0].image).toBeInstanceOf(Uint8Array)
    expect(rows[0].imagePath).toBe('x.png')
    expect(rows[1].image).toBeNull()
    expect(rows[1].imagePath).toBe('y.png')
  })

  it('selects a row range, row groups, and a run-wide limit', async () => {
    const range = rowsOf(await collect(readShards(join(dir, 'a.parquet'), { rows: [5, 15] })))
    expect(range.map((r) => r.key.row)).toEqual([5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    expect(range[0].source.name).toBe('a.rows-5-15')
    const groups = rowsOf(await collect(readShards(join(dir, 'a.parquet'), { rowGroups: [1, 3] })))
    expect(groups.map((r) => r.key.row)).toEqual([...Array(15).keys()].map((i) => i + 10))
    const limited = rowsOf(await collect(readShards(dir, { limit: 7 })))
    expect(limited).toHaveLength(7)
  })

  it('gives a ShardNotice for an empty shard and for an unreadable file, never an error', async () => {
    const empty = await collect(readShards(join(dir, 'empty')))
    expect(empty).toEqual([expect.objectContaining({ kind: 'shard-notice' })])
    expect((empty[0] as ShardNotice).error).toBeUndefined()
    const broken = (await collect(readShards(join(dir, 'broken.parquet')))) as ShardNotice[]
    expect(broken).toHaveLength(1)
    expect(broken[0].error?.name).toBe('ShardReadError')
    expect(broken[0].error?.message).toContain('broken.parquet')
  })

  it('turns every row into a `missing` error when the image column is absent', async () => {
    const out = (await collect(readShards(join(dir, 'a.parquet'), { imageColumn: 'nope' }))) as ErrorRecord[]
    expect(out).toHaveLength(25)
    expect(out.every((r) => r.kind === 'error' && r.code === 'missing')).toBe(true)
    expect(out[0].message).toContain("no column 'nope'")
  })

  it('throws InputNotFoundError for a missing input and PipelineConfigError for bad ranges', async () => {
    await expect(collect(readShards(join(dir, 'nope.parquet')))).rejects.toThrow(InputNotFoundError)
    expect(() => readShards(dir, { rows: [5, 2] })).toThrow(PipelineConfigError)
  })

  it('holds at most maxRecords in flight until the sink releases', async () => {
    const inFlight = new InFlight({ maxRecords: 4 })
    const seen: ImageRow[] = []
    const subscription = readShards(join(dir, 'a.parquet'), { inFlight }).subscribe((r) => seen.push(r as ImageRow))
    const until = async (n: number) => {
      for (let i = 0; i < 500 && seen.length < n; i++) await new Promise((r) => setTimeout(r, 10))
    }
    await until(4)
    await new Promise((r) => setTimeout(r, 100))
    expect(seen).toHaveLength(4)
    inFlight.release(seen[0].key)
    await until(5)
    await new Promise((r) => setTimeout(r, 50))
    expect(seen).toHaveLength(5)
    subscription.unsubscribe()
  })

  it('a shard whose parsing hangs does not hold back the others: their rows all come before its timed-out rows', async () => {
    const folder = join(dir, 'lanes')
    const images = await Promise.all(Array.from({ length: 3 }, (_, i) => img.png(8, 8, i)))
    writeBuffer(join(folder, 'a-hang.parquet'), loopingShard(images).buffer as ArrayBuffer)
    const rows = images.map((image, i) => ({ id: `r${i}`, image }))
    writeBuffer(join(folder, 'b.parquet'), imageShardBuffer(rows, 2))
    writeBuffer(join(folder, 'c.parquet'), imageShardBuffer(rows, 2))
    const out = await collect(readShards(folder, { readTimeoutMs: 4000 }))
    const hang = out.filter((r) => r.source.name === 'a-hang') as ErrorRecord[]
    expect(hang).toHaveLength(100)
    expect(hang.every((r) => r.code === 'shard-read' && r.message.includes('timeout: the row group was not parsed within 4 s'))).toBe(true)
    const firstHang = out.findIndex((r) => r.source.name === 'a-hang')
    const good = out.map((r, i) => (r.source.name === 'a-hang' ? -1 : i)).filter((i) => i >= 0)
    expect(good).toHaveLength(6)
    expect(Math.max(...good)).toBeLessThan(firstHang)
    // One lane: strictly in plan order, the hanging shard first.
    const serial = await collect(readShards(folder, { readTimeoutMs: 1000, concurrency: 1 }))
    expect(serial.map((r) => r.source.name)).toEqual([...Array(100).fill('a-hang'), ...Array(3).fill('b'), ...Array(3).fill('c')])
    expect(() => readShards(folder, { concurrency: 0 })).toThrow(PipelineConfigError)
    expect(() => readShards(folder, { readTimeoutMs: -1 })).toThrow(PipelineConfigError)
  })

  it('stops reading on early unsubscribe', async () => {
    const out = await collect(readShards(dir).pipe(take(3)))
    expect(out).toHaveLength(3)
  })
})
