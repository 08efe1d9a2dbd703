/**
 * Running one queued shard: re-plan exactly the shard the job names, skip it when it is already committed,
 * run the pipeline into a private staging folder, and publish the result through the {@link ShardStore}
 * (first commit wins; a late duplicate is discarded). Independent of BullMQ, so it can be tested alone.
 */
import { concatMap, map, pipe, timer } from 'rxjs'

import { pipelines as registry } from '../../pipelines/index.js'
import { runConfig, runPipeline, type ProgressSink, type RunOptions } from '../../pipelines/run.js'
import { mergeReadColumns, type PipelineDefinition } from '../../pipelines/definition.js'
import { PipelineConfigError, ShardReadError, ShardWriteError } from '../../src/errors.js'
import { ParquetReader, type ReadBudget } from '../../src/parquet/reader.js'
import { planShards, type PlannedShard, type ShardReading } from '../../src/parquet/shards.js'
import type { KeyedRecord } from '../../src/records.js'
import type { ShardJobData, ShardJobProgress, ShardJobResult } from './job.js'
import type { ShardStore } from './store.js'

export interface RunShardContext extends ReadBudget {
  /** Where the shard is published. */
  readonly store: ShardStore
  /** Names this attempt's staging folder (e.g. the job id and attempt number). */
  readonly attempt: string
  /** Name of this worker, stored in the result. */
  readonly worker: string
  /** Stops the run; the staging folder is discarded and nothing is published. */
  readonly signal?: AbortSignal
  /** Called with rows done every `progressIntervalMs`. */
  readonly onProgress?: (progress: ShardJobProgress) => void
  /** Default 1000. */
  readonly progressIntervalMs?: number
  /** Testing only: wait this long after each row leaves the pipeline's stages (to make a shard slow). Default 0. */
  readonly debugRowDelayMs?: number
  /** Testing only: see `ParquetReaderOptions.debugSpin`. */
  readonly debugSpin?: ShardReading['debugSpin']
  /** Pipeline registry. Default: `pipelines/index.ts`. */
  readonly pipelines?: Readonly<Record<string, PipelineDefinition<object, KeyedRecord>>>
  /** Also receives the run's progress calls (the worker's time series for `evflow report`). Default: none. */
  readonly progress?: ProgressSink
}

/** What a job's shard resolves to on this worker: the pipeline, its validated config and the planned shard. */
export interface ResolvedShardJob {
  readonly definition: PipelineDefinition<object, KeyedRecord>
  readonly config: object
  readonly configHash: string
  readonly planned: PlannedShard
  readonly read: Pick<RunOptions, 'imageColumn' | 'idColumn' | 'keep' | 'maxRecordsInFlight'>
}

/**
 * Resolves a job on this worker. Throws `PipelineConfigError` when retrying cannot help (unknown pipeline,
 * invalid config, a config hash this evflow computes differently, an input changed since submit) and
 * `ShardReadError` when the input cannot be read now (retried with backoff).
 */
export async function resolveShardJob(
  data: ShardJobData,
  pipelines: Readonly<Record<string, PipelineDefinition<object, KeyedRecord>>> = registry,
  reading: ShardReading = {},
): Promise<ResolvedShardJob> {
  const definition = pipelines[data.pipeline]
  if (!definition) {
    throw new PipelineConfigError('pipeline', `this worker has no pipeline '${data.pipeline}' (it has: ${Object.keys(pipelines).join(', ')})`)
  }
  const parsed = definition.schema.safeParse(data.config)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new PipelineConfigError(issue.path.length > 0 ? issue.path.join('.') : 'config', issue.message)
  }
  const config = Object.freeze(parsed.data as object)
  const read = {
    ...(data.read.imageColumn === undefined ? {} : { imageColumn: data.read.imageColumn }),
    ...(data.read.idColumn === undefined ? {} : { idColumn: data.read.idColumn }),
    ...(data.read.keep === undefined ? {} : { keep: data.read.keep }),
  }
  const { hash } = runConfig(definition as PipelineDefinition, config, { inputs: [data.input], outDir: data.outDir, ...read })
  if (hash !== data.configHash) {
    throw new PipelineConfigError('configHash', `this worker computes ${hash} for the job's config, the job says ${data.configHash}: are submit and worker the same evflow version?`)
  }
  const [planned] = await planShards([data.input], {
    ...mergeReadColumns(definition.read(config), read),
    ...(data.rows === null ? {} : { rows: data.rows }),
    ...reading,
  })
  if (!planned.plan.ok) throw planned.plan.error
  if (data.fingerprint !== '' && planned.plan.info.fingerprint !== data.fingerprint) {
    throw new PipelineConfigError('input', `${data.input} changed since it was submitted (fingerprint ${planned.plan.info.fingerprint.slice(0, 12)}, submitted ${data.fingerprint.slice(0, 12)}); submit it again`)
  }
  // The output name and position computed at submit over the whole input set, not over this one file.
  const info = { ...planned.plan.info, name: data.shard, index: data.index }
  return {
    definition,
    config,
    configHash: hash,
    planned: { ...planned, plan: { ok: true, info } },
    read: { ...read, ...(data.read.maxRecordsInFlight === undefined ? {} : { maxRecordsInFlight: data.read.maxRecordsInFlight }) },
  }
}

/**
 * Runs one shard job to a published (or already committed) output shard. Its input is parsed by a parser
 * process of its own, under the context's read budgets; a footer or row group that overruns the time budget
 * fails the job with reason `timeout` (a timeout may depend on the machine's load, so the shard is retried
 * rather than committed with timed-out rows), and the parser is stopped with the job.
 */
export async function runShardJob(data: ShardJobData, context: RunShardContext): Promise<ShardJobResult> {
  const reader = new ParquetReader({
    parsers: 1,
    ...(context.readTimeoutMs === undefined ? {} : { readTimeoutMs: context.readTimeoutMs }),
    ...(context.readMemoryMb === undefined ? {} : { readMemoryMb: context.readMemoryMb }),
    ...(context.debugSpin === undefined ? {} : { debugSpin: context.debugSpin }),
  })
  // Stopping the job stops its parser at once, even in the middle of planning.
  const stop = () => void reader.close()
  context.signal?.addEventListener('abort', stop, { once: true })
  try {
    return await runWithReader(data, context, reader)
  } finally {
    context.signal?.removeEventListener('abort', stop)
    await reader.close()
  }
}

async function runWithReader(data: ShardJobData, context: RunShardContext, reader: ParquetReader): Promise<ShardJobResult> {
  const started = performance.now()
  const job = await resolveShardJob(data, context.pipelines, { reader })
  const info = job.planned.plan.info
  const result = (fields: Omit<ShardJobResult, 'shard' | 'durationMs' | 'worker'>): ShardJobResult => ({
    shard: data.shard,
    ...fields,
    durationMs: Math.round(performance.now() - started),
    worker: context.worker,
  })

  const done = await context.store.committed(data.shard, info.fingerprint, job.configHash)
  if (done) return result({ status: 'skipped', output: done.output, rowsIn: done.rowsIn, rowsOk: done.rowsOk, rowsError: done.rowsError })

  const staging = await context.store.stage(data.shard, context.attempt)
  let published = false
  try {
    const summary = await runPipeline(withRowDelay(job.definition, context.debugRowDelayMs ?? 0), job.config, {
      ...job.read,
      inputs: [data.input],
      plan: [job.planned],
      outDir: staging.dir,
      lock: false,
      reader,
      ...(context.signal === undefined ? {} : { signal: context.signal }),
      // Rows that have reached the writer (written rows only grow a row group at a time).
      progress: {
        ...context.progress,
        update: (state) => {
          context.progress?.update?.(state)
          const reached = state.stages.find((s) => s.stage === 'writeShards')?.recordsIn ?? 0
          context.onProgress?.({ rowsDone: Math.max(reached, state.rowsDone), rowsTotal: state.rowsTotal })
        },
      },
      progressIntervalMs: context.progressIntervalMs ?? 1000,
    })
    const timeout = reader.incidents.find((i) => i.reason === 'timeout')
    if (timeout) throw new ShardReadError(data.input, timeout.message, timeout.rowGroup, { reason: 'timeout' })
    if (summary.shards.failed > 0) {
      const failure = summary.failedShards[0]
      throw new ShardReadError(data.input, failure.error.startsWith(data.input) ? failure.error.slice(data.input.length).replace(/^:\s*/, '') : failure.error)
    }
    if (summary.shards.committed !== 1) {
      throw new ShardWriteError(staging.dir, `expected one committed shard, the run committed ${summary.shards.committed}`)
    }
    context.onProgress?.({ rowsDone: info.rows, rowsTotal: info.rows })
    published = true
    const outcome = await context.store.publish(staging)
    const { record } = outcome
    return result({
      status: outcome.status,
      output: record.output,
      rowsIn: record.rowsIn,
      rowsOk: record.rowsOk,
      rowsError: record.rowsError,
      ...(outcome.status === 'duplicate' ? { identical: outcome.identical } : {}),
    })
  } finally {
    if (!published) await context.store.discard(staging)
  }
}

/** Testing only: the pipeline with a pause after each record leaves its stages (output unchanged). */
function withRowDelay(definition: PipelineDefinition<object, KeyedRecord>, ms: number): PipelineDefinition<object, KeyedRecord> {
  if (ms <= 0) return definition
  return {
    ...definition,
    stages: (config, context) =>
      pipe(
        definition.stages(config, context),
        concatMap((record) => timer(ms).pipe(map(() => record))),
      ),
  }
}
