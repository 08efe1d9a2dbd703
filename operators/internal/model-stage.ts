/**
 * The engine of the model operators. A model stage is described by what it takes (`accepts`: its batch
 * record), the rows of a batch (`rows`), and its part of an inference-thread task: `start` plans a batch run
 * alone (the thread step, the rows it refuses, how the step's result becomes output records) and takes the
 * step's input tensors from the batch; `follow` plans the same step for the rows coming out of the stage
 * before it in one task, whose tensors are already in the thread. The engine runs each batch's task, at most
 * `concurrency` at a time, in input order; lets every other record pass around it; turns a failing batch
 * into one `stage-failed` error row per row (a model that cannot run at all errors the stream instead);
 * counts rows, batches, busy time and bytes moved between threads; reserves the bytes a batch holds in the
 * inference thread against the run's in-flight budget; and holds the model (`acquire` on subscribe,
 * `release` on complete, error or unsubscribe: the last release stops the inference pool and frees every
 * ONNX Runtime session).
 *
 * `fuseModelStages` (the engine of the public `chainModelStages`) composes model operators into one operator
 * whose batches run every stage's step in **one** task: the tensors between the stages never leave the inference thread (no round
 * trip through the main thread, no copy per stage), and only the last stage's outputs come back. Its output
 * records are exactly those of the operators piped one after the other (same records, same error rows; only
 * the order in which a batch's error rows and results are emitted can differ, which the sink undoes).
 */
import { Observable, pipe, type OperatorFunction } from 'rxjs'

import type { InFlight, Reservation } from '../../src/engine/in-flight.js'
import type { RunMetrics, StageMetrics } from '../../src/engine/metrics.js'
import { InferenceError, ModelManifestError, ModelUsageError, PipelineConfigError, describeError } from '../../src/errors.js'
import { StepError, type StepsResult } from '../../src/model/inference-pool.js'
import type { ModelDims } from '../../src/model/manifest.js'
import { stepBytes, type StepOutcome, type ThreadStep } from '../../src/model/steps.js'
import type { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import type { Feeds, TensorData } from '../../src/tensor/tensors.js'
import { isErrorRecord, toErrorRecord, type BatchRow, type ErrorRecord, type KeyedRecord } from '../../src/records.js'
import { mapRecords, validateConcurrency } from './map-records.js'

export interface ModelStageOptions {
  /**
   * Batches in flight at once. Default: the model's inference threads + 1 (every thread busy, one batch
   * waiting).
   */
  concurrency?: number
  /** Run metrics; counted under the operator's name. */
  metrics?: RunMetrics
  /**
   * The run's in-flight bound (the one `readShards` and `writeShards` share): each batch reserves the bytes
   * its tensors take in the inference thread before it starts, and the rows are re-charged with their share
   * of the output records' tensors. Default: none (nothing is counted).
   */
  inFlight?: InFlight
}

/** One batch's run of a stage, planned on the main thread. */
export interface StagePlan<Out> {
  /** The step the inference thread runs; absent when every row was refused (nothing to run). */
  readonly step?: ThreadStep
  /** Rows refused before the step: error records (the stage's errors), emitted with the outputs. */
  readonly refused: readonly ErrorRecord[]
  /** The rows the step runs on, in batch order (the rows its output records carry). */
  readonly rows: readonly BatchRow[]
  /** The output records, from the step's outcome and the tensors the task returned (`outputs` of the stage). */
  readonly build: (outcome: StepOutcome, tensors: Readonly<Record<string, TensorData>>) => readonly Out[]
}

/** What a model operator is made of. */
export interface ModelStage<In, Out> {
  /** The operator's name: metrics and error rows. */
  readonly name: string
  readonly model: VisionLanguageModel
  /** Whether a record is this stage's batch; everything else passes around the stage untouched. */
  readonly accepts: (record: unknown) => record is In
  /** The rows of a batch: counted in and out, and each becomes a `stage-failed` error row if the batch fails. */
  readonly rows: (batch: In) => readonly KeyedRecord[]
  /** The tensors of the stage's output records, as the step names them (what a task ending with it returns). */
  readonly outputs: readonly string[]
  /**
   * A batch run alone: its plan, and the tensors the step reads, taken from the batch as new tensors or
   * copies (they are transferred to the inference thread, which detaches them; the input record stays intact).
   * Called once the model package is loaded.
   */
  readonly start: (batch: In) => { readonly plan: StagePlan<Out>; readonly inputs: Feeds }
  /**
   * The plan for the rows that come out of the stage before it in the same task (its outputs are this step's
   * inputs, already in the thread). Absent: the stage can only be first in a task.
   */
  readonly follow?: (rows: readonly BatchRow[]) => StagePlan<Out>
  /** Records a batch's outcome in the stage's metrics (compute time, tokens, expert load). */
  readonly count?: (outcome: StepOutcome, metrics: StageMetrics) => void
}

/** The operator of a model stage, with what `chainModelStages` needs to fuse it with its neighbours. */
type ModelStageOperator<T, R> = OperatorFunction<T, R> & { readonly [MODEL_STAGE]: FusibleStage }

const MODEL_STAGE = Symbol('evflow.modelStage')

interface FusibleStage {
  // The stage types are erased here: `chainModelStages` checks that each stage follows the one before.
  readonly stage: ModelStage<any, any> // eslint-disable-line @typescript-eslint/no-explicit-any
  readonly options: ModelStageOptions
  /** What runs before the stage's engine (e.g. opening `batchRecords` batches); only the first stage of a chain keeps it. */
  readonly prelude?: OperatorFunction<any, any> // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** A model that cannot run at all (no package, no session): fails the run rather than every row. */
function cannotRun(error: unknown): boolean {
  return error instanceof ModelManifestError || (error instanceof InferenceError && error.fatal)
}

/** One stage of a task being planned: its plan and the rows that enter it. */
interface Planned {
  readonly stage: ModelStage<any, unknown> // eslint-disable-line @typescript-eslint/no-explicit-any
  readonly metrics: StageMetrics | undefined
  readonly plan: StagePlan<unknown>
  /** The rows that enter the stage (all of them fail if its step fails). */
  readonly entering: readonly KeyedRecord[]
}

/**
 * The engine of one or more stages run as one task per batch: `stages[0]` starts each batch, the others
 * follow it in the same inference-thread task.
 */
function engine<T, In, Out>(stages: readonly FusibleStage[]): OperatorFunction<T, Exclude<T, In> | Out | ErrorRecord> {
  const first = stages[0].stage as ModelStage<In, unknown>
  const options = stages[0].options
  const { model } = first
  for (const { stage } of stages.slice(1)) {
    if (stage.model !== model) throw new PipelineConfigError('chainModelStages', `${stage.name} uses another model than ${first.name}`)
    if (!stage.follow) throw new PipelineConfigError('chainModelStages', `${stage.name} can only be first in a chain`)
  }
  if (options.concurrency !== undefined) validateConcurrency(options.concurrency)
  const inFlight = options.inFlight
  const metricsOf = stages.map(({ stage, options: o }) => (o.metrics ?? options.metrics)?.stage(stage.name))
  const owner = stages.map(({ stage }) => stage.name).join('+')
  const last = stages[stages.length - 1].stage

  /** Plans the batch: the first stage's start, then each following stage on the rows of the one before. */
  const planBatch = (batch: In): { planned: Planned[]; inputs: Feeds } => {
    const { plan, inputs } = first.start(batch)
    const planned: Planned[] = [{ stage: first, metrics: metricsOf[0], plan, entering: first.rows(batch) }]
    for (const [i, { stage }] of stages.entries()) {
      if (i === 0) continue
      const before = planned[planned.length - 1].plan
      if (!before.step) break
      // the first stage's refused rows are not in its output; a later stage's would still be in the thread's tensors
      if (planned.length > 1 && before.refused.length > 0) throw new ModelUsageError(`${planned[planned.length - 1].stage.name} refused rows in the middle of a chain (only the first and the last stage may)`)
      planned.push({ stage, metrics: metricsOf[i], plan: stage.follow!(before.rows), entering: before.rows })
    }
    return { planned, inputs }
  }

  const run = async (batch: In): Promise<readonly (Out | ErrorRecord)[]> => {
    const began = performance.now()
    let plannedBatch: { planned: Planned[]; inputs: Feeds }
    try {
      await model.load()
      plannedBatch = planBatch(batch)
    } catch (error) {
      const rows = first.rows(batch).length
      const metrics = metricsOf[0]
      if (metrics) {
        metrics.in(rows)
        metrics.batches += 1
        metrics.busy(performance.now() - began)
        metrics.out(rows)
        metrics.errors += rows
      }
      throw error
    }
    const { planned, inputs } = plannedBatch
    const running = planned.filter((p) => p.plan.step !== undefined)
    const refusedAll = planned.flatMap((p) => p.plan.refused)
    const lastPlanned = planned[planned.length - 1]
    // Counted as the operators piped one after the other would count (a stage after a failed one never sees
    // the batch's rows); each stage is busy for its step's time in the thread (the wall time, split evenly,
    // when the task failed or nothing ran).
    const finish = (failedAt: number | undefined, outcomes?: readonly StepOutcome[]) => {
      const ms = performance.now() - began
      const counted = failedAt === undefined ? planned : planned.slice(0, failedAt + 1)
      counted.forEach((p, i) => {
        if (!p.metrics) return
        p.metrics.in(p.entering.length)
        p.metrics.batches += 1
        p.metrics.busy(outcomes?.[i]?.ms ?? ms / counted.length)
        p.metrics.out(p.entering.length)
        p.metrics.errors += i === failedAt ? p.entering.length : p.plan.refused.length
      })
    }
    if (running.length === 0) {
      finish(undefined)
      return refusedAll as ErrorRecord[]
    }
    // Whether the task ends with the chain's last stage: only then does it return that stage's outputs.
    const complete = running.length === stages.length
    const returns = complete ? last.outputs : []
    let reservation: Reservation | undefined
    let result: StepsResult
    const sent = Object.values(inputs).reduce((n, t) => n + t.data.byteLength, 0)
    try {
      reservation = inFlight ? await inFlight.reserve(owner, reserveBytes(inputs, running.map((p) => p.plan), model.manifest.dims)) : undefined
      result = await model.pool().steps(running.map((p) => p.plan.step!), inputs, returns)
    } catch (error) {
      reservation?.release()
      if (cannotRun(error)) throw error
      const at = error instanceof StepError ? error.step : 0
      finish(at)
      const message = describeError(error)
      const failing = running[at]
      return [...running.slice(0, at).flatMap((p) => p.plan.refused), ...failing.entering.map((row) => toErrorRecord(row, failing.stage.name, 'stage-failed', message))]
    }
    reservation?.release()
    finish(undefined, result.outcomes)
    running.forEach((p, i) => {
      if (p.metrics) p.stage.count?.(result.outcomes[i], p.metrics)
    })
    // What the task moved between threads and held in its thread: counted once, under the stage that starts it.
    const task = running[0].metrics
    if (task) {
      task.add('bytes_to_thread', sent)
      task.add('bytes_from_thread', Object.values(result.outputs).reduce((n, t) => n + t.data.byteLength, 0))
      task.extra.task_peak_bytes = Math.max(task.extra.task_peak_bytes ?? 0, result.peakBytes)
      if (reservation) task.extra.task_reserved_bytes = Math.max(task.extra.task_reserved_bytes ?? 0, reservation.bytes)
    }
    if (!complete) return refusedAll as ErrorRecord[]
    const out = lastPlanned.plan.build(result.outcomes[result.outcomes.length - 1], result.outputs) as readonly Out[]
    if (inFlight) charge(inFlight, out)
    return [...(refusedAll as ErrorRecord[]), ...out]
  }

  const failed = (batch: In, error: unknown): readonly ErrorRecord[] => {
    if (cannotRun(error)) throw error
    const message = describeError(error)
    return first.rows(batch).map((row) => toErrorRecord(row, first.name, 'stage-failed', message))
  }

  return (source) =>
    new Observable<Exclude<T, In> | Out | ErrorRecord>((subscriber) => {
      let concurrency: number
      try {
        // read when subscribed: the model's thread plan needs its manifest
        concurrency = options.concurrency ?? model.inferenceThreads + 1
      } catch (error) {
        subscriber.error(error)
        return
      }
      model.acquire()
      const subscription = source
        .pipe(mapRecords<T, In, Out | ErrorRecord>(first.accepts, run, { concurrency, ordered: true, stage: first.name, many: true, failed }))
        .subscribe(subscriber)
      return () => {
        subscription.unsubscribe()
        void model.release()
      }
    })
}

/**
 * The bytes a task holds in the inference thread at most: the most of its inputs and of each step's own
 * peak (inputs, outputs and transients of the step; see `stepBytes`).
 */
function reserveBytes(inputs: Feeds, plans: readonly StagePlan<unknown>[], dims: ModelDims): number {
  const given = Object.values(inputs).reduce((n, t) => n + t.data.byteLength, 0)
  return Math.max(given, ...plans.map((p) => stepBytes(p.step!, dims, p.rows.map((row) => row.frames))))
}

/** Re-charges the rows of output records in the in-flight bound: their share of a batch record's tensors, or a row's few bytes. */
function charge(inFlight: InFlight, records: readonly unknown[]): void {
  for (const record of records) {
    const r = record as { key?: KeyedRecord['key']; rows?: readonly BatchRow[] }
    if (r.rows) {
      const bytes = Math.max(ROW_BYTES, tensorBytesOf(record) / Math.max(1, r.rows.length))
      for (const row of r.rows) inFlight.resize(row.key, Math.ceil(bytes))
    } else if (r.key) inFlight.resize(r.key, ROW_BYTES)
  }
}

/** What a row holds once its tensors are gone (its key, kept values, a short result): the reader's floor. */
const ROW_BYTES = 256

function tensorBytesOf(record: unknown): number {
  let bytes = 0
  for (const value of Object.values(record as Record<string, unknown>)) {
    const t = value as Partial<TensorData> | null
    if (t && typeof t === 'object' && 'dims' in t && ArrayBuffer.isView(t.data)) bytes += t.data.byteLength
  }
  return bytes
}

/**
 * The operator of a model stage: `In` batches → output records, everything else passed through. Typed as a
 * plain `OperatorFunction` (so that `pipe` infers the record types around it); it carries what
 * `chainModelStages` needs to fuse it with its neighbours.
 */
export function modelStage<T, In, Out>(stage: ModelStage<In, Out>, options: ModelStageOptions): OperatorFunction<T, Exclude<T, In> | Out | ErrorRecord>
/** The same after `prelude` (which makes the stage's batches, e.g. by opening `batchRecords` arrays). */
export function modelStage<T, U, In, Out>(stage: ModelStage<In, Out>, options: ModelStageOptions, prelude: OperatorFunction<T, U>): OperatorFunction<T, Exclude<U, In> | Out | ErrorRecord>
export function modelStage<In, Out>(stage: ModelStage<In, Out>, options: ModelStageOptions, prelude?: OperatorFunction<unknown, unknown>): ModelStageOperator<unknown, unknown> {
  const fusible: FusibleStage = { stage, options, ...(prelude ? { prelude } : {}) }
  const operator = engine<unknown, In, Out>([fusible])
  const whole: OperatorFunction<unknown, unknown> = prelude ? pipe(prelude, operator) : operator
  return Object.assign((source: Observable<unknown>) => whole(source), { [MODEL_STAGE]: fusible })
}

export function isModelStageOperator(value: unknown): value is ModelStageOperator<unknown, unknown> {
  return typeof value === 'function' && MODEL_STAGE in value
}

/**
 * One operator running the stages of `operators` (model operators of one model, each taking what the one
 * before makes) as one task per batch; see `chainModelStages` (operators/chain-model-stages.ts), the public
 * combinator. Throws `PipelineConfigError` for anything else.
 */
export function fuseModelStages<T, R>(operators: readonly OperatorFunction<any, any>[]): OperatorFunction<T, R> { // eslint-disable-line @typescript-eslint/no-explicit-any
  if (operators.length === 0) throw new PipelineConfigError('chainModelStages', 'needs at least one model operator')
  const stages = operators.map((op, i) => {
    if (!isModelStageOperator(op)) throw new PipelineConfigError('chainModelStages', `operator ${i + 1} is not a model operator`)
    const fusible = op[MODEL_STAGE]
    if (i > 0 && fusible.prelude) throw new PipelineConfigError('chainModelStages', `${fusible.stage.name} can only be first in a chain`)
    return fusible
  })
  const operator = engine<unknown, unknown, unknown>(stages)
  const { prelude } = stages[0]
  return (prelude ? pipe(prelude, operator) : operator) as unknown as OperatorFunction<T, R>
}
