/**
 * The time series runs record for the report: bounded whatever the run's length (thinned as it grows,
 * peaks kept), concurrent runs of a worker summed, nothing recorded for a run with nothing to do, no write
 * through a symbolic link, and a reader that skips what it cannot parse.
 */
import { mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'

import type { ProgressState } from '../../../pipelines/run.js'
import type { StageSnapshot } from '../../../src/engine/metrics.js'
import { readSeries, SeriesRecorder, teeProgress, type SeriesPoint } from '../../../app/report/series.js'
import { tempDir } from '../../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-series-')))
afterAll(() => cleanup?.())
afterEach(() => vi.useRealTimers())

let outNo = 0
function freshOut(): string {
  const out = join(dir, `out-${++outNo}`)
  mkdirSync(join(out, '_evflow'), { recursive: true })
  return out
}

function stage(name: string, done: number, depth: number, extra: Record<string, number> = {}): StageSnapshot {
  return { stage: name, recordsIn: done + depth, recordsOut: done, errors: 0, batches: 0, busyMs: done * 2, queueDepth: depth, maxQueueDepth: depth, extra }
}

function state(rows: number, total: number, depth = 0): ProgressState {
  return {
    rowsTotal: total,
    rowsDone: rows,
    shardsTotal: 1,
    shardsDone: 0,
    shardsSkipped: 0,
    elapsedS: 0,
    rowsPerS: 0,
    stages: [stage('decodeImages', rows, depth), stage('writeShards', rows, 0, { tokens: rows * 3 })],
  }
}

const seriesFiles = (out: string) => readdirSync(join(out, '_evflow', 'series')).filter((f) => f.endsWith('.jsonl'))

describe('SeriesRecorder', () => {
  it('keeps a long run within a fixed number of points, thinning as it grows and keeping queue peaks', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    const sizes: number[] = []
    for (const updates of [400, 20_000]) {
      const out = freshOut()
      vi.setSystemTime(new Date('2026-01-01T00:00:00Z'))
      const recorder = new SeriesRecorder(out, { source: 'run', stepMs: 1000, maxPoints: 64 })
      const run = recorder.track()
      run.start!(state(0, updates * 10), { pipeline: 'caption' })
      for (let i = 1; i <= updates; i++) {
        vi.setSystemTime(Date.parse('2026-01-01T00:00:00Z') + i * 1000)
        // One spike of queue depth in the middle of the run.
        run.update!(state(i * 10, updates * 10, i === Math.floor(updates / 2) ? 999 : 3))
        if (i % 100 === 0) await recorder.flush()
      }
      await run.done()
      const [file] = seriesFiles(out)
      sizes.push(statSync(join(out, '_evflow', 'series', file)).size)
      const { files } = await readSeries(out)
      expect(files).toHaveLength(1)
      const points = files[0].points as SeriesPoint[]
      expect(points.length).toBeLessThanOrEqual(65)
      expect(points.at(-1)!.rows).toBe(updates * 10)
      expect(points.at(-1)!.stages.writeShards[5]).toEqual({ tokens: updates * 30 })
      expect(Math.max(...points.map((p) => p.stages.decodeImages[4]))).toBe(999)
      expect(points.map((p) => p.t)).toEqual([...points.map((p) => p.t)].sort((a, b) => a - b))
      expect(files[0].header).toMatchObject({ type: 'header', source: 'run', pipeline: 'caption', config: { pipeline: 'caption' } })
      if (updates === 20_000) expect(recorder.stepMs).toBeGreaterThanOrEqual(256_000)
    }
    // 50 times the updates, about the same file.
    expect(sizes[1]).toBeLessThan(sizes[0] * 1.5)
    expect(sizes[1]).toBeLessThan(64 * 1024)
  })

  it("sums a worker's concurrent shard runs and keeps finished ones in the totals", async () => {
    const out = freshOut()
    const recorder = new SeriesRecorder(out, { source: 'worker', name: 'w1', stepMs: 0 })
    const a = recorder.track()
    const b = recorder.track()
    a.start!(state(0, 100), { pipeline: 'scan' })
    b.start!(state(0, 50), { pipeline: 'scan' })
    a.update!(state(40, 100, 5))
    b.update!(state(20, 50, 7))
    await a.done()
    b.update!(state(50, 50))
    await b.done()
    const { files } = await readSeries(out)
    expect(files[0].header).toMatchObject({ source: 'worker', name: 'w1' })
    const points = files[0].points
    expect(points.map((p) => p.rows)).toEqual([0, 0, 40, 60, 60, 90, 90])
    expect(Math.max(...points.map((p) => p.stages.decodeImages[4]))).toBe(12)
    expect(points.at(-1)!.total).toBe(150)
  })

  it('records nothing for a run with nothing to do, and forwards calls through teeProgress', async () => {
    const out = freshOut()
    const recorder = new SeriesRecorder(out, { source: 'run' })
    const run = recorder.track()
    const calls: string[] = []
    const sink = teeProgress(run, { start: () => calls.push('start'), update: () => calls.push('update') }, undefined)
    sink.start!(state(0, 0), {})
    sink.update!(state(0, 0))
    await run.done()
    expect(calls).toEqual(['start', 'update'])
    expect(readdirSync(join(out, '_evflow'))).toEqual([])
  })

  it('never writes through a symbolic link', async () => {
    const outside = join(dir, 'outside.txt')
    writeFileSync(outside, 'keep me\n')
    // A link planted at the series file's name is replaced, not followed.
    const out = freshOut()
    const recorder = new SeriesRecorder(out, { source: 'run', stepMs: 0 })
    mkdirSync(join(out, '_evflow', 'series'))
    symlinkSync(outside, recorder.path)
    const run = recorder.track()
    run.start!(state(0, 10), {})
    run.update!(state(5, 10))
    await run.done()
    expect(readFileSync(outside, 'utf8')).toBe('keep me\n')
    expect((await readSeries(out)).files[0].points.at(-1)!.rows).toBe(5)

    // A series folder that is a link: nothing written, one error reported.
    const out2 = freshOut()
    const elsewhere = join(dir, 'elsewhere')
    mkdirSync(elsewhere)
    symlinkSync(elsewhere, join(out2, '_evflow', 'series'))
    const errors: unknown[] = []
    const linked = new SeriesRecorder(out2, { source: 'run', stepMs: 0, onError: (e) => errors.push(e) })
    const run2 = linked.track()
    run2.start!(state(0, 10), {})
    run2.update!(state(5, 10))
    await run2.done()
    expect(readdirSync(elsewhere)).toEqual([])
    expect(errors).toHaveLength(1)
    expect(String(errors[0])).toMatch(/symbolic link/)
    expect((await readSeries(out2)).files).toEqual([])
  })

  it('reads series files, skipping lines and files it cannot parse', async () => {
    const out = freshOut()
    const series = join(out, '_evflow', 'series')
    mkdirSync(series)
    const header = { type: 'header', format: 1, source: 'run', name: 'h:1', startedAt: '2026-01-01T00:00:00.000Z', pipeline: 'scan', config: null, evflow: '0.1.0', machine: { host: 'h', platform: 'linux', arch: 'x64', cpus: 2, cpuModel: 'cpu', memoryMiB: 1024, node: 'v20' } }
    const point = (t: number, rows: number) => ({ type: 'point', t, rows, total: 10, shards: 0, rssMiB: 50, stages: {} })
    writeFileSync(join(series, 'a.jsonl'), [header, point(2, 5), 'not json', point(1, 1), { type: 'point' }].map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n') + '\n{"type":"poi')
    writeFileSync(join(series, 'b.jsonl'), `${JSON.stringify(point(1, 1))}\n`)
    writeFileSync(join(series, 'notes.txt'), 'ignored')
    const { files, skipped } = await readSeries(out)
    expect(files).toHaveLength(1)
    expect(files[0].points.map((p) => p.rows)).toEqual([1, 5])
    expect(skipped).toEqual(['b.jsonl'])
  })
})
