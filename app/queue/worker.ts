/**
 * `evflow worker`: takes shard jobs from the queue and runs them ({@link runShardJob}), renewing each
 * job's lock while it runs, reporting rows done as the job's progress, and failing a job with its reason
 * so BullMQ retries it with backoff and keeps it failed after its last attempt.
 *
 * Failures and what happens:
 * - the pipeline or config is unusable on this worker, or the input changed since submit: failed at once
 *   (no retry: it would fail the same way);
 * - the input cannot be read (a malformed file, a file system error), or parsing one of its footers or row
 *   groups overran the read time budget (`readTimeoutMs`: the parser is stopped, the job fails with
 *   reason `timeout`, this worker stays healthy for the next job): retried with backoff, then kept failed
 *   with its last error;
 * - the worker dies or stops renewing its lock (SIGKILL, a frozen machine, a network partition): the lock
 *   lapses, another worker's stalled check puts the job back in the queue, and another worker runs it;
 * - the lock lapses while this worker still runs the job (SIGSTOP, a long GC pause): lock renewal fails,
 *   the run is aborted and its staging folder discarded; if it had already finished, its publish finds the
 *   shard committed (or commits first), so the shard is still published once;
 * - Redis goes away: jobs in progress keep running, the connection is retried forever, and progress and
 *   lock renewals resume when Redis is back (if the lock lapsed meanwhile, see the previous case);
 * - SIGTERM / SIGINT: no new job is taken; the current shards finish within `stopTimeoutMs`, or are
 *   aborted and put back in the queue without using an attempt.
 */
import { hostname } from 'node:os'
import { resolve } from 'node:path'
import { Queue, UnrecoverableError, WaitingError, Worker, type Job } from 'bullmq'

import { PipelineConfigError, QueueError, describeError } from '../../src/errors.js'
import { ParquetReader, type DebugSpin } from '../../src/parquet/reader.js'
import { describeQueue, workerConnection, type QueueAddress } from './connection.js'
import { shardJobSchema, type ShardJobData, type ShardJobResult } from './job.js'
import { runShardJob } from './run-shard.js'
import { FileShardStore, type ShardStore } from './store.js'
import { SeriesRecorder } from '../report/series.js'

/** How long current shards may take to finish after SIGTERM before they are put back in the queue. */
export const DEFAULT_STOP_TIMEOUT_MS = 2000

export interface WorkerOptions {
  readonly address: QueueAddress
  /** Shards run at once by this process. Default 1. */
  readonly concurrency?: number
  /** How long a job's lock lasts without renewal, in ms (renewed every half of it). Default 30000. */
  readonly lockMs?: number
  /** How often this worker looks for jobs whose lock lapsed, in ms. Default 30000. */
  readonly stalledIntervalMs?: number
  /** How many times a job may be recovered from a lapsed lock before it is failed. Default 2. */
  readonly maxStalled?: number
  /**
   * On stop, how long current shards may take to finish before they are put back in the queue, in ms. Default
   * 2000, so that SIGTERM ends a worker within 3 s whatever it runs (a shard put back is redone by another
   * worker; raise it where shards are short and redoing them costs more than a longer stop).
   */
  readonly stopTimeoutMs?: number
  /** Stop when the queue holds no waiting, delayed or running job. Default false. */
  readonly exitWhenIdle?: boolean
  /** How often a running job's progress is reported, in ms. Default 1000. */
  readonly progressIntervalMs?: number
  /** Testing only: pause this long after each row (see `RunShardContext.debugRowDelayMs`). Default 0. */
  readonly debugRowDelayMs?: number
  /**
   * Most milliseconds to parse one footer or row group of a shard; past it the parser is stopped
   * and the job fails with reason `timeout` (retried with backoff like any unreadable shard). Default 30000.
   */
  readonly readTimeoutMs?: number
  /** Memory budget of one parse, in MiB (see `ParquetReader`). Default 512. */
  readonly readMemoryMb?: number
  /** Testing only: see `ParquetReaderOptions.debugSpin`. */
  readonly debugSpin?: DebugSpin
  /** Name stored on jobs this worker runs. Default `host:pid`. */
  readonly name?: string
  /** Receives one event per line-worthy happening. Default: none. */
  readonly log?: (event: WorkerEvent) => void
}

export type WorkerEvent =
  | { readonly event: 'ready'; readonly worker: string; readonly queue: string; readonly concurrency: number }
  | { readonly event: 'job-start'; readonly job: string; readonly shard: string; readonly attempt: number }
  | ({ readonly event: 'job-done'; readonly job: string } & ShardJobResult)
  | { readonly event: 'job-failed'; readonly job: string; readonly shard: string; readonly attempt: number; readonly retry: boolean; readonly error: string }
  | { readonly event: 'job-released'; readonly job: string; readonly shard: string }
  | { readonly event: 'lock-lost'; readonly job: string; readonly shard: string }
  | { readonly event: 'queue-error'; readonly error: string }
  | { readonly event: 'stopping'; readonly reason: string; readonly running: number }
  | { readonly event: 'stopped'; readonly worker: string; readonly completed: number; readonly failedAttempts: number }

export interface WorkerReport {
  /** Jobs this worker completed. */
  readonly completed: number
  /** Attempts that failed on this worker (a job retried three times counts three). */
  readonly failedAttempts: number
}

export interface RunningWorker {
  readonly name: string
  /** Stops taking jobs; current shards finish within `stopTimeoutMs` (or at once when `release`), else they
   *  are put back in the queue. Resolves when the worker has closed. */
  stop(reason: string, release?: boolean): Promise<WorkerReport>
  /** Resolves when the worker has stopped (by `stop`, or by itself when `exitWhenIdle`). */
  readonly done: Promise<WorkerReport>
}

interface ActiveJob {
  readonly job: Job<ShardJobData, ShardJobResult>
  readonly token: string | undefined
  readonly controller: AbortController
  readonly shard: string
}

/** Why a run was aborted. */
const RELEASE = 'release'
const LOCK_LOST = 'lock-lost'

/** Starts a worker; it runs until stopped. Throws `QueueError` when Redis cannot be reached at start. */
export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  ParquetReader.validate(options)
  const name = options.name ?? `${hostname()}:${process.pid}`
  const queueLabel = describeQueue(options.address)
  const log = options.log ?? (() => {})
  const lockMs = options.lockMs ?? 30_000
  const stores = new Map<string, ShardStore>()
  // This worker's time series in each output folder it writes, for `evflow report` (per-worker throughput).
  const series = new Map<string, SeriesRecorder>()
  const active = new Map<string, ActiveJob>()
  let completed = 0
  let failedAttempts = 0

  const storeFor = async (outDir: string): Promise<ShardStore> => {
    const key = resolve(outDir)
    let store = stores.get(key)
    if (!store) {
      store = new FileShardStore(key)
      stores.set(key, store)
      await store.reap()
    }
    return store
  }

  const processor = async (job: Job<ShardJobData, ShardJobResult>, token?: string): Promise<ShardJobResult> => {
    const parsed = shardJobSchema.safeParse(job.data)
    if (!parsed.success) throw new UnrecoverableError(`not an evflow shard job: ${parsed.error.issues[0]?.message ?? 'invalid data'}`)
    const data = parsed.data
    const id = job.id ?? data.shard
    const controller = new AbortController()
    active.set(id, { job, token, controller, shard: data.shard })
    log({ event: 'job-start', job: id, shard: data.shard, attempt: job.attemptsMade + 1 })
    try {
      const store = await storeFor(data.outDir)
      const recorder = series.get(resolve(data.outDir)) ?? new SeriesRecorder(resolve(data.outDir), { source: 'worker', name })
      series.set(resolve(data.outDir), recorder)
      const tracked = recorder.track()
      const result = await runShardJob(data, {
        progress: tracked,
        store,
        attempt: `${id}.${job.attemptsStarted}`,
        worker: name,
        signal: controller.signal,
        onProgress: (progress) => {
          job.updateProgress(progress).catch(() => {})
        },
        progressIntervalMs: options.progressIntervalMs ?? 1000,
        debugRowDelayMs: options.debugRowDelayMs ?? 0,
        ...(options.readTimeoutMs === undefined ? {} : { readTimeoutMs: options.readTimeoutMs }),
        ...(options.readMemoryMb === undefined ? {} : { readMemoryMb: options.readMemoryMb }),
        ...(options.debugSpin === undefined ? {} : { debugSpin: options.debugSpin }),
      }).finally(() => tracked.done())
      log({ event: 'job-done', job: id, ...result })
      return result
    } catch (error) {
      const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined
      if (reason === RELEASE) {
        // Back to the queue without using an attempt; if Redis cannot be told now, the lock lapses and the
        // stalled check puts it back.
        await Promise.race([job.moveToWait(token).catch(() => {}), new Promise((r) => setTimeout(r, 500).unref())])
        log({ event: 'job-released', job: id, shard: data.shard })
        throw new WaitingError()
      }
      const message = reason === LOCK_LOST ? 'lock lost: another worker took this shard; this attempt was discarded' : describeError(error)
      const permanent = error instanceof PipelineConfigError
      const retry = !permanent && reason !== LOCK_LOST && job.attemptsMade + 1 < (job.opts.attempts ?? 1)
      log({ event: 'job-failed', job: id, shard: data.shard, attempt: job.attemptsMade + 1, retry, error: message })
      throw permanent ? new UnrecoverableError(message) : new Error(message, { cause: error })
    } finally {
      active.delete(id)
    }
  }

  const worker = new Worker<ShardJobData, ShardJobResult>(options.address.name, processor, {
    connection: workerConnection(options.address),
    name,
    autorun: false,
    concurrency: options.concurrency ?? 1,
    lockDuration: lockMs,
    stalledInterval: options.stalledIntervalMs ?? 30_000,
    maxStalledCount: options.maxStalled ?? 2,
    // BullMQ waits this long before retrying a completion Redis refused (default 15 s): keep it within the lock.
    runRetryDelay: Math.max(100, Math.min(15_000, Math.floor(lockMs / 2))),
  })

  // Errors while Redis is away come in bursts: report the first and then one per 10 s.
  let lastQueueError = 0
  worker.on('error', (error) => {
    const now = Date.now()
    if (now - lastQueueError < 10_000) return
    lastQueueError = now
    log({ event: 'queue-error', error: describeError(error) })
  })
  worker.on('lockRenewalFailed', (jobIds) => {
    for (const jobId of jobIds) {
      const entry = active.get(jobId)
      if (!entry || entry.controller.signal.aborted) continue
      log({ event: 'lock-lost', job: jobId, shard: entry.shard })
      entry.controller.abort(LOCK_LOST)
    }
  })
  worker.on('completed', () => {
    completed += 1
  })
  worker.on('failed', () => {
    failedAttempts += 1
  })

  try {
    await worker.waitUntilReady()
  } catch (error) {
    await worker.close(true).catch(() => {})
    throw new QueueError(queueLabel, `cannot connect: ${describeError(error)}`, { cause: error })
  }

  let stopping: Promise<WorkerReport> | undefined
  let releaseTimer: NodeJS.Timeout | undefined
  let idleTimer: NodeJS.Timeout | undefined
  let idleQueue: Queue | undefined
  let resolveDone!: (report: WorkerReport) => void
  const done = new Promise<WorkerReport>((resolvePromise) => {
    resolveDone = resolvePromise
  })

  const releaseAll = () => {
    for (const entry of active.values()) if (!entry.controller.signal.aborted) entry.controller.abort(RELEASE)
  }

  const stop = (reason: string, release = false): Promise<WorkerReport> => {
    if (release) releaseAll()
    if (stopping) return stopping
    log({ event: 'stopping', reason, running: active.size })
    if (idleTimer) clearInterval(idleTimer)
    releaseTimer = setTimeout(releaseAll, options.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS)
    stopping = (async () => {
      await worker.close()
      clearTimeout(releaseTimer)
      await idleQueue?.close().catch(() => {})
      const report = { completed, failedAttempts }
      log({ event: 'stopped', worker: name, ...report })
      resolveDone(report)
      return report
    })()
    return stopping
  }

  if (options.exitWhenIdle) {
    idleQueue = new Queue(options.address.name, { connection: workerConnection(options.address) })
    idleQueue.on('error', () => {})
    let idleChecks = 0
    let checking = false
    idleTimer = setInterval(() => {
      if (checking || stopping) return
      checking = true
      idleQueue!
        .getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'waiting-children')
        .then((counts) => {
          const pending = Object.values(counts).reduce((n, c) => n + c, 0)
          idleChecks = pending === 0 && active.size === 0 ? idleChecks + 1 : 0
          if (idleChecks >= 2) void stop('idle')
        })
        .catch(() => {
          idleChecks = 0
        })
        .finally(() => {
          checking = false
        })
    }, 500)
  }

  void worker.run().catch((error: unknown) => {
    log({ event: 'queue-error', error: `worker loop ended: ${describeError(error)}` })
    void stop('error')
  })
  log({ event: 'ready', worker: name, queue: queueLabel, concurrency: options.concurrency ?? 1 })
  return { name, stop, done }
}
