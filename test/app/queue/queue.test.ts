/**
 * Distributed mode end to end: `evflow submit`, several `evflow worker` processes (real processes, so that
 * SIGKILL / SIGSTOP / SIGTERM are real) and a private `redis-server` per test (AOF on, data in a temp
 * folder). Short locks (1.5 s) and stalled checks (0.5 s) make recovery take seconds.
 *
 * Skipped, with a notice, where `redis-server` is not installed (Debian package `redis-server`).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Queue, type Job } from 'bullmq'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

import { runPipeline } from '../../../pipelines/run.js'
import { scanDefaults, scanPipeline } from '../../../pipelines/scan.js'
import type { ShardJobData, ShardJobResult } from '../../../app/queue/job.js'
import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import { tempDir } from '../../helpers/util.js'
import { parquetFiles, readOutput, sha256, waitUntil, writeImageShards, writePoisonShard } from './fixtures.js'
import { hasRedis, RedisServer } from './redis-server.js'

if (!hasRedis) {
  console.warn('test/queue: redis-server is not on PATH: SKIPPING the distributed-mode tests (install the Debian package redis-server to run them)')
}

/** The scan config every run here uses (decode concurrency fixed, so outputs are comparable across machines). */
const CONFIG = Object.freeze({ ...scanDefaults, concurrency: 2 })
/** Short locks where a test needs recovery from a dead or frozen worker; tests that do not pass a longer one
 *  (later flags win), so that a slow CI machine cannot make a lock lapse by accident. */
const LOCK = ['--lock-ms', '1500', '--stalled-ms', '500', '--progress-ms', '100']
const CALM = ['--lock-ms', '15000']

type ShardJob = Job<ShardJobData, ShardJobResult>
interface WorkerEvent {
  t: string
  event: string
  job?: string
  shard?: string
  status?: string
  worker?: string
  retry?: boolean
  error?: string
}

interface WorkerProcess {
  readonly child: ChildProcess
  readonly events: WorkerEvent[]
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  log(): string
}

let dir: string
let cleanup: () => void
/** 12 shards x 20 rows, and the output of one single-process run over them. */
let input12: string
let reference12: string
/** 3 shards x 30 rows (slow with --debug-row-delay-ms), and its single-process output. */
let slow: string
let referenceSlow: string

let redis: RedisServer | undefined
let queue: Queue<ShardJobData, ShardJobResult> | undefined
const workers: WorkerProcess[] = []
let testNo = 0

beforeAll(async () => {
  if (!hasRedis) return
  ;({ dir, cleanup } = tempDir('evflow-queue-'))
  input12 = join(dir, 'in12')
  await writeImageShards(input12, 12, 20, { rowGroupSize: 10 })
  reference12 = join(dir, 'ref12')
  await runPipeline(scanPipeline, CONFIG, { inputs: [input12], outDir: reference12 })
  slow = join(dir, 'slow')
  await writeImageShards(slow, 3, 30, { rowGroupSize: 10, seed: 2 })
  referenceSlow = join(dir, 'ref-slow')
  await runPipeline(scanPipeline, CONFIG, { inputs: [slow], outDir: referenceSlow })
})

afterEach(async () => {
  for (const w of workers.splice(0)) {
    if (w.child.exitCode === null && w.child.signalCode === null) {
      w.child.kill('SIGCONT')
      w.child.kill('SIGKILL')
      await w.exit
    }
  }
  await queue?.close().catch(() => {})
  queue = undefined
  await redis?.stop()
  redis = undefined
})

afterAll(() => cleanup?.())

/** A fresh Redis and queue for one test. */
async function freshQueue(): Promise<{ url: string; name: string; out: string }> {
  testNo += 1
  redis = await RedisServer.start(join(dir, `redis-${testNo}`))
  const name = `q${testNo}`
  queue = new Queue<ShardJobData, ShardJobResult>(name, { connection: { url: redis.url, maxRetriesPerRequest: null } })
  queue.on('error', () => {})
  return { url: redis.url, name, out: join(dir, `out-${testNo}`) }
}

function startWorker(url: string, name: string, args: readonly string[] = []): WorkerProcess {
  const child = spawn(process.execPath, [CLI, 'worker', '--queue', url, '--queue-name', name, '--json', ...LOCK, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const events: WorkerEvent[] = []
  let text = ''
  let pending = ''
  child.stderr!.on('data', (chunk: Buffer) => {
    text += chunk.toString()
    pending += chunk.toString()
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const line of lines) {
      try {
        events.push(JSON.parse(line) as WorkerEvent)
      } catch {
        // not an event (a stack with --verbose): kept in the log
      }
    }
  })
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const worker = { child, events, exit, log: () => text }
  workers.push(worker)
  return worker
}

function submit(url: string, name: string, inputs: string, out: string, extra: readonly string[] = []) {
  const result = runCli(['submit', inputs, '-o', out, '--pipeline', 'scan', '--concurrency', '2', '--queue', url, '--queue-name', name, ...extra])
  expect(result.stderr).not.toMatch(/error/i)
  expect(result.code).toBe(0)
  return result
}

async function jobsIn(state: 'completed' | 'failed' | 'active' | 'waiting' | 'delayed'): Promise<ShardJob[]> {
  return (await queue!.getJobs([state], 0, -1)) as ShardJob[]
}

/** Waits until a job of `worker` has reported progress (so it is in the middle of its shard); returns its id. */
async function midShard(worker: WorkerProcess): Promise<string> {
  let id: string | undefined
  await waitUntil(
    async () => {
      const started = worker.events.filter((e) => e.event === 'job-start').at(-1)
      if (!started?.job) return false
      const job = (await queue!.getJob(started.job)) as ShardJob | undefined
      const progress = job?.progress as { rowsDone?: number; rowsTotal?: number } | undefined
      id = started.job
      const done = progress?.rowsDone ?? 0
      return done > 0 && done < (progress?.rowsTotal ?? 0) && (await job!.getState()) === 'active'
    },
    20_000,
    `worker ${worker.child.pid} to be in the middle of a shard\n${worker.log()}`,
  )
  return id!
}

async function exitOf(worker: WorkerProcess, timeoutMs: number) {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`worker ${worker.child.pid} did not exit in ${timeoutMs} ms\n${worker.log()}`)), timeoutMs)
  })
  try {
    return await Promise.race([worker.exit, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** The output folder holds exactly the reference's shards, byte for byte and row for row, and no debris. */
async function expectSameAsReference(out: string, reference: string, only?: readonly string[]): Promise<void> {
  const expected = only ?? parquetFiles(reference)
  expect(parquetFiles(out)).toEqual(expected)
  const rows = await readOutput(out)
  const referenceRows = await readOutput(reference)
  for (const file of expected) expect(rows[file], file).toEqual(referenceRows[file])
  for (const file of expected) expect(sha256(join(out, file)), file).toBe(sha256(join(reference, file)))
  expect(readdirSync(join(out, '_evflow', 'commits')).sort()).toEqual(expected.map((f) => f.replace(/\.parquet$/, '.json')))
  expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  expect(readdirSync(join(out, '_evflow', 'tmp'))).toEqual([])
}

describe.skipIf(!hasRedis)('distributed mode (BullMQ on a private redis-server)', { timeout: 120_000 }, () => {
  it('three workers over 12 shards: each shard committed once, identical to a single-process run; resubmitting adds nothing', async () => {
    const { url, name, out } = await freshQueue()
    expect(submit(url, name, input12, out).stdout).toContain('12 added, 0 already in the queue')
    expect(submit(url, name, input12, out).stdout).toContain('0 added, 12 already in the queue')
    expect(await queue!.count()).toBe(12)

    const pool = [1, 2, 3].map(() => startWorker(url, name, [...CALM, '--exit-when-idle']))
    for (const w of pool) expect(await exitOf(w, 60_000)).toEqual({ code: 0, signal: null })

    await expectSameAsReference(out, reference12)
    const completed = await jobsIn('completed')
    expect(completed).toHaveLength(12)
    expect(completed.map((j) => [j.data.shard, j.returnvalue.status, j.attemptsMade]).sort()).toEqual(
      parquetFiles(reference12).map((f) => [f.replace(/\.parquet$/, ''), 'committed', 1]),
    )
    expect(new Set(completed.map((j) => j.data.shard)).size).toBe(12)
    const done = pool.flatMap((w) => w.events.filter((e) => e.event === 'job-done'))
    expect(done).toHaveLength(12)

    const status = runCli(['status', '--queue', url, '--queue-name', name])
    expect(status.code).toBe(0)
    expect(status.stdout).toMatch(/12 total: 0 queued, 0 retrying, 0 running, 12 done, 0 failed/)
    expect(status.stdout).toMatch(/240 of 240 \(100\.0%\)/)
    // Submitting the finished run again adds nothing either.
    expect(submit(url, name, input12, out).stdout).toContain('0 added, 12 already in the queue')
  })

  it('a worker SIGKILLed in the middle of a shard: another worker completes it; nothing lost or duplicated', async () => {
    const { url, name, out } = await freshQueue()
    submit(url, name, slow, out)
    const victim = startWorker(url, name, ['--debug-row-delay-ms', '60'])
    const id = await midShard(victim)
    victim.child.kill('SIGKILL')
    await victim.exit
    const killed = ((await queue!.getJob(id)) as ShardJob).data.shard
    expect(parquetFiles(out)).not.toContain(`${killed}.parquet`)

    const rescuer = startWorker(url, name, [...CALM, '--exit-when-idle'])
    expect(await exitOf(rescuer, 40_000)).toEqual({ code: 0, signal: null })
    await expectSameAsReference(out, referenceSlow)
    const job = (await queue!.getJob(id)) as ShardJob
    expect(await job.getState()).toBe('completed')
    expect(job.attemptsStarted).toBeGreaterThanOrEqual(2)
    expect(job.returnvalue.worker).not.toContain(`:${victim.child.pid}`)
    expect(await jobsIn('completed')).toHaveLength(3)
  })

  it('Redis stopped mid-job and started again on the same data: the worker reconnects and every job completes', async () => {
    const { url, name, out } = await freshQueue()
    submit(url, name, slow, out)
    const worker = startWorker(url, name, ['--debug-row-delay-ms', '40', '--exit-when-idle', '--lock-ms', '6000'])
    await midShard(worker)
    await redis!.stop('SIGKILL')
    await new Promise((r) => setTimeout(r, 1500))
    await redis!.restart()
    expect(await exitOf(worker, 45_000)).toEqual({ code: 0, signal: null })
    await expectSameAsReference(out, referenceSlow)
    expect(await jobsIn('completed')).toHaveLength(3)
    expect(worker.events.some((e) => e.event === 'queue-error')).toBe(true)
  })

  it('a poison shard is failed with its reason after N attempts; every other shard completes', async () => {
    const { url, name, out } = await freshQueue()
    const input = join(dir, 'poison-in')
    mkdirSync(input, { recursive: true })
    for (const f of parquetFiles(input12).slice(0, 4)) cpSync(join(input12, f), join(input, f))
    writePoisonShard(join(input, 'bad.parquet'))
    const result = runCli(['submit', input, '-o', out, '--pipeline', 'scan', '--concurrency', '2', '--queue', url, '--queue-name', name, '--attempts', '3', '--backoff-ms', '100'])
    expect(result.code).toBe(0)
    expect(result.stderr).toMatch(/bad: unreadable now .*queued anyway/)

    const pool = [1, 2].map(() => startWorker(url, name, [...CALM, '--exit-when-idle']))
    for (const w of pool) expect(await exitOf(w, 40_000)).toEqual({ code: 0, signal: null })

    await expectSameAsReference(out, reference12, ['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet', 'part-00003.parquet'])
    const [failed] = await jobsIn('failed')
    expect(failed.data.shard).toBe('bad')
    expect(failed.attemptsMade).toBe(3)
    expect(failed.failedReason).toMatch(/bad\.parquet.*(footer|Parquet)/i)
    expect(await jobsIn('completed')).toHaveLength(4)
    const attempts = pool.flatMap((w) => w.events.filter((e) => e.event === 'job-failed' && e.shard === 'bad')).sort((a, b) => a.t.localeCompare(b.t))
    expect(attempts.map((e) => e.retry)).toEqual([true, true, false])

    const status = runCli(['status', '--queue', url, '--queue-name', name])
    expect(status.stdout).toMatch(/5 total: 0 queued, 0 retrying, 0 running, 4 done, 1 failed/)
    expect(status.stdout).toMatch(/bad \[failed, 3 attempts\] .*bad\.parquet/)
    const detail = runCli(['status', '--queue', url, '--queue-name', name, failed.id!, '--json'])
    expect(JSON.parse(detail.stdout)).toMatchObject({ state: 'failed', attemptsMade: 3, shard: 'bad' })
  })

  it('a worker whose lock lapses while it keeps running (SIGSTOP, SIGCONT): the shard is done once, its late result discarded', async () => {
    const { url, name, out } = await freshQueue()
    submit(url, name, join(slow, 'part-00000.parquet'), out)
    const paused = startWorker(url, name, ['--debug-row-delay-ms', '60'])
    const id = await midShard(paused)
    paused.child.kill('SIGSTOP')

    const other = startWorker(url, name, [...CALM, '--exit-when-idle'])
    expect(await exitOf(other, 40_000)).toEqual({ code: 0, signal: null })
    const job = (await queue!.getJob(id)) as ShardJob
    expect(await job.getState()).toBe('completed')
    expect(job.returnvalue.status).toBe('committed')
    const file = join(out, 'part-00000.parquet')
    const committedBytes = sha256(file)
    const record = readFileSync(join(out, '_evflow', 'commits', 'part-00000.json'), 'utf8')

    paused.child.kill('SIGCONT')
    await waitUntil(
      () => paused.events.some((e) => e.job === id && (e.event === 'lock-lost' || e.event === 'job-done' || e.event === 'job-failed')),
      20_000,
      `the resumed worker to give up or finish ${id}\n${paused.log()}`,
    )
    const late = paused.events.find((e) => e.job === id && e.event === 'job-done')
    if (late) expect(late.status).toBe('duplicate')
    // Let the resumed worker settle (its completion is refused by BullMQ: the lock is not its own).
    await new Promise((r) => setTimeout(r, 500))
    await expectSameAsReference(out, referenceSlow, ['part-00000.parquet'])
    expect(sha256(file)).toBe(committedBytes)
    expect(readFileSync(join(out, '_evflow', 'commits', 'part-00000.json'), 'utf8')).toBe(record)
    const after = (await queue!.getJob(id)) as ShardJob
    expect(await after.getState()).toBe('completed')
    expect(after.returnvalue.worker).toBe(job.returnvalue.worker)

    paused.child.kill('SIGTERM')
    expect(await exitOf(paused, 10_000)).toEqual({ code: 0, signal: null })
  })

  it('SIGTERM: a worker finishes its current shard, or (--stop-timeout 0) puts it back in the queue unharmed', async () => {
    const { url, name, out } = await freshQueue()
    submit(url, name, slow, out)
    const finisher = startWorker(url, name, [...CALM, '--debug-row-delay-ms', '30'])
    const first = await midShard(finisher)
    finisher.child.kill('SIGTERM')
    expect(await exitOf(finisher, 20_000)).toEqual({ code: 0, signal: null })
    expect(await ((await queue!.getJob(first)) as ShardJob).getState()).toBe('completed')
    expect(finisher.events.filter((e) => e.event === 'job-start')).toHaveLength(1)

    const releaser = startWorker(url, name, [...CALM, '--debug-row-delay-ms', '60', '--stop-timeout', '0'])
    const second = await midShard(releaser)
    releaser.child.kill('SIGTERM')
    expect(await exitOf(releaser, 20_000)).toEqual({ code: 0, signal: null })
    expect(releaser.events.some((e) => e.event === 'job-released' && e.job === second)).toBe(true)
    const released = (await queue!.getJob(second)) as ShardJob
    expect(await released.getState()).toBe('waiting')
    expect(released.attemptsMade).toBe(0)

    const last = startWorker(url, name, [...CALM, '--exit-when-idle'])
    expect(await exitOf(last, 30_000)).toEqual({ code: 0, signal: null })
    await expectSameAsReference(out, referenceSlow)
  })

  it('cancel removes a run\'s queued shards; status and submit fail clearly when Redis is unreachable', async () => {
    const { url, name, out } = await freshQueue()
    const submitted = submit(url, name, input12, out)
    const run = /submitted run (\S+)/.exec(submitted.stdout)![1]
    expect(runCli(['cancel', '--queue', url, '--queue-name', name]).code).toBe(2)
    const cancel = runCli(['cancel', run, '--queue', url, '--queue-name', name, '--json'])
    expect(JSON.parse(cancel.stdout)).toMatchObject({ removed: 12, running: 0 })
    expect(await queue!.count()).toBe(0)
    expect(submit(url, name, input12, out).stdout).toContain('12 added')

    await redis!.stop()
    const down = runCli(['status', '--queue', url, '--queue-name', name])
    expect(down.code).toBe(5)
    expect(down.stderr).toMatch(/QueueError: redis:\/\/127\.0\.0\.1:\d+ \(queue q\d+\)/)
  })
})
