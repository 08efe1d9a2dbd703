/**
 * `evflow status` and `evflow cancel`: what the queue holds per run (shards queued, retrying, running,
 * done, failed; rows done, rows/s, ETA; last errors), one job in detail, and removing a run's pending jobs.
 */
import { Queue, type Job, type JobType } from 'bullmq'

import { PipelineConfigError, QueueError, describeError } from '../../src/errors.js'
import { commandConnection, describeQueue, type QueueAddress } from './connection.js'
import type { ShardJobData, ShardJobProgress, ShardJobResult } from './job.js'

type ShardJob = Job<ShardJobData, ShardJobResult>

/** Job states as `status` names them. */
export type ShardState = 'queued' | 'retrying' | 'running' | 'done' | 'failed'

const STATES: readonly [JobType, ShardState][] = [
  ['active', 'running'],
  ['waiting', 'queued'],
  ['prioritized', 'queued'],
  ['waiting-children', 'queued'],
  ['delayed', 'retrying'],
  ['completed', 'done'],
  ['failed', 'failed'],
]

export interface RunStatus {
  readonly run: string
  readonly pipeline: string
  readonly outDir: string
  readonly shards: Readonly<Record<ShardState, number>> & { readonly total: number }
  readonly rows: { readonly total: number; readonly done: number }
  /** Rows per second since the run's first shard started (until its last finished, when none runs). */
  readonly rowsPerS: number
  /** Seconds until the remaining rows are done at `rowsPerS`; null when unknown. */
  readonly etaS: number | null
  /** Done shards that were already committed when their job started. */
  readonly skipped: number
  /** Failed shards and shards being retried, latest first (at most 5). */
  readonly lastErrors: readonly { readonly job: string; readonly shard: string; readonly state: ShardState; readonly attempts: number; readonly error: string; readonly at: string | null }[]
}

export interface QueueStatus {
  readonly queue: string
  readonly runs: readonly RunStatus[]
}

export interface JobDetail {
  readonly job: string
  readonly run: string
  readonly shard: string
  readonly input: string
  readonly outDir: string
  readonly state: ShardState
  readonly attemptsMade: number
  readonly attemptsStarted: number
  readonly attempts: number
  readonly stalled: number
  readonly progress: ShardJobProgress | null
  readonly worker: string | null
  readonly submittedAt: string
  readonly startedAt: string | null
  readonly finishedAt: string | null
  readonly error: string | null
  readonly result: ShardJobResult | null
}

async function withQueue<T>(address: QueueAddress, action: (queue: Queue<ShardJobData, ShardJobResult>) => Promise<T>): Promise<T> {
  const queue = new Queue<ShardJobData, ShardJobResult>(address.name, { connection: commandConnection(address) })
  queue.on('error', () => {})
  let connected = false
  try {
    await queue.waitUntilReady()
    connected = true
    return await action(queue)
  } catch (error) {
    if (error instanceof PipelineConfigError) throw error
    throw new QueueError(describeQueue(address), describeError(error), { cause: error })
  } finally {
    // A connection that never came up has given up already; closing it would arm a 2 s timer in ioredis.
    if (connected) await queue.close().catch(() => {})
  }
}

async function allJobs(queue: Queue<ShardJobData, ShardJobResult>): Promise<{ job: ShardJob; state: ShardState }[]> {
  const out: { job: ShardJob; state: ShardState }[] = []
  const seen = new Set<string>()
  for (const [type, state] of STATES) {
    for (const job of (await queue.getJobs([type], 0, -1, true)) as ShardJob[]) {
      // A job can move between two reads; count it once, in its first state seen.
      if (!job?.id || seen.has(job.id) || !isShardJob(job)) continue
      seen.add(job.id)
      out.push({ job, state })
    }
  }
  return out
}

function isShardJob(job: ShardJob): boolean {
  const data = job.data as Partial<ShardJobData> | undefined
  return typeof data?.run === 'string' && typeof data.shard === 'string'
}

const iso = (ms: number | undefined) => (ms ? new Date(ms).toISOString() : null)

/** Status of every run in the queue, or of the runs whose id starts with `run`. */
export async function queueStatus(address: QueueAddress, run?: string, now = Date.now()): Promise<QueueStatus> {
  return withQueue(address, async (queue) => {
    const jobs = await allJobs(queue)
    const byRun = new Map<string, { job: ShardJob; state: ShardState }[]>()
    for (const entry of jobs) {
      if (run !== undefined && !entry.job.data.run.startsWith(run)) continue
      const list = byRun.get(entry.job.data.run) ?? []
      list.push(entry)
      byRun.set(entry.job.data.run, list)
    }
    const runs = [...byRun.values()].map((entries) => summarizeRun(entries, now))
    runs.sort((a, b) => a.run.localeCompare(b.run))
    return { queue: describeQueue(address), runs }
  })
}

function summarizeRun(entries: readonly { job: ShardJob; state: ShardState }[], now: number): RunStatus {
  const first = entries[0].job.data
  const shards: Record<ShardState, number> = { queued: 0, retrying: 0, running: 0, done: 0, failed: 0 }
  let rowsTotal = 0
  let rowsDone = 0
  let rowsWorked = 0
  let skipped = 0
  let startedAt = Infinity
  let finishedAt = 0
  for (const { job, state } of entries) {
    shards[state] += 1
    const rows = job.data.rowCount
    rowsTotal += rows
    if (state === 'done') {
      const result = job.returnvalue
      rowsDone += result?.rowsIn ?? rows
      if (result?.status === 'skipped') skipped += 1
      else {
        rowsWorked += result?.rowsIn ?? rows
        if (job.processedOn) startedAt = Math.min(startedAt, job.processedOn)
        if (job.finishedOn) finishedAt = Math.max(finishedAt, job.finishedOn)
      }
    } else if (state === 'running') {
      const progress = job.progress as Partial<ShardJobProgress> | undefined
      const done = typeof progress?.rowsDone === 'number' ? Math.min(progress.rowsDone, rows) : 0
      rowsDone += done
      rowsWorked += done
      if (job.processedOn) startedAt = Math.min(startedAt, job.processedOn)
      finishedAt = now
    }
  }
  const windowS = Number.isFinite(startedAt) && finishedAt > startedAt ? (finishedAt - startedAt) / 1000 : 0
  const rowsPerS = windowS > 0 ? rowsWorked / windowS : 0
  const pending = shards.queued + shards.retrying + shards.running
  const etaS = pending === 0 ? 0 : rowsPerS > 0 ? Math.max(0, rowsTotal - rowsDone) / rowsPerS : null
  const lastErrors = entries
    .filter(({ job, state }) => (state === 'failed' || state === 'retrying' || state === 'queued') && job.failedReason)
    .sort((a, b) => (b.job.finishedOn ?? 0) - (a.job.finishedOn ?? 0))
    .slice(0, 5)
    .map(({ job, state }) => ({ job: job.id!, shard: job.data.shard, state, attempts: job.attemptsMade, error: job.failedReason, at: iso(job.finishedOn) }))
  return {
    run: first.run,
    pipeline: first.pipeline,
    outDir: first.outDir,
    shards: { ...shards, total: entries.length },
    rows: { total: rowsTotal, done: rowsDone },
    rowsPerS: Math.round(rowsPerS * 10) / 10,
    etaS: etaS === null ? null : Math.round(etaS),
    skipped,
    lastErrors,
  }
}

/** One job in detail, or undefined when the queue has no job with this id. */
export async function jobDetail(address: QueueAddress, id: string): Promise<JobDetail | undefined> {
  return withQueue(address, async (queue) => {
    const job = (await queue.getJob(id)) as ShardJob | undefined
    if (!job || !isShardJob(job)) return undefined
    const raw = await job.getState()
    const state = STATES.find(([type]) => type === raw)?.[1] ?? 'queued'
    const progress = job.progress as Partial<ShardJobProgress> | undefined
    return {
      job: id,
      run: job.data.run,
      shard: job.data.shard,
      input: job.data.input,
      outDir: job.data.outDir,
      state,
      attemptsMade: job.attemptsMade,
      attemptsStarted: job.attemptsStarted,
      attempts: job.opts.attempts ?? 1,
      stalled: job.stalledCounter,
      progress: typeof progress?.rowsDone === 'number' ? (progress as ShardJobProgress) : null,
      worker: (job as { processedBy?: string }).processedBy ?? null,
      submittedAt: new Date(job.timestamp).toISOString(),
      startedAt: iso(job.processedOn),
      finishedAt: iso(job.finishedOn),
      error: job.failedReason || null,
      result: job.returnvalue ?? null,
    }
  })
}

export interface CancelReport {
  readonly queue: string
  /** Jobs removed (queued or waiting for a retry). */
  readonly removed: number
  /** Jobs running now: they finish (their results are kept). */
  readonly running: number
  /** Finished jobs' records removed (`purge`). */
  readonly purged: number
}

/**
 * Removes the pending jobs (queued, waiting for a retry) of the runs whose id starts with `run`, or of every
 * run when `run` is undefined. Running jobs finish. `purge` also removes finished jobs' records, so the run
 * can be submitted afresh (committed shards are still skipped).
 */
export async function cancelRun(address: QueueAddress, run: string | undefined, purge = false): Promise<CancelReport> {
  return withQueue(address, async (queue) => {
    let removed = 0
    let running = 0
    let purged = 0
    for (const { job, state } of await allJobs(queue)) {
      if (run !== undefined && !job.data.run.startsWith(run)) continue
      if (state === 'running') {
        running += 1
        continue
      }
      const finished = state === 'done' || state === 'failed'
      if (finished && !purge) continue
      try {
        await job.remove()
        if (finished) purged += 1
        else removed += 1
      } catch {
        // It started meanwhile (locked): it finishes.
        running += 1
      }
    }
    return { queue: describeQueue(address), removed, running, purged }
  })
}

function duration(seconds: number | null): string {
  if (seconds === null) return 'unknown'
  if (seconds < 90) return `${Math.round(seconds)}s`
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)}min`
  return `${(seconds / 3600).toFixed(1)}h`
}

export function formatStatus(status: QueueStatus): string {
  if (status.runs.length === 0) return `${status.queue}: no evflow jobs\n`
  const lines = [`${status.queue}`]
  for (const r of status.runs) {
    const s = r.shards
    const pct = r.rows.total > 0 ? ` (${((100 * r.rows.done) / r.rows.total).toFixed(1)}%)` : ''
    lines.push(
      '',
      `run ${r.run}  ${r.pipeline} -> ${r.outDir}`,
      `  shards  ${s.total} total: ${s.queued} queued, ${s.retrying} retrying, ${s.running} running, ${s.done} done${r.skipped > 0 ? ` (${r.skipped} already committed)` : ''}, ${s.failed} failed`,
      `  rows    ${r.rows.done} of ${r.rows.total}${pct}, ${r.rowsPerS} rows/s, ETA ${s.queued + s.retrying + s.running === 0 ? 'done' : duration(r.etaS)}`,
    )
    if (r.lastErrors.length > 0) {
      lines.push('  last errors')
      for (const e of r.lastErrors) lines.push(`    ${e.shard} [${e.state}, ${e.attempts} attempt${e.attempts === 1 ? '' : 's'}] ${e.error}`)
    }
  }
  return `${lines.join('\n')}\n`
}

export function formatJob(detail: JobDetail): string {
  const lines = [
    `job ${detail.job}  (run ${detail.run})`,
    `  shard     ${detail.shard}  <- ${detail.input}`,
    `  output    ${detail.outDir}`,
    `  state     ${detail.state}; attempts ${detail.attemptsMade} of ${detail.attempts} (${detail.attemptsStarted} started, ${detail.stalled} stalled)`,
  ]
  if (detail.progress) lines.push(`  progress  ${detail.progress.rowsDone} of ${detail.progress.rowsTotal} rows`)
  if (detail.worker) lines.push(`  worker    ${detail.worker}`)
  lines.push(`  submitted ${detail.submittedAt}${detail.startedAt ? `, started ${detail.startedAt}` : ''}${detail.finishedAt ? `, finished ${detail.finishedAt}` : ''}`)
  if (detail.result) lines.push(`  result    ${detail.result.status}: ${detail.result.output}, ${detail.result.rowsIn} rows (${detail.result.rowsOk} ok, ${detail.result.rowsError} error) in ${detail.result.durationMs} ms on ${detail.result.worker}`)
  if (detail.error) lines.push(`  error     ${detail.error}`)
  return `${lines.join('\n')}\n`
}
