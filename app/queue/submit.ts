/**
 * `evflow submit`: plans the shards of a run exactly as a single-process run would (same naming rule, row
 * ranges, fingerprints and config hash), optionally splits big shards into row-group ranges, prepares the
 * output folder (refuses one that overlaps the inputs, sets aside outputs that are not committed shards of
 * this plan, writes the plan as `_evflow/manifest.json`), and adds one job per shard. Job ids derive from
 * (output folder, shard name, input fingerprint, config hash), so submitting the same run again adds
 * nothing; a changed input gets a new job.
 */
import { resolve } from 'node:path'
import { Queue, type Job } from 'bullmq'

import { runConfig, type RunOptions } from '../../pipelines/run.js'
import { mergeReadColumns, type PipelineDefinition } from '../../pipelines/definition.js'
import { acquireFolderLock } from '../../src/engine/lock.js'
import { PipelineConfigError, QueueError, describeError } from '../../src/errors.js'
import {
  committedRecord,
  ensureLayout,
  makeManifest,
  outputLayout,
  planId,
  setAsideStale,
  writeManifest,
  type ManifestShard,
  type SetAside,
} from '../../src/parquet/commit.js'
import { fileRows, openParquet, rowGroupRanges } from '../../src/parquet/file.js'
import { assignOutputNames, checkOutputFolder, type ShardIdentity } from '../../src/parquet/inputs.js'
import { planShards } from '../../src/parquet/shards.js'
import { checkPlan } from '../../pipelines/check-plan.js'
import { commandConnection, describeQueue, type QueueAddress } from './connection.js'
import { JOB_FORMAT, runId, shardJobId, type ShardJobData, type ShardJobResult } from './job.js'

export interface SubmitOptions {
  readonly address: QueueAddress
  readonly definition: PipelineDefinition
  /** The resolved, frozen pipeline config. */
  readonly config: object
  readonly inputs: readonly string[]
  /** Output folder; must be on a file system every worker mounts at the same path. */
  readonly outDir: string
  /** Read options (as for a single-process run). */
  readonly read?: Pick<RunOptions, 'imageColumn' | 'idColumn' | 'keep' | 'rows' | 'rowGroups' | 'limit' | 'maxRecordsInFlight'>
  /** Split shards with more rows than this into row-group ranges of about this many rows. Default: never. */
  readonly maxRowsPerJob?: number
  /** Attempts per shard before it is kept failed. Default 3. */
  readonly attempts?: number
  /** First retry delay in ms, doubling after each failure. Default 10000. */
  readonly backoffMs?: number
  /** Put this run's failed shards back in the queue (a new set of attempts). Default false. */
  readonly retryFailed?: boolean
}

export interface SubmitReport {
  readonly run: string
  readonly queue: string
  readonly pipeline: string
  readonly configHash: string
  readonly outDir: string
  readonly jobs: number
  readonly rows: number
  /** Jobs added by this call. */
  readonly added: number
  /** Jobs already in the queue (any state), left as they are. */
  readonly existing: number
  /** Failed jobs put back in the queue (`retryFailed`). */
  readonly retried: number
  /** Shards whose file could not be read at submit; queued anyway (a worker retries, then keeps the error). */
  readonly unreadable: readonly { readonly shard: string; readonly input: string; readonly error: string }[]
  /** Outputs that were in the folder but are not committed shards of this plan, moved under `_evflow/stale/`. */
  readonly setAside: { readonly folder: string | null; readonly shards: readonly string[] }
}

/** Builds the jobs of a run without touching the queue. */
export async function planJobs(options: Omit<SubmitOptions, 'address'>): Promise<{ run: string; configHash: string; outDir: string; jobs: ShardJobData[]; unreadable: SubmitReport['unreadable'] }> {
  const { definition, config } = options
  const read = options.read ?? {}
  if (options.maxRowsPerJob !== undefined && (!Number.isInteger(options.maxRowsPerJob) || options.maxRowsPerJob < 1)) {
    throw new PipelineConfigError('--max-rows-per-job', `must be a positive integer, got ${options.maxRowsPerJob}`)
  }
  const outDir = resolve(options.outDir)
  const columns = {
    ...(read.imageColumn === undefined ? {} : { imageColumn: read.imageColumn }),
    ...(read.idColumn === undefined ? {} : { idColumn: read.idColumn }),
    ...(read.keep === undefined ? {} : { keep: [...read.keep] }),
  }
  const { hash } = runConfig(definition, config, { inputs: options.inputs, outDir, ...columns })
  const run = runId(outDir, definition.name, hash)
  const planned = await planShards(options.inputs, {
    ...mergeReadColumns(definition.read(config), columns),
    ...(read.rows === undefined ? {} : { rows: read.rows }),
    ...(read.rowGroups === undefined ? {} : { rowGroups: read.rowGroups }),
    ...(read.limit === undefined ? {} : { limit: read.limit }),
  })
  checkOutputFolder(outDir, options.inputs, planned.map((p) => p.plan.info.path))
  await checkPlan(definition, config, planned, { outDir, ...columns })
  const common = {
    format: JOB_FORMAT,
    run,
    pipeline: definition.name,
    config: { ...config } as Record<string, unknown>,
    read: { ...columns, ...(read.maxRecordsInFlight === undefined ? {} : { maxRecordsInFlight: read.maxRecordsInFlight }) },
    outDir,
    configHash: hash,
  } as const
  if (options.maxRowsPerJob === undefined) {
    // The plan's own names: planShards named its shards over the whole plan, as a single-process run does.
    const jobs: ShardJobData[] = []
    const unreadable: { shard: string; input: string; error: string }[] = []
    for (const { plan } of planned) {
      const { info } = plan
      if (!plan.ok) {
        unreadable.push({ shard: info.name, input: info.path, error: plan.error.message })
        jobs.push({ ...common, input: info.path, shard: info.name, index: info.index, rows: null, rowCount: 0, fingerprint: '' })
      } else {
        jobs.push({ ...common, input: info.path, shard: info.name, index: info.index, rows: [info.rowStart, info.rowEnd], rowCount: info.rows, fingerprint: info.fingerprint })
      }
    }
    return { run, configHash: hash, outDir, jobs, unreadable }
  }

  // Split big shards along row groups; then name every job's shard in one pass over the whole plan, by the
  // same rule (a part of a file is named like a single-process `--rows` run of it).
  const parts: { job: Omit<ShardJobData, 'shard'>; identity: ShardIdentity; error?: string }[] = []
  for (const { plan } of planned) {
    const { info } = plan
    if (!plan.ok) {
      parts.push({ job: { ...common, input: info.path, index: info.index, rows: null, rowCount: 0, fingerprint: '' }, identity: { path: info.path }, error: plan.error.message })
      continue
    }
    // (A file that became unreadable since it was planned: its worker reports it; name it as a whole file.)
    const total = await totalRows(info.path).catch(() => info.rowEnd)
    const whole = info.rowStart === 0 && info.rowEnd === total
    if (info.rows <= options.maxRowsPerJob) {
      parts.push({
        job: { ...common, input: info.path, index: info.index, rows: [info.rowStart, info.rowEnd], rowCount: info.rows, fingerprint: info.fingerprint },
        identity: whole ? { path: info.path } : { path: info.path, rows: [info.rowStart, info.rowEnd] },
      })
      continue
    }
    for (const [start, end] of await splitByRowGroups(info.path, info.rowStart, info.rowEnd, options.maxRowsPerJob)) {
      // Plan the range as a worker will, for its fingerprint.
      const [part] = await planShards([info.path], { ...mergeReadColumns(definition.read(config), columns), rows: [start, end] })
      const identity: ShardIdentity = { path: info.path, rows: [start, end] }
      if (!part.plan.ok) {
        parts.push({ job: { ...common, input: info.path, index: info.index, rows: [start, end], rowCount: end - start, fingerprint: '' }, identity, error: part.plan.error.message })
      } else {
        parts.push({ job: { ...common, input: info.path, index: info.index, rows: [start, end], rowCount: part.plan.info.rows, fingerprint: part.plan.info.fingerprint }, identity })
      }
    }
  }
  const names = assignOutputNames(parts.map((p) => p.identity))
  const jobs = parts.map((p, i): ShardJobData => ({ ...p.job, shard: names[i] }))
  const unreadable = parts.flatMap((p, i) => (p.error === undefined ? [] : [{ shard: names[i], input: p.job.input, error: p.error }]))
  return { run, configHash: hash, outDir, jobs, unreadable }
}

/** Rows in the file at `path` (its footer's count). */
async function totalRows(path: string): Promise<number> {
  const file = await openParquet(path)
  try {
    return fileRows(file.metadata)
  } finally {
    await file.close().catch(() => {})
  }
}

/**
 * Prepares the output folder for a submitted plan, under the folder lock (so not while a single-process run
 * writes it): sets aside every output that is not a committed shard of the plan (verified by sha256) and
 * writes the plan as `_evflow/manifest.json`, which workers keep up to date as they publish.
 */
export async function prepareOutput(planned: { outDir: string; configHash: string; pipeline: string; jobs: readonly ShardJobData[] }): Promise<SetAside> {
  const layout = outputLayout(planned.outDir)
  ensureLayout(layout)
  const lock = acquireFolderLock(layout.lock, planned.outDir)
  try {
    const valid = new Set<string>()
    const shards: ManifestShard[] = []
    for (const job of planned.jobs) {
      const committed = job.fingerprint !== '' && (await committedRecord(layout, job.shard, job.fingerprint, planned.configHash)) !== undefined
      if (committed) valid.add(job.shard)
      const [rowStart, rowEnd] = job.rows ?? [0, 0]
      shards.push({ shard: job.shard, file: `${job.shard}.parquet`, input: job.input, rowStart, rowEnd, rows: job.rowCount, fingerprint: job.fingerprint, status: committed ? 'committed' : 'pending' })
    }
    const setAside = await setAsideStale(layout, valid)
    await writeManifest(layout, makeManifest({ plan: planId(shards, planned.configHash), pipeline: planned.pipeline, configHash: planned.configHash, shards }))
    return setAside
  } finally {
    lock.release()
  }
}

/** `[start, end)` row ranges along row-group boundaries, each of at least `maxRows` rows except the last. */
async function splitByRowGroups(path: string, rowStart: number, rowEnd: number, maxRows: number): Promise<[number, number][]> {
  const file = await openParquet(path)
  try {
    const ranges: [number, number][] = []
    let start = rowStart
    for (const group of rowGroupRanges(file.metadata)) {
      const end = Math.min(group.end, rowEnd)
      if (end <= start) continue
      if (end - start >= maxRows) {
        ranges.push([start, end])
        start = end
      }
    }
    if (start < rowEnd) ranges.push([start, rowEnd])
    return ranges
  } finally {
    await file.close().catch(() => {})
  }
}

/** Adds a run's shard jobs to the queue (idempotently). */
export async function submitShards(options: SubmitOptions): Promise<SubmitReport> {
  const queueLabel = describeQueue(options.address)
  const planned = await planJobs(options)
  const setAside = await prepareOutput({ ...planned, pipeline: options.definition.name })
  const queue = new Queue<ShardJobData, ShardJobResult>(options.address.name, { connection: commandConnection(options.address) })
  queue.on('error', () => {})
  const jobOptions = {
    attempts: options.attempts ?? 3,
    backoff: { type: 'exponential', delay: options.backoffMs ?? 10_000 },
    removeOnComplete: false,
    removeOnFail: false,
  } as const
  let added = 0
  let existing = 0
  let retried = 0
  let connected = false
  try {
    await queue.waitUntilReady()
    connected = true
    const fresh: ShardJobData[] = []
    for (const batch of chunks(planned.jobs, 200)) {
      const found = await Promise.all(batch.map((data) => queue.getJob(shardJobId(data))))
      for (const [i, job] of found.entries()) {
        if (!job) {
          fresh.push(batch[i])
          continue
        }
        existing += 1
        if (options.retryFailed && (await job.isFailed())) {
          await (job as Job).retry('failed')
          retried += 1
        }
      }
    }
    for (const batch of chunks(fresh, 500)) {
      await queue.addBulk(batch.map((data) => ({ name: data.shard, data, opts: { ...jobOptions, jobId: shardJobId(data) } })))
      added += batch.length
    }
  } catch (error) {
    throw new QueueError(queueLabel, `cannot submit: ${describeError(error)}`, { cause: error })
  } finally {
    // A connection that never came up has given up already; closing it would arm a 2 s timer in ioredis.
    if (connected) await queue.close().catch(() => {})
  }
  return {
    run: planned.run,
    queue: queueLabel,
    pipeline: options.definition.name,
    configHash: planned.configHash,
    outDir: planned.outDir,
    jobs: planned.jobs.length,
    rows: planned.jobs.reduce((n, j) => n + j.rowCount, 0),
    added,
    existing,
    retried,
    unreadable: planned.unreadable,
    setAside: { folder: setAside.folder ?? null, shards: setAside.shards },
  }
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}
