import { EMPTY, Subject, of, throwError } from 'rxjs'
import { TestScheduler } from 'rxjs/testing'
import { describe, expect, it } from 'vitest'

import { batchRecords } from '../../operators/batch-records.js'
import { PipelineConfigError } from '../../src/errors.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { collect } from '../helpers/util.js'

function scheduler() {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected))
}

describe('batchRecords', () => {
  it('emits nothing for an empty source', async () => {
    expect(await collect(EMPTY.pipe(batchRecords({ maxSize: 4 })))).toEqual([])
  })

  it('emits one record as a batch of one on completion', async () => {
    expect(await collect(of(1).pipe(batchRecords({ maxSize: 4, maxWaitMs: 1000 })))).toEqual([[1]])
  })

  it('splits many records into full batches and a remainder, in order', async () => {
    const out = await collect(of(1, 2, 3, 4, 5, 6, 7).pipe(batchRecords({ maxSize: 3 })))
    expect(out).toEqual([[1, 2, 3], [4, 5, 6], [7]])
  })

  it('batches by weight (maxWeight, weigh): a record that would exceed it starts the next batch; a heavy one still goes alone', async () => {
    const out = await collect(of(1, 2, 3, 10, 1, 1, 4).pipe(batchRecords({ maxSize: 5, maxWeight: 6, weigh: (n) => n })))
    expect(out).toEqual([[1, 2, 3], [10], [1, 1, 4]])
    expect(await collect(of(1, 1, 1, 1).pipe(batchRecords({ maxSize: 3, maxWeight: 100, weigh: () => 1 })))).toEqual([[1, 1, 1], [1]])
    expect(() => batchRecords({ maxWeight: 0 })).toThrow(PipelineConfigError)
  })

  it('emits a full batch at once and a partial batch maxWaitMs after its first record (marbles)', () => {
    scheduler().run(({ cold, expectObservable }) => {
      const source = cold('a b c 20ms d 3ms e 100ms |')
      // a, b, c fill a batch at frame 2; d arrives at frame 23 and its timer fires at 33, e joined it at 27.
      const expected = '--x 30ms y 94ms |'
      expectObservable(source.pipe(batchRecords({ maxSize: 3, maxWaitMs: 10 }))).toBe(expected, {
        x: ['a', 'b', 'c'],
        y: ['d', 'e'],
      })
    })
  })

  it('flushes the partial batch when the source completes before maxWaitMs (marbles)', () => {
    scheduler().run(({ cold, expectObservable }) => {
      expectObservable(cold('a 2ms |').pipe(batchRecords({ maxSize: 10, maxWaitMs: 50 }))).toBe('---(x|)', { x: ['a'] })
    })
  })

  it('forwards an upstream error', async () => {
    await expect(collect(throwError(() => new Error('boom')).pipe(batchRecords()))).rejects.toThrow('boom')
  })

  it('rejects invalid options at once with PipelineConfigError naming the field', () => {
    expect(() => batchRecords({ maxSize: 0 })).toThrow(PipelineConfigError)
    expect(() => batchRecords({ maxSize: 0 })).toThrow(/maxSize/)
    expect(() => batchRecords({ maxWaitMs: -1 })).toThrow(/maxWaitMs/)
  })

  it('stops its timer on early unsubscribe', async () => {
    const source = new Subject<number>()
    const seen: number[][] = []
    const subscription = source.pipe(batchRecords({ maxSize: 10, maxWaitMs: 20 })).subscribe((b) => seen.push(b))
    source.next(1)
    subscription.unsubscribe()
    await new Promise((r) => setTimeout(r, 50))
    expect(seen).toEqual([])
    expect(source.observed).toBe(false)
  })

  it('counts records and batches in the run metrics', async () => {
    const metrics = new RunMetrics()
    await collect(of(1, 2, 3, 4, 5).pipe(batchRecords({ maxSize: 2, metrics })))
    const stage = metrics.snapshot().find((s) => s.stage === 'batchRecords')!
    expect(stage.recordsIn).toBe(5)
    expect(stage.batches).toBe(3)
  })
})
