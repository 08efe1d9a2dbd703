/**
 * `ParquetReader`: parser threads with a watchdog. A parse that overruns its time budget is abandoned and
 * its thread replaced (the reader goes on working); one that exceeds its memory budget kills its thread,
 * not this process; closing the reader abandons a stuck parse at once; row counts come from page headers.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { PipelineConfigError, ShardReadError } from '../../src/errors.js'
import { ParquetReader } from '../../src/parquet/reader.js'
import * as img from '../helpers/images.js'
import { imageShardBuffer } from '../helpers/shards.js'
import { tempDir } from '../helpers/util.js'
import { FIXTURE_SHARDS, byte3057, editFooter, fixture, loopingShard, memoryBombShard, withRowGroupRows } from './hostile.js'

let dir: string
let cleanup: () => void
let loop: string
let bomb: string

beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-reader-'))
  const images = await Promise.all(Array.from({ length: 4 }, (_, i) => img.png(8 + i, 8, i)))
  loop = join(dir, 'loop.parquet')
  writeFileSync(loop, loopingShard(images))
  bomb = join(dir, 'bomb.parquet')
  writeFileSync(bomb, memoryBombShard(images))
})
afterAll(() => cleanup())

const write = (name: string, bytes: Uint8Array) => {
  const path = join(dir, name)
  writeFileSync(path, bytes)
  return path
}

describe('ParquetReader', () => {
  it('opens a shard: row counts, columns and fingerprint base, from a parser thread', async () => {
    const reader = new ParquetReader()
    try {
      const source = await reader.open(join(FIXTURE_SHARDS, 'part-00002.parquet'))
      expect(source.rowGroups).toEqual([
        { rows: 8, claimed: 8 },
        { rows: 8, claimed: 8 },
        { rows: 8, claimed: 8 },
      ])
      expect(source.columns.map((c) => c.name)).toEqual(['id', 'image'])
      expect(source.footerHash).toMatch(/^[0-9a-f]{64}$/)
      const block = await reader.read(source, { rowGroup: 1, start: 2, end: 5, columns: ['id', 'image'], image: { column: 'image', layout: 'hf-struct' } })
      expect(block.rows).toBe(3)
      expect(block.values.id).toHaveLength(3)
      await source.close()
    } finally {
      await reader.close()
    }
  })

  it('establishes row counts from page headers when the footer lies', async () => {
    const reader = new ParquetReader()
    try {
      const inflated = await reader.open(write('inflated.parquet', withRowGroupRows(fixture('part-00002.parquet'), 0, 2n ** 40n)))
      expect(inflated.rowGroups[0]).toMatchObject({ rows: 8, claimed: 2 ** 40, problem: expect.stringContaining('the footer claims 1099511627776 rows, its pages hold 8') })
      expect(inflated.rowGroups[1]).toEqual({ rows: 8, claimed: 8 })
      await inflated.close()
      const header = await reader.open(write('p3057.parquet', byte3057()))
      expect(header.rowGroups[1]).toMatchObject({ rows: 8, claimed: 8, columns: { id: expect.stringMatching(/^column id: page 0 at byte 3046: invalid data page v2 header/) } })
      expect(header.rowGroups[1].problem).toBeUndefined()
      await header.close()
      // A column chunk pointing past the end of the file: that column is damaged, the others vote.
      const offset = await reader.open(
        write('offset.parquet', editFooter(fixture('part-00002.parquet'), (f) => (f.field_4[2].field_1[0].field_3.field_9 = 10n ** 9n))),
      )
      expect(offset.rowGroups[2]).toMatchObject({ rows: 8, columns: { id: expect.stringContaining('lie outside the file') } })
      await offset.close()
    } finally {
      await reader.close()
    }
  })

  it('a parse past its time budget fails with reason timeout; the thread is replaced and the reader goes on', async () => {
    const reader = new ParquetReader({ parsers: 1, readTimeoutMs: 800 })
    try {
      const source = await reader.open(loop)
      const started = Date.now()
      const error = await reader.read(source, { rowGroup: 0, start: 0, end: 100, columns: ['id'] }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(ShardReadError)
      expect((error as ShardReadError).reason).toBe('timeout')
      expect((error as ShardReadError).message).toMatch(/\(row group 0\): timeout: the row group was not parsed within 0\.8 s/)
      expect(Date.now() - started).toBeLessThan(10_000)
      expect(reader.incidents).toEqual([expect.objectContaining({ reason: 'timeout', rowGroup: 0 })])
      await source.close()
      const good = await reader.open(join(FIXTURE_SHARDS, 'part-00000.parquet'))
      const block = await reader.read(good, { rowGroup: 0, start: 0, end: good.rowGroups[0].rows, columns: ['id'] })
      expect(block.rows).toBe(good.rowGroups[0].rows)
      await good.close()
    } finally {
      await reader.close()
    }
  })

  it('a parse past its memory budget fails its row group (reason memory or timeout), not this process', async () => {
    const reader = new ParquetReader({ parsers: 1, readMemoryMb: 64, readTimeoutMs: 20_000 })
    try {
      const source = await reader.open(bomb)
      const error = await reader.read(source, { rowGroup: 0, start: 0, end: 100, columns: ['id'] }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(ShardReadError)
      expect(['memory', 'timeout']).toContain((error as ShardReadError).reason)
      await source.close()
    } finally {
      await reader.close()
    }
  })

  it('a row group whose pages claim more than the memory budget is not decoded', async () => {
    const big = Array.from({ length: 24 }, (_, i) => new Uint8Array(1024 * 1024).fill(i))
    const path = write('big.parquet', new Uint8Array(imageShardBuffer(big.map((image, i) => ({ id: `r${i}`, image })), 24)))
    const reader = new ParquetReader({ parsers: 1, readMemoryMb: 16 })
    try {
      const source = await reader.open(path)
      const error = await reader.read(source, { rowGroup: 0, start: 0, end: 24, columns: ['image'], image: { column: 'image', layout: 'binary' } }).catch((e: unknown) => e)
      expect((error as ShardReadError).reason).toBe('memory')
      expect((error as ShardReadError).message).toMatch(/memory: decoding needs about \d+(\.\d)? MiB, more than the read memory budget of 16 MiB/)
      const ids = await reader.read(source, { rowGroup: 0, start: 0, end: 24, columns: ['id'] })
      expect(ids.values.id).toHaveLength(24)
      await source.close()
    } finally {
      await reader.close()
    }
  })

  it('close() abandons a stuck parse at once', async () => {
    const reader = new ParquetReader({ parsers: 1, readTimeoutMs: 60_000 })
    const source = await reader.open(loop)
    const pending = reader.read(source, { rowGroup: 0, start: 0, end: 100, columns: ['id'] }).catch((e: unknown) => e)
    await new Promise((r) => setTimeout(r, 300))
    const started = Date.now()
    await reader.close()
    expect(await pending).toBeInstanceOf(ShardReadError)
    expect(Date.now() - started).toBeLessThan(3000)
    await source.close()
    await expect(reader.open(loop)).rejects.toThrow(/closed/)
  })

  it('a footer past its time budget fails the open with reason timeout', async () => {
    const reader = new ParquetReader({ parsers: 1, readTimeoutMs: 300, debugSpin: { stage: 'inspect', match: 'part-00001', ms: 60_000 } })
    try {
      const error = await reader.open(join(FIXTURE_SHARDS, 'part-00001.parquet')).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(ShardReadError)
      expect((error as ShardReadError).message).toMatch(/timeout: the footer was not parsed within 0\.3 s/)
      const other = await reader.open(join(FIXTURE_SHARDS, 'part-00000.parquet'))
      await other.close()
    } finally {
      await reader.close()
    }
  })

  it('validates its options before starting anything', () => {
    expect(() => new ParquetReader({ parsers: 0 })).toThrow(PipelineConfigError)
    expect(() => new ParquetReader({ readTimeoutMs: 0 })).toThrow(/readTimeoutMs/)
    expect(() => new ParquetReader({ readMemoryMb: 8 })).toThrow(/readMemoryMb/)
  })
})
