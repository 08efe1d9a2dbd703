/**
 * Running a pipeline over shards into an output folder: lock the folder, plan the shards, skip the ones
 * already committed for this input and config, stream the rest through `readShards → stages →
 * writeShards` with a bound on work in flight, report progress, stop cleanly on a signal, and write the
 * run summary.
 */
import { Subscription, tap } from 'rxjs'

import { readShards } from '../operators/read-shards.js'
import { writeShards, type ShardCommit } from '../operators/write-shards.js'
import { RunInterruptedError } from '../src/errors.js'
import { ensureLayout, isCommitted, outputLayout, removeStaleTemps, writeFileAtomic } from '../src/parquet/commit.js'
import { planShards, type PlannedShard, type ShardColumns, type ShardSelection } from '../src/parquet/shards.js'
import type { ErrorRecord, KeyedRecord, ShardNotice } from '../src/records.js'
import { InFlight } from '../src/engine/in-flight.js'
import { acquireFolderLock } from '../src/engine/lock.js'
import { RunMetrics, type StageSnapshot } from '../src/engine/metrics.js'
import { configHash, mergeReadColumns, outputSettings, type PipelineDefinition } from './definition.js'

export const EVFLOW_VERSION = '0.1.0'

export interface RunOptions extends ShardSelection, Omit<ShardColumns, 'requireImage'> {
  inputs: readonly string[]
  /**
   * Shards already planned (by `planShards`, possibly renamed): used instead of planning `inputs`.
   * This is how a distributed worker runs exactly the shard its job names.
   */
  plan?: readonly PlannedShard[]
  outDir: string
  /** Redo shards that are already committed. Default false. */
  overwrite?: boolean
  /** Most records between reader and writer. Default 1024. */
  maxRecordsInFlight?: number
  /**
   * Most bytes in flight between reader and writer: the rows' data (encoded images, then their share of the
   * model's tensors) and the tensors of the model batches running (see `InFlight`). Default 512 MiB.
   */
  maxBytesInFlight?: number
  /** Take the output folder lock. Default true (distributed workers share a folder and pass false). */
  lock?: boolean
  /** Progress callbacks. Default: none. */
  progress?: ProgressSink
  /** How often `progress.update` is called, in ms. Default 1000. */
  progressIntervalMs?: number
  /** Stops the run (as Ctrl-C does): shards in progress are not committed. */
  signal?: AbortSignal
}

export interface ProgressState {
  readonly rowsTotal: number
  readonly rowsDone: number
  readonly shardsTotal: number
  readonly shardsDone: number
  readonly shardsSkipped: number
  readonly elapsedS: number
  readonly rowsPerS: number
  readonly stages: readonly StageSnapshot[]
}

export interface ProgressSink {
  start?(state: ProgressState, config: unknown): void
  update?(state: ProgressState): void
  shard?(commit: ShardCommit): void
  finish?(summary: RunSummary): void
}

export interface RunSummary {
  readonly evflow: string
  readonly pipeline: string
  readonly config: unknown
  readonly configHash: string
  readonly outDir: string
  readonly startedAt: string
  readonly finishedAt: string
  readonly durationS: number
  readonly interrupted: boolean
  readonly shards: { total: number; skipped: number; committed: number; failed: number }
  readonly rows: { in: number; ok: number; error: number }
  readonly errorsByCode: Readonly<Record<string, number>>
  readonly rowsPerS: number
  readonly failedShards: readonly { shard: string; input: string; error: string }[]
  readonly committed: readonly { shard: string; output: string; rowsIn: number; rowsOk: number; rowsError: number }[]
  readonly stages: readonly StageSnapshot[]
  readonly inFlightPeakRecords: number
  /** Peak resident set size of the process so far, in MiB. */
  readonly peakRssMiB: number
}

/**
 * The config a run stores and hashes. `stored` (the run summary, the progress start line): the whole config.
 * `output` (each output file's metadata) and `hash` (completion records: what a rerun skips): only what
 * decides the output — the pipeline's output settings, what decides which rows are read, and the identity
 * (the model's fingerprint) — so that the same shard run with other engine settings (threads, batch size) on
 * another machine gives the same bytes and counts as done.
 */
export function runConfig(definition: PipelineDefinition, config: object, options: RunOptions) {
  const read = {
    imageColumn: options.imageColumn ?? null,
    idColumn: options.idColumn ?? null,
    keep: options.keep ?? [],
  }
  const identity = definition.identity?.(config)
  const stored = { pipeline: definition.name, [definition.name]: config, read, ...(identity ? { identity } : {}) }
  const settings = outputSettings(definition, config)
  const output = { pipeline: definition.name, [definition.name]: settings, read, ...(identity ? { identity } : {}) }
  const hash = configHash({ pipeline: definition.name, config: settings, read, ...(identity ? { identity } : {}) })
  return { stored, hash, output }
}

export async function runPipeline<C extends object, R extends KeyedRecord>(
  definition: PipelineDefinition<C, R>,
  config: C,
  options: RunOptions,
): Promise<RunSummary> {
  const startedAt = new Date()
  const layout = outputLayout(options.outDir)
  const { stored, hash, output } = runConfig(definition as unknown as PipelineDefinition, config, options)
  const inFlight = new InFlight({ maxRecords: options.maxRecordsInFlight ?? 1024, ...(options.maxBytesInFlight === undefined ? {} : { maxBytes: options.maxBytesInFlight }) })
  const metrics = new RunMetrics()
  const readOptions = {
    ...mergeReadColumns(definition.read(config), options),
    ...(options.rows === undefined ? {} : { rows: options.rows }),
    ...(options.rowGroups === undefined ? {} : { rowGroups: options.rowGroups }),
    ...(options.limit === undefined ? {} : { limit: options.limit }),
  }
  const planned = options.plan ?? (await planShards(options.inputs, readOptions))

  ensureLayout(layout)
  const lock = options.lock === false ? undefined : acquireFolderLock(layout.lock, options.outDir)
  try {
    await removeStaleTemps(layout, lock !== undefined)
    const pending: PlannedShard[] = []
    let skipped = 0
    for (const shard of planned) {
      if (!options.overwrite && shard.plan.ok && (await isCommitted(layout, shard.plan.info, hash))) skipped += 1
      else pending.push(shard)
    }
    const rowsTotal = pending.reduce((n, s) => n + s.plan.info.rows, 0)
    const writeStage = metrics.stage('writeShards')
    const commits: ShardCommit[] = []
    const errorsByCode: Record<string, number> = {}
    const state = (): ProgressState => {
      const elapsedS = (Date.now() - startedAt.getTime()) / 1000
      const rowsDone = writeStage.recordsOut
      return {
        rowsTotal,
        rowsDone,
        shardsTotal: planned.length,
        shardsDone: commits.length,
        shardsSkipped: skipped,
        elapsedS,
        rowsPerS: elapsedS > 0 ? rowsDone / elapsedS : 0,
        stages: metrics.snapshot(),
      }
    }
    options.progress?.start?.(state(), stored)

    let interrupted = false
    await new Promise<void>((resolve, reject) => {
      let subscription: Subscription | undefined
      const ticker = setInterval(() => options.progress?.update?.(state()), options.progressIntervalMs ?? 1000)
      const cleanup = () => {
        clearInterval(ticker)
        options.signal?.removeEventListener('abort', onAbort)
      }
      const onAbort = () => {
        interrupted = true
        subscription?.unsubscribe()
        cleanup()
        const reason = options.signal?.reason
        reject(reason instanceof RunInterruptedError ? reason : new RunInterruptedError(typeof reason === 'string' ? reason : 'abort'))
      }
      if (options.signal?.aborted) {
        onAbort()
        return
      }
      options.signal?.addEventListener('abort', onAbort, { once: true })
      subscription = readShards(pending, { ...readOptions, inFlight, metrics })
        .pipe(
          definition.stages(config, { metrics, inFlight }),
          tap((record: R | ErrorRecord | ShardNotice) => {
            if (record.kind === 'error') {
              const code = (record as ErrorRecord).code
              errorsByCode[code] = (errorsByCode[code] ?? 0) + 1
            }
          }),
          writeShards<R>(options.outDir, {
            columns: definition.columns(config),
            configHash: hash,
            config: output,
            inFlight,
            metrics,
            lock: false,
            createdBy: `evflow ${EVFLOW_VERSION}`,
          }),
        )
        .subscribe({
          next: (commit) => {
            commits.push(commit)
            options.progress?.shard?.(commit)
          },
          error: (error: unknown) => {
            cleanup()
            reject(error)
          },
          complete: () => {
            cleanup()
            options.progress?.update?.(state())
            resolve()
          },
        })
    }).catch(async (error: unknown) => {
      if (!interrupted) throw error
      await writeSummary()
      throw error
    })

    async function writeSummary(): Promise<RunSummary> {
      const finishedAt = new Date()
      const committed = commits.filter((c): c is Extract<ShardCommit, { status: 'committed' }> => c.status === 'committed')
      const failed = commits.filter((c): c is Extract<ShardCommit, { status: 'failed' }> => c.status === 'failed')
      const durationS = (finishedAt.getTime() - startedAt.getTime()) / 1000
      const rowsIn = committed.reduce((n, c) => n + c.rowsIn, 0)
      const summary: RunSummary = {
        evflow: EVFLOW_VERSION,
        pipeline: definition.name,
        config: stored,
        configHash: hash,
        outDir: options.outDir,
        startedAt: startedAt.toISOString(),
        finishedAt: finishedAt.toISOString(),
        durationS,
        interrupted,
        shards: { total: planned.length, skipped, committed: committed.length, failed: failed.length },
        rows: { in: rowsIn, ok: committed.reduce((n, c) => n + c.rowsOk, 0), error: committed.reduce((n, c) => n + c.rowsError, 0) },
        errorsByCode,
        rowsPerS: durationS > 0 ? Math.round((rowsIn / durationS) * 10) / 10 : 0,
        failedShards: failed.map((f) => ({ shard: f.shard, input: f.input, error: f.error })),
        committed: committed.map((c) => ({ shard: c.shard, output: c.output, rowsIn: c.rowsIn, rowsOk: c.rowsOk, rowsError: c.rowsError })),
        stages: metrics.snapshot(),
        inFlightPeakRecords: inFlight.peakRecords,
        peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
      }
      await writeFileAtomic(layout, layout.summary, `${JSON.stringify(summary, null, 2)}\n`)
      return summary
    }

    const summary = await writeSummary()
    options.progress?.finish?.(summary)
    return summary
  } finally {
    lock?.release()
  }
}
