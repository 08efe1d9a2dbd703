/**
 * The engine of the model operators: runs an async function on each batch record it is for (at most
 * `concurrency` batches at a time, in input order), lets every other record pass around it, turns a failing
 * batch into one error row per row of the batch, counts rows, batches and busy time, and holds the model
 * (`acquire` on subscribe, `release` on complete, error or unsubscribe: the last release stops the worker
 * pool and frees every ONNX Runtime session).
 */
import { Observable, mergeMap, type OperatorFunction } from 'rxjs'

import type { RunMetrics, StageMetrics } from '../../src/engine/metrics.js'
import { InferenceError, ModelManifestError, describeError } from '../../src/errors.js'
import type { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import { toErrorRecord, type ErrorRecord, type KeyedRecord } from '../../src/records.js'
import { mapRecords, validateConcurrency } from './map-records.js'

export interface ModelStageOptions {
  /** Batches in flight at once. Default: the model's workers + 1 (every worker busy, one batch waiting). */
  concurrency?: number
  /** Run metrics; counted under the operator's name. */
  metrics?: RunMetrics
}

interface Many<T> {
  readonly kind: 'evflow:many'
  readonly items: readonly T[]
}

/**
 * The typed public operators cast this loosely typed engine to their own signature:
 * `In → Out | ErrorRecord`, everything else passing through.
 */
export function modelStage<In>(
  stage: string,
  model: VisionLanguageModel,
  isInput: (record: unknown) => boolean,
  rowsOf: (batch: In) => readonly KeyedRecord[],
  fn: (batch: In, metrics: StageMetrics | undefined) => Promise<readonly unknown[]>,
  options: ModelStageOptions,
): OperatorFunction<unknown, unknown> {
  const concurrency = options.concurrency ?? model.workers + 1
  validateConcurrency(concurrency)
  const metrics = options.metrics?.stage(stage)
  type Any = { kind: string } & KeyedRecord
  return (source) =>
    new Observable<unknown>((subscriber) => {
      model.acquire()
      const run = async (batch: In, fail: (error: unknown) => void): Promise<Many<unknown>> => {
        const rows = rowsOf(batch)
        metrics?.in(rows.length)
        const began = performance.now()
        let items: readonly unknown[]
        try {
          await model.load()
          items = await fn(batch, metrics)
        } catch (error) {
          // A model that cannot run at all (no session) stops the run; anything else fails this batch's rows.
          if (error instanceof ModelManifestError || (error instanceof InferenceError && error.fatal)) fail(error)
          const message = describeError(error)
          items = rows.map((row): ErrorRecord => toErrorRecord(row, stage, 'stage-failed', message))
          if (metrics) metrics.errors += rows.length
        }
        if (metrics) {
          metrics.busy(performance.now() - began)
          metrics.batches += 1
          metrics.out(rows.length)
        }
        return { kind: 'evflow:many', items }
      }
      const subscription = (source as Observable<Any>)
        .pipe(
          mapRecords<Any, Any, Many<unknown>>(isInput as (r: Any) => r is Any, (batch) => run(batch as unknown as In, (error) => subscriber.error(error)), { concurrency, ordered: true, stage }),
          mergeMap((item) => (item.kind === 'evflow:many' ? (item as Many<unknown>).items : [item])),
        )
        .subscribe(subscriber)
      return () => {
        subscription.unsubscribe()
        void model.release()
      }
    })
}
