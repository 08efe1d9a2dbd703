/**
 * The engine of the model operators. A model stage is described by what it takes (`accepts`: its batch
 * record), the rows of a batch (`rows`) and how a batch becomes output records (`run`: main-thread glue
 * around one inference-thread task: plan the feeds from the batch with pure functions of `src/`, run the
 * task, build the output records). The engine runs `run` on each batch, at most `concurrency` at a time, in
 * input order; lets every other record pass around it; turns a failing batch into one `stage-failed` error
 * row per row (a model that cannot run at all errors the stream instead); counts rows, batches and busy
 * time; and holds the model (`acquire` on subscribe, `release` on complete, error or unsubscribe: the last
 * release stops the inference pool and frees every ONNX Runtime session).
 */
import { Observable, type OperatorFunction } from 'rxjs'

import type { RunMetrics, StageMetrics } from '../../src/engine/metrics.js'
import { InferenceError, ModelManifestError, describeError } from '../../src/errors.js'
import type { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import { isErrorRecord, toErrorRecord, type ErrorRecord, type KeyedRecord } from '../../src/records.js'
import { mapRecords, validateConcurrency } from './map-records.js'

export interface ModelStageOptions {
  /**
   * Batches in flight at once. Default: the model's inference threads + 1 (every thread busy, one batch
   * waiting).
   */
  concurrency?: number
  /** Run metrics; counted under the operator's name. */
  metrics?: RunMetrics
}

/** What a model operator is made of. */
export interface ModelStage<In, Out> {
  /** The operator's name: metrics and error rows. */
  readonly name: string
  readonly model: VisionLanguageModel
  /** Whether a record is this stage's batch; everything else passes around the stage untouched. */
  readonly accepts: (record: unknown) => record is In
  /** The rows of a batch: counted in and out, and each becomes a `stage-failed` error row if `run` throws. */
  readonly rows: (batch: In) => readonly KeyedRecord[]
  /**
   * The output records of a batch (the model package is loaded when it is called). Error records among them
   * (rows the stage refuses) are counted as the stage's errors.
   */
  readonly run: (batch: In, metrics: StageMetrics | undefined) => Promise<readonly Out[]>
}

/** A model that cannot run at all (no package, no session): fails the run rather than every row. */
function cannotRun(error: unknown): boolean {
  return error instanceof ModelManifestError || (error instanceof InferenceError && error.fatal)
}

/** The operator of a model stage: `In` batches → `run`'s records, everything else passed through. */
export function modelStage<T, In, Out>(stage: ModelStage<In, Out>, options: ModelStageOptions): OperatorFunction<T, Exclude<T, In> | Out | ErrorRecord> {
  const { name, model } = stage
  const concurrency = options.concurrency ?? model.inferenceThreads + 1
  validateConcurrency(concurrency)
  const metrics = options.metrics?.stage(name)
  const counted = (rows: number, began: number, errors = 0) => {
    if (!metrics) return
    metrics.errors += errors
    metrics.busy(performance.now() - began)
    metrics.batches += 1
    metrics.out(rows)
  }
  const run = async (batch: In): Promise<readonly (Out | ErrorRecord)[]> => {
    const rows = stage.rows(batch)
    metrics?.in(rows.length)
    const began = performance.now()
    try {
      await model.load()
      const out = await stage.run(batch, metrics)
      counted(rows.length, began, out.filter(isErrorRecord).length)
      return out
    } catch (error) {
      counted(rows.length, began, rows.length)
      throw error
    }
  }
  const failed = (batch: In, error: unknown): readonly ErrorRecord[] => {
    if (cannotRun(error)) throw error
    const message = describeError(error)
    return stage.rows(batch).map((row) => toErrorRecord(row, name, 'stage-failed', message))
  }
  return (source) =>
    new Observable<Exclude<T, In> | Out | ErrorRecord>((subscriber) => {
      model.acquire()
      const subscription = source
        .pipe(mapRecords<T, In, Out | ErrorRecord>(stage.accepts, run, { concurrency, ordered: true, stage: name, many: true, failed }))
        .subscribe(subscriber)
      return () => {
        subscription.unsubscribe()
        void model.release()
      }
    })
}
