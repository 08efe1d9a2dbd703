/**
 * The engine of per-record operators: applies an async function to the records it is for, at most
 * `concurrency` at a time, lets every other record (error rows, shard notices, other kinds) pass around it
 * untouched, turns a throw into an error row, and keeps input order when asked.
 */
import { Observable, type OperatorFunction } from 'rxjs'

import { PipelineConfigError, describeError } from '../../src/errors.js'
import type { StageMetrics } from '../../src/engine/metrics.js'
import { toErrorRecord, type ErrorRecord, type KeyedRecord } from '../../src/records.js'

export interface MapRecordsOptions {
  /** Records processed at once. */
  concurrency: number
  /** Emit in input order (a reorder buffer); otherwise as they finish. */
  ordered: boolean
  /** Stage name for error rows and metrics. */
  stage: string
  metrics?: StageMetrics
}

export function validateConcurrency(value: number, field = 'concurrency'): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new PipelineConfigError(field, `must be a positive integer, got ${value}`)
  }
}

export function mapRecords<T extends { kind: string }, In extends T & KeyedRecord, Out>(
  isInput: (record: T) => record is In,
  fn: (record: In) => Promise<Out | ErrorRecord>,
  options: MapRecordsOptions,
): OperatorFunction<T, Exclude<T, In> | Out | ErrorRecord> {
  type Result = Exclude<T, In> | Out | ErrorRecord
  const { concurrency, ordered, stage, metrics } = options
  return (source) =>
    new Observable<Result>((subscriber) => {
      let active = 0
      let upstreamDone = false
      let nextIn = 0
      let nextOut = 0
      const waiting: { index: number; record: In }[] = []
      const finished = new Map<number, Result>()
      let closed = false

      const deliver = (index: number, result: Result) => {
        if (closed) return
        if (!ordered) {
          subscriber.next(result)
          return
        }
        finished.set(index, result)
        while (finished.has(nextOut)) {
          const value = finished.get(nextOut)!
          finished.delete(nextOut)
          nextOut += 1
          subscriber.next(value)
        }
      }

      const maybeComplete = () => {
        if (upstreamDone && active === 0 && waiting.length === 0 && !closed) subscriber.complete()
      }

      const start = (index: number, record: In) => {
        active += 1
        const began = performance.now()
        fn(record)
          .catch((error: unknown) => toErrorRecord(record, stage, 'stage-failed', describeError(error)))
          .then((result) => {
            active -= 1
            if (metrics) {
              metrics.busy(performance.now() - began)
              metrics.out()
              if ((result as { kind?: string }).kind === 'error') metrics.errors += 1
            }
            deliver(index, result)
            const next = waiting.shift()
            if (next) start(next.index, next.record)
            maybeComplete()
          })
      }

      const subscription = source.subscribe({
        next: (record) => {
          const index = nextIn++
          if (!isInput(record)) {
            deliver(index, record as Exclude<T, In>)
            return
          }
          metrics?.in()
          if (active < concurrency) start(index, record)
          else waiting.push({ index, record })
        },
        error: (error: unknown) => {
          closed = true
          subscriber.error(error)
        },
        complete: () => {
          upstreamDone = true
          maybeComplete()
        },
      })
      return () => {
        closed = true
        subscription.unsubscribe()
      }
    })
}
