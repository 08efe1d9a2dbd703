/**
 * `ShardSink`, one output shard: the reorder buffer, row groups and the commit, without the operator
 * around it (which `test/operators/write-shards.test.ts` covers).
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'

import { ShardWriteError } from '../../src/errors.js'
import { ensureLayout, outputLayout, sha256File, type OutputLayout } from '../../src/parquet/commit.js'
import { ShardSink, type ShardSinkOptions } from '../../src/parquet/sink.js'
import type { ImageRow, ShardInfo } from '../../src/records.js'
import { duckQuery } from '../helpers/duckdb.js'
import { imageRow, shardInfo } from '../helpers/records.js'
import { tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
let layout: OutputLayout
beforeEach(() => {
  ;({ dir, cleanup } = tempDir('evflow-sink-'))
  layout = outputLayout(dir)
  ensureLayout(layout)
})
afterEach(() => cleanup())

const info = (name: string, rows: number, rowStart = 0): ShardInfo => ({ ...shardInfo(name, rows), rowStart, rowEnd: rowStart + rows })
const rows = (shard: ShardInfo): ImageRow[] =>
  Array.from({ length: shard.rows }, (_, i) => ({ ...imageRow(shard.rowStart + i, new Uint8Array([i]), shard), key: { shard: shard.name, rowGroup: 0, row: shard.rowStart + i } }))

function sink(shard: ShardInfo, extra: Partial<ShardSinkOptions<ImageRow>> = {}): { sink: ShardSink<ImageRow>; errors: unknown[]; buffered: number[] } {
  const errors: unknown[] = []
  const buffered: number[] = []
  const s = new ShardSink<ImageRow>({
    layout,
    info: shard,
    columns: [{ name: 'first', type: 'INT32', value: (r) => r.image![0] }],
    configHash: 'h',
    kv: [],
    createdBy: 'test',
    rowGroupSize: 3,
    onBuffered: (key) => buffered.push(key.row),
    onError: (e) => errors.push(e),
    ...extra,
  })
  return { sink: s, errors, buffered }
}

describe('ShardSink', () => {
  it('commits an empty shard at once: an empty file and its record', async () => {
    const { sink: s } = sink(info('empty', 0))
    expect(s.complete).toBe(true)
    const record = await s.commit()
    expect(record).toMatchObject({ shard: 'empty', rowsIn: 0, rowsOk: 0, rowsError: 0, output: 'empty.parquet' })
    expect(await duckQuery(`select count(*)::int as n from read_parquet('${join(dir, 'empty.parquet')}')`)).toEqual([{ n: 0 }])
  })

  it('appends rows in input order whatever the arrival order, releasing each as it is buffered', async () => {
    const shard = info('order', 7, 100)
    const { sink: s, buffered, errors } = sink(shard)
    const all = rows(shard)
    const arrival = [3, 0, 6, 1, 2, 5, 4]
    const completes = arrival.map((i) => s.push(i === 5 ? { ...all[i], kind: 'error', code: 'corrupt', stage: 't', message: 'bad' } as never : all[i]))
    expect(completes).toEqual([false, false, false, false, false, false, true])
    expect(buffered).toEqual([100, 101, 102, 103, 104, 105, 106])
    const record = await s.commit()
    expect(errors).toEqual([])
    expect(record).toMatchObject({ rowsIn: 7, rowsOk: 6, rowsError: 1, rowStart: 100, rowEnd: 107 })
    expect(record.outputSha256).toBe(await sha256File(join(dir, 'order.parquet')))
    const out = await duckQuery(`select status, first from read_parquet('${join(dir, 'order.parquet')}')`)
    expect(out.map((r) => r.first)).toEqual([0, 1, 2, 3, 4, null, 6])
    const groups = await duckQuery(`select count(distinct row_group_id)::int as n from parquet_metadata('${join(dir, 'order.parquet')}')`)
    expect(groups).toEqual([{ n: 3 }])
    expect(JSON.parse(readFileSync(layout.commit('order'), 'utf8'))).toEqual(record)
    expect(readdirSync(layout.tmpDir)).toEqual([])
  })

  it('refuses a row outside the shard or seen before', () => {
    const shard = info('strict', 3, 10)
    const { sink: s } = sink(shard)
    const all = rows(shard)
    s.push(all[1])
    expect(() => s.push(all[1])).toThrow(ShardWriteError)
    s.push(all[0])
    expect(() => s.push(all[0])).toThrow(/unexpected or duplicate row 10/)
    expect(() => s.push({ ...all[0], key: { ...all[0].key, row: 13 } })).toThrow(/unexpected or duplicate row 13/)
    expect(() => s.push({ ...all[0], key: { ...all[0].key, row: 9 } })).toThrow(ShardWriteError)
    s.abort()
  })

  it('refuses to commit before every row arrived', async () => {
    const shard = info('early', 2)
    const { sink: s } = sink(shard)
    s.push(rows(shard)[0])
    await expect(s.commit()).rejects.toThrow(/commit before every row arrived \(1 of 2\)/)
    s.abort()
  })

  it('abort deletes the temporary file, even one still being created', async () => {
    const shard = info('cut', 5)
    const first = sink(shard)
    for (const r of rows(shard).slice(0, 4)) first.sink.push(r)
    await new Promise((r) => setTimeout(r, 30))
    expect(readdirSync(layout.tmpDir)).toHaveLength(1)
    first.sink.abort()
    const second = sink(info('cut-at-once', 5))
    second.sink.abort()
    await new Promise((r) => setTimeout(r, 30))
    expect(readdirSync(layout.tmpDir)).toEqual([])
    expect(existsSync(join(dir, 'cut.parquet'))).toBe(false)
  })

  it('reports a failing file operation once through onError, and the commit rejects', async () => {
    rmSync(layout.tmpDir, { recursive: true })
    const shard = info('nowhere', 4)
    const { sink: s, errors } = sink(shard)
    for (const r of rows(shard)) s.push(r)
    await expect(s.commit()).rejects.toThrow(/nowhere.*cannot create/)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toBeInstanceOf(ShardWriteError)
  })
})
