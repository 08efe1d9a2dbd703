import { Observable, asyncScheduler, type OperatorFunction, type SchedulerLike, type Subscription } from 'rxjs'

import { PipelineConfigError } from '../src/errors.js'
import type { RunMetrics } from '../src/engine/metrics.js'

export interface BatchRecordsOptions<T = unknown> {
  /** Most records in a batch. Default 32. */
  maxSize?: number
  /** Longest a partial batch waits for more records after its first one arrived, in ms. Default 20. */
  maxWaitMs?: number
  /**
   * Most weight in a batch (Beam's `max_batch_weight`), as `weigh` counts it: a record that would take the
   * batch over it starts the next batch (a batch always takes one record, however heavy). Default: no limit.
   */
  maxWeight?: number
  /** The weight of a record (e.g. the bytes a model will hold for it). Default: 1 per record. */
  weigh?: (record: T) => number
  /** Run metrics; counted under `batchRecords`. */
  metrics?: RunMetrics
  /** Scheduler of the `maxWaitMs` timer (for tests). Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/**
 * Groups records into batches of at most `maxSize` (and `maxWeight`), emitting a partial batch `maxWaitMs`
 * after its first record arrived, and the rest when the source completes.
 *
 * Use before model operators, which take batches. In → out: N → 1 (batches are non-empty arrays, in input
 * order). Errors: invalid options throw `PipelineConfigError` at once; an upstream error is forwarded after
 * nothing more (the partial batch is dropped, as the run is failing anyway).
 *
 * @example
 * decoded$.pipe(batchRecords({ maxSize: 32, maxWaitMs: 10 }))
 */
export function batchRecords<T>(options: BatchRecordsOptions<T> = {}): OperatorFunction<T, T[]> {
  const maxSize = options.maxSize ?? 32
  const maxWaitMs = options.maxWaitMs ?? 20
  const maxWeight = options.maxWeight ?? Number.POSITIVE_INFINITY
  const weigh = options.weigh ?? (() => 1)
  if (!Number.isInteger(maxSize) || maxSize < 1) throw new PipelineConfigError('maxSize', `must be a positive integer, got ${maxSize}`)
  if (!(maxWaitMs >= 0) || !Number.isFinite(maxWaitMs)) throw new PipelineConfigError('maxWaitMs', `must be a finite number >= 0, got ${maxWaitMs}`)
  if (!(maxWeight > 0)) throw new PipelineConfigError('maxWeight', `must be positive, got ${maxWeight}`)
  const stage = options.metrics?.stage('batchRecords')
  const scheduler = options.scheduler ?? asyncScheduler
  return (source) =>
    new Observable<T[]>((subscriber) => {
      let batch: T[] = []
      let weight = 0
      let timer: Subscription | undefined
      const flush = () => {
        timer?.unsubscribe()
        timer = undefined
        if (batch.length === 0) return
        const out = batch
        batch = []
        weight = 0
        if (stage) {
          stage.out(out.length)
          stage.batches += 1
        }
        subscriber.next(out)
      }
      const subscription = source.subscribe({
        next: (record) => {
          stage?.in()
          const heavy = weigh(record)
          if (batch.length > 0 && weight + heavy > maxWeight) flush()
          batch.push(record)
          weight += heavy
          if (batch.length >= maxSize || weight >= maxWeight) flush()
          else if (timer === undefined) timer = scheduler.schedule(flush, maxWaitMs)
        },
        error: (error: unknown) => {
          timer?.unsubscribe()
          subscriber.error(error)
        },
        complete: () => {
          flush()
          subscriber.complete()
        },
      })
      return () => {
        timer?.unsubscribe()
        subscription.unsubscribe()
      }
    })
}
