import { Observable, asyncScheduler, type OperatorFunction, type SchedulerLike, type Subscription } from 'rxjs'

import { PipelineConfigError } from '../src/errors.js'
import type { RunMetrics } from '../src/engine/metrics.js'

export interface BatchRecordsOptions {
  /** Most records in a batch. Default 32. */
  maxSize?: number
  /** Longest a partial batch waits for more records after its first one arrived, in ms. Default 20. */
  maxWaitMs?: number
  /** Run metrics; counted under `batchRecords`. */
  metrics?: RunMetrics
  /** Scheduler of the `maxWaitMs` timer (for tests). Default `asyncScheduler`. */
  scheduler?: SchedulerLike
}

/**
 * Groups records into batches of at most `maxSize`, emitting a partial batch `maxWaitMs` after its first
 * record arrived, and the rest when the source completes.
 *
 * Use before model operators, which take batches. In → out: N → 1 (batches are non-empty arrays, in input
 * order). Errors: invalid options throw `PipelineConfigError` at once; an upstream error is forwarded after
 * nothing more (the partial batch is dropped, as the run is failing anyway).
 *
 * @example
 * decoded$.pipe(batchRecords({ maxSize: 32, maxWaitMs: 10 }))
 */
export function batchRecords<T>(options: BatchRecordsOptions = {}): OperatorFunction<T, T[]> {
  const maxSize = options.maxSize ?? 32
  const maxWaitMs = options.maxWaitMs ?? 20
  if (!Number.isInteger(maxSize) || maxSize < 1) throw new PipelineConfigError('maxSize', `must be a positive integer, got ${maxSize}`)
  if (!(maxWaitMs >= 0) || !Number.isFinite(maxWaitMs)) throw new PipelineConfigError('maxWaitMs', `must be a finite number >= 0, got ${maxWaitMs}`)
  const stage = options.metrics?.stage('batchRecords')
  const scheduler = options.scheduler ?? asyncScheduler
  return (source) =>
    new Observable<T[]>((subscriber) => {
      let batch: T[] = []
      let timer: Subscription | undefined
      const flush = () => {
        timer?.unsubscribe()
        timer = undefined
        if (batch.length === 0) return
        const out = batch
        batch = []
        if (stage) {
          stage.out(out.length)
          stage.batches += 1
        }
        subscriber.next(out)
      }
      const subscription = source.subscribe({
        next: (record) => {
          stage?.in()
          batch.push(record)
          if (batch.length >= maxSize) flush()
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
