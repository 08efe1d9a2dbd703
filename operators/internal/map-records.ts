/**
 * The engine of the operators that work record by record or batch by batch: applies an async function to
 * the records it is for, at most `concurrency` at a time, lets every other record (error rows, shard
 * notices, other kinds) pass around it untouched, and keeps input order when asked. One input gives one
 * output (`mapRecords(accepts, fn, options)`; a throw becomes a `stage-failed` error row), or any number in
 * order (`many: true`: `fn` resolves to a list; `failed` says what a throw becomes, and a throw from
 * `failed` errors the stream), emitted together at the input's place.
 */
import { Observable, mergeMap, type OperatorFunction } from 'rxjs'

import { PipelineConfigError, describeError } from '../../src/errors.js'
import type { StageMetrics } from '../../src/engine/metrics.js'
import { isErrorRecord, toErrorRecord, type ErrorRecord, type KeyedRecord } from '../../src/records.js'

export interface MapRecordsOptions {
  /** Records processed at once. */
  concurrency: number
  /** Emit in input order (a reorder buffer); otherwise as they finish. */
  ordered: boolean
  /** Stage name for error rows and metrics. */
  stage: string
  /** Counted per input record (in, out, busy time, error rows). */
  metrics?: StageMetrics
}

export interface MapManyOptions<In, Out> extends MapRecordsOptions {
  many: true
  /** The records an input whose `fn` threw becomes. */
  failed: (record: In, error: unknown) => readonly Out[]
}

export function validateConcurrency(value: number, field = 'concurrency'): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new PipelineConfigError(field, `must be a positive integer, got ${value}`)
  }
}

/** 1 → 1: each accepted record becomes `fn`'s result, or a `stage-failed` error row if it throws. */
export function mapRecords<T extends { kind: string }, In extends T & KeyedRecord, Out>(
  accepts: (record: T) => record is In,
  fn: (record: In) => Promise<Out | ErrorRecord>,
  options: MapRecordsOptions,
): OperatorFunction<T, Exclude<T, In> | Out | ErrorRecord>
/** 1 → many: each accepted record becomes the records `fn` resolves to (in order), or `failed`'s if it throws. */
export function mapRecords<T, In, Out>(
  accepts: (record: unknown) => record is In,
  fn: (record: In) => Promise<readonly Out[]>,
  options: MapManyOptions<In, Out>,
): OperatorFunction<T, Exclude<T, In> | Out>
export function mapRecords<T, In, Out>(
  accepts: (record: T) => boolean,
  fn: (record: In) => Promise<unknown>,
  options: MapRecordsOptions & Partial<MapManyOptions<In, Out>>,
): OperatorFunction<T, unknown> {
  const { concurrency, ordered, stage, metrics } = options
  // Every input resolves to the list of records it becomes (one, for 1 → 1).
  const results = (record: In): Promise<readonly unknown[]> =>
    options.many
      ? fn(record).then((out) => out as readonly unknown[], (error: unknown) => options.failed!(record, error))
      : fn(record).then(
          (out) => [out],
          (error: unknown) => [toErrorRecord(record as KeyedRecord, stage, 'stage-failed', describeError(error))],
        )
  return (source) =>
    new Observable<unknown>((subscriber) => {
      let active = 0
      let upstreamDone = false
      let nextIn = 0
      let nextOut = 0
      const waiting: { index: number; record: In }[] = []
      const finished = new Map<number, readonly unknown[]>()
      let closed = false

      const emit = (records: readonly unknown[]) => {
        for (const record of records) subscriber.next(record)
      }
      const deliver = (index: number, records: readonly unknown[]) => {
        if (closed) return
        if (!ordered) {
          emit(records)
          return
        }
        finished.set(index, records)
        while (finished.has(nextOut)) {
          const next = finished.get(nextOut)!
          finished.delete(nextOut)
          nextOut += 1
          emit(next)
        }
      }

      const maybeComplete = () => {
        if (upstreamDone && active === 0 && waiting.length === 0 && !closed) subscriber.complete()
      }

      const start = (index: number, record: In) => {
        active += 1
        const began = performance.now()
        results(record).then((out) => {
          active -= 1
          if (metrics) {
            metrics.busy(performance.now() - began)
            metrics.out(out.length)
            for (const r of out) if (isErrorRecord(r)) metrics.errors += 1
          }
          deliver(index, out)
          const next = waiting.shift()
          if (next) start(next.index, next.record)
          maybeComplete()
        }, (error: unknown) => {
          // `failed` threw: the input cannot become records at all (e.g. a model that cannot run).
          if (closed) return
          closed = true
          subscriber.error(error)
        })
      }

      const subscription = source.subscribe({
        next: (record) => {
          const index = nextIn++
          if (!accepts(record)) {
            deliver(index, [record])
            return
          }
          metrics?.in()
          if (active < concurrency) start(index, record as unknown as In)
          else waiting.push({ index, record: record as unknown as In })
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

/**
 * The synchronous form, for pure main-thread work (microseconds per record): each accepted record becomes
 * the records `fn` returns, at once and in place; every other record passes through. A throw errors the
 * stream (use it only for functions that cannot fail on valid records).
 */
export function flatMapRecords<T, In, Out>(accepts: (record: unknown) => record is In, fn: (record: In) => readonly Out[]): OperatorFunction<T, Exclude<T, In> | Out> {
  // TypeScript does not narrow a generic `T` to `Exclude<T, In>` when a guard fails; it is that.
  return mergeMap((record: T): readonly (Exclude<T, In> | Out)[] => (accepts(record) ? fn(record) : [record as Exclude<T, In>]))
}
