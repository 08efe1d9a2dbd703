import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { EMPTY, Subject, from, throwError } from 'rxjs'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

import { writeShards, type OutputColumn } from '../../operators/write-shards.js'
import { InFlight } from '../../src/engine/in-flight.js'
import { OutputLockedError, PipelineConfigError, ShardWriteError } from '../../src/errors.js'
import type { ErrorRecord, ImageRow, ShardInfo, ShardNotice } from '../../src/records.js'
import { duckQuery } from '../helpers/duckdb.js'
import { imageRow, shardInfo } from '../helpers/records.js'
import { collect, tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
beforeEach(() => ({ dir, cleanup } = tempDir()))
afterEach(() => cleanup())

const keptInfo = (name: string, rows: number): ShardInfo => ({
  ...shardInfo(name, rows),
  kept: [{ name: 'id', element: { name: 'id', type: 'BYTE_ARRAY', converted_type: 'UTF8' } }],
})

function rowsFor(info: ShardInfo): ImageRow[] {
  return Array.from({ length: info.rows }, (_, i) => ({ ...imageRow(i, new Uint8Array([i])), source: info, key: { shard: info.name, rowGroup: 0, row: i }, kept: { id: `${info.name}-${i}` } }))
}

const columns: OutputColumn<ImageRow>[] = [
  { name: 'first_byte', type: 'INT32', value: (r) => r.image![0] },
  { name: 'label', type: 'STRING', value: (r) => `row ${r.key.row}` },
  { name: 'embedding', type: 'FLOAT_LIST', value: (r) => [r.key.row, 0.5] },
]

describe('writeShards', () => {
  it('emits nothing and writes nothing for an empty source', async () => {
    expect(await collect(EMPTY.pipe(writeShards(dir)))).toEqual([])
    expect(readdirSync(dir).filter((f) => f.endsWith('.parquet'))).toEqual([])
  })

  it('writes one shard from one row, readable by DuckDB', async () => {
    const info = keptInfo('one', 1)
    const commits = await collect(from(rowsFor(info)).pipe(writeShards(dir, { columns })))
    expect(commits).toEqual([expect.objectContaining({ status: 'committed', shard: 'one', rowsIn: 1, rowsOk: 1, rowsError: 0 })])
    const rows = await duckQuery(`select * from read_parquet('${join(dir, 'one.parquet')}')`)
    expect(rows).toEqual([{ id: 'one-0', status: 'ok', error: null, error_code: null, first_byte: 0, label: 'row 0', embedding: [0, 0.5] }])
  })

  it('writes many rows of several shards in input order whatever the arrival order, ok and error rows', async () => {
    const a = keptInfo('a', 2500)
    const b = keptInfo('b', 7)
    const records: (ImageRow | ErrorRecord)[] = [...rowsFor(a), ...rowsFor(b)].map((r) =>
      r.key.row % 5 === 0 ? { ...r, kind: 'error', code: 'corrupt', stage: 'test', message: `bad ${r.key.row}` } : r,
    )
    // Deterministic shuffle within a window, as concurrent stages finish out of order.
    const shuffled = records.map((r, i) => ({ r, k: (i * 7919) % 97 + Math.floor(i / 97) * 97 })).sort((x, y) => x.k - y.k).map((x) => x.r)
    const commits = await collect(from(shuffled).pipe(writeShards(dir, { columns, rowGroupSize: 1000, configHash: 'h1' })))
    expect(commits.map((c) => c.shard).sort()).toEqual(['a', 'b'])
    const out = await duckQuery(`select id, status, error, error_code, first_byte, label from read_parquet('${join(dir, 'a.parquet')}')`)
    expect(out).toHaveLength(2500)
    out.forEach((row, i) => {
      expect(row.id).toBe(`a-${i}`)
      if (i % 5 === 0) expect(row).toMatchObject({ status: 'error', error: `bad ${i}`, error_code: 'corrupt', first_byte: null, label: null })
      else expect(row).toMatchObject({ status: 'ok', error: null, first_byte: i % 256, label: `row ${i}` })
    })
    const record = JSON.parse(readFileSync(join(dir, '_evflow', 'commits', 'a.json'), 'utf8'))
    expect(record).toMatchObject({ rowsIn: 2500, rowsOk: 2000, rowsError: 500, configHash: 'h1', output: 'a.parquet' })
    expect(readdirSync(join(dir, '_evflow', 'tmp'))).toEqual([])
  })

  it('commits an empty output shard for an empty input, and reports unreadable shards as failed', async () => {
    const empty: ShardNotice = { kind: 'shard-notice', source: keptInfo('empty', 0) }
    const broken: ShardNotice = { kind: 'shard-notice', source: keptInfo('broken', 0), error: { name: 'ShardReadError', message: 'bad footer' } }
    const commits = await collect(from([empty, broken]).pipe(writeShards(dir, { columns })))
    expect(commits).toHaveLength(2)
    expect(commits).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ status: 'committed', shard: 'empty', rowsIn: 0 }),
        { status: 'failed', shard: 'broken', input: '/data/broken.parquet', error: 'bad footer' },
      ]),
    )
    expect(await duckQuery(`select count(*)::int as n from read_parquet('${join(dir, 'empty.parquet')}')`)).toEqual([{ n: 0 }])
    expect(existsSync(join(dir, 'broken.parquet'))).toBe(false)
  })

  it('fails, leaving nothing visible, when the source completes before a shard is complete', async () => {
    const info = keptInfo('partial', 5)
    await expect(collect(from(rowsFor(info).slice(0, 3)).pipe(writeShards(dir, { columns })))).rejects.toThrow(ShardWriteError)
    expect(existsSync(join(dir, 'partial.parquet'))).toBe(false)
    expect(readdirSync(join(dir, '_evflow', 'tmp'))).toEqual([])
  })

  it('rejects a duplicate row', async () => {
    const rows = rowsFor(keptInfo('dup', 3))
    await expect(collect(from([rows[0], rows[0]]).pipe(writeShards(dir)))).rejects.toThrow(/duplicate row 0/)
  })

  it('deletes shards in progress on an upstream error and on unsubscribe', async () => {
    const info = keptInfo('cut', 4)
    const source = new Subject<ImageRow>()
    const failing = collect(source.pipe(writeShards(dir, { rowGroupSize: 1 })))
    for (const r of rowsFor(info).slice(0, 3)) source.next(r)
    await new Promise((r) => setTimeout(r, 50))
    source.error(new Error('upstream died'))
    await expect(failing).rejects.toThrow('upstream died')
    expect(readdirSync(join(dir, '_evflow', 'tmp'))).toEqual([])

    const source2 = new Subject<ImageRow>()
    const subscription = source2.pipe(writeShards(dir, { rowGroupSize: 1 })).subscribe()
    for (const r of rowsFor(info).slice(0, 3)) source2.next(r)
    await new Promise((r) => setTimeout(r, 50))
    subscription.unsubscribe()
    expect(source2.observed).toBe(false)
    expect(readdirSync(join(dir, '_evflow', 'tmp'))).toEqual([])
    expect(existsSync(join(dir, 'cut.parquet'))).toBe(false)
    expect(existsSync(join(dir, '_evflow', 'lock'))).toBe(false)
  })

  it('forwards an upstream error', async () => {
    await expect(collect(throwError(() => new Error('boom')).pipe(writeShards(dir)))).rejects.toThrow('boom')
  })

  it('refuses a folder another live run holds, and takes over a dead run’s lock', async () => {
    const source = new Subject<ImageRow>()
    const first = source.pipe(writeShards(dir)).subscribe()
    await expect(collect(from(rowsFor(keptInfo('x', 1))).pipe(writeShards(dir)))).rejects.toThrow(OutputLockedError)
    first.unsubscribe()
    const { writeFileSync } = await import('node:fs')
    const { hostname } = await import('node:os')
    writeFileSync(join(dir, '_evflow', 'lock'), JSON.stringify({ host: hostname(), pid: 2 ** 22 + 12345, startedAt: 'then' }))
    const commits = await collect(from(rowsFor(keptInfo('x', 1))).pipe(writeShards(dir)))
    expect(commits).toHaveLength(1)
  })

  it('releases in-flight rows once written', async () => {
    const inFlight = new InFlight({ maxRecords: 8 })
    const rows = rowsFor(keptInfo('flight', 20))
    for (const r of rows.slice(0, 8)) await inFlight.acquire(r.key, 10)
    const source = new Subject<ImageRow>()
    const done = collect(source.pipe(writeShards(dir, { inFlight })))
    for (const r of rows.slice(0, 8)) source.next(r)
    await new Promise((r) => setTimeout(r, 50))
    expect(inFlight.inFlightRecords).toBe(0)
    for (const r of rows.slice(8)) source.next(r)
    source.complete()
    expect(await done).toHaveLength(1)
  })

  it('validates options at once', () => {
    expect(() => writeShards(dir, { rowGroupSize: 0 })).toThrow(PipelineConfigError)
    expect(() => writeShards('')).toThrow(PipelineConfigError)
  })
})
