/**
 * Running a pipeline over shards into an output folder: plan the shards, refuse an output folder that
 * overlaps the inputs, lock the folder, skip the shards already committed for this input and config
 * (verified by sha256), set aside the outputs that are not part of this plan, stream the rest through
 * `readShards → stages → writeShards` with a bound on work in flight, report progress, stop cleanly on a
 * signal, and write the manifest (`_evflow/manifest.json`) and the run summary.
 */
import { Subscription, tap } from 'rxjs'

import { readShards } from '../operators/read-shards.js'
import { writeShards, type ShardCommit } from '../operators/write-shards.js'
import { RunInterruptedError } from '../src/errors.js'
import {
  ensureLayout,
  isCommitted,
  makeManifest,
  outputLayout,
  planId,
  removeStaleTemps,
  setAsideStale,
  writeFileAtomic,
  writeManifest,
  type ManifestShard,
  type OutputLayout,
} from '../src/parquet/commit.js'
import { checkOutputFolder } from '../src/parquet/inputs.js'
import { planShards, readingOf, type PlannedShard, type ShardColumns, type ShardReading, type ShardSelection } from '../src/parquet/shards.js'
import type { ErrorRecord, KeyedRecord, ShardNotice } from '../src/records.js'
import { InFlight } from '../src/engine/in-flight.js'
import { acquireFolderLock } from '../src/engine/lock.js'
import { RunMetrics, type StageSnapshot } from '../src/engine/metrics.js'
import { checkPlan } from './check-plan.js'
import { configHash, mergeReadColumns, outputSettings, type PipelineDefinition } from './definition.js'

export const EVFLOW_VERSION = '0.1.0'

export interface RunOptions extends ShardSelection, Omit<ShardColumns, 'requireImage'>, ShardReading {
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
   * model's tensors) and the tensors of the model batches running (see `InFlight`). Default 256 MiB.
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
  /**
   * Outputs found in the folder that are not committed shards of this plan (other inputs, row ranges or
   * config), moved with their records to `folder` (under `_evflow/stale/`) so the folder reads right.
   */
  readonly setAside: { readonly folder: string | null; readonly shards: readonly string[] }
  readonly stages: readonly StageSnapshot[]
  readonly inFlightPeakRecords: number
  /** Peak resident set size of the process so far, in MiB. */
  readonly peakRssMiB: number
  /** What the pipeline says a user must know about the results (`PipelineDefinition.notices`), e.g. a synthetic-only model. */
  readonly notices: readonly string[]
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

/** Where a run that skipped every shard writes its summary: `_evflow/summary.skipped.json`, beside `summary.json`. */
export function skippedSummaryPath(summaryPath: string): string {
  return summaryPath.replace(/summary\.json$/, 'summary.skipped.json')
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
    ...readingOf(options),
  }
  const planned = options.plan ?? (await planShards(options.inputs, readOptions))
  checkOutputFolder(options.outDir, options.inputs, planned.map((p) => p.plan.info.path))
  await checkPlan(definition, config, planned, options)

  ensureLayout(layout)
  const lock = options.lock === false ? undefined : acquireFolderLock(layout.lock, options.outDir)
  try {
    await removeStaleTemps(layout, lock !== undefined)
    const pending: PlannedShard[] = []
    const valid = new Set<string>()
    let skipped = 0
    for (const shard of planned) {
      const committed = shard.plan.ok && (await isCommitted(layout, shard.plan.info, hash))
      if (committed) valid.add(shard.plan.info.name)
      if (committed && !options.overwrite) skipped += 1
      else pending.push(shard)
    }
    const setAside = await setAsideStale(layout, valid)
    const manifest = manifestWriter(layout, definition.name, hash, planned, valid)
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
            manifest.set(commit.shard, commit.status, commit.status === 'failed' ? commit.error : undefined)
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
      if (!interrupted) {
        await manifest.close().catch(() => {})
        throw error
      }
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
        setAside: { folder: setAside.folder ?? null, shards: setAside.shards },
        stages: metrics.snapshot(),
        inFlightPeakRecords: inFlight.peakRecords,
        peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
        notices: definition.notices?.(config) ?? [],
      }
      await manifest.close()
      // A run with nothing to do (every shard committed) keeps the summary of the run that did the work.
      await writeFileAtomic(layout, pending.length === 0 && planned.length > 0 ? skippedSummaryPath(layout.summary) : layout.summary, `${JSON.stringify(summary, null, 2)}\n`)
      return summary
    }

    const summary = await writeSummary()
    options.progress?.finish?.(summary)
    return summary
  } finally {
    lock?.release()
  }
}

/**
 * The manifest of a run's plan: written at once (committed shards as found), then at most once a second
 * as shards commit or fail, and at the end. Writes are serialised, so the last one written is the newest.
 */
function manifestWriter(layout: OutputLayout, pipeline: string, configHash: string, planned: readonly PlannedShard[], committed: ReadonlySet<string>) {
  const shards = new Map<string, ManifestShard>()
  for (const { plan } of planned) {
    const { info } = plan
    shards.set(info.name, {
      shard: info.name,
      file: `${info.name}.parquet`,
      input: info.path,
      rowStart: info.rowStart,
      rowEnd: info.rowEnd,
      rows: info.rows,
      fingerprint: info.fingerprint,
      ...(plan.ok ? { status: committed.has(info.name) ? 'committed' : 'pending' } : { status: 'failed', error: plan.error.message }),
    })
  }
  const plan = planId([...shards.values()], configHash)
  let chain: Promise<void> = Promise.resolve()
  let timer: NodeJS.Timeout | undefined
  const write = () => {
    timer = undefined
    const manifest = makeManifest({ plan, pipeline, configHash, shards: [...shards.values()] })
    chain = chain.then(() => writeManifest(layout, manifest))
    return chain
  }
  void write().catch(() => {})
  return {
    set(name: string, status: ManifestShard['status'], error?: string) {
      const shard = shards.get(name)
      if (!shard) return
      const { error: _previous, ...rest } = shard
      shards.set(name, { ...rest, status, ...(error === undefined ? {} : { error }) })
      timer ??= setTimeout(() => void write().catch(() => {}), 1000).unref()
    },
    /** Writes the final manifest; rejects when a write failed. */
    async close() {
      if (timer) clearTimeout(timer)
      await write()
    },
  }
}
