/**
 * Distributed mode with a shard whose parsing hangs (a data page that loops the Parquet parser forever,
 * see test/parquet/hostile.ts): the good shards commit, the hanging one fails with reason `timeout` on its
 * own (the worker stops its parser thread and stays healthy for the next job), and workers exit on SIGTERM
 * within 3 s even in the middle of the hanging parse. Before parsing moved to parser threads, the worker's
 * event loop stopped: SIGTERM was ignored and its lock lapsed, so every worker that retook the shard hung.
 *
 * Skipped, with a notice, where `redis-server` is not installed (Debian package `redis-server`).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Queue, type Job } from 'bullmq'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

import type { ShardJobData, ShardJobResult } from '../../../app/queue/job.js'
import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import * as img from '../../helpers/images.js'
import { tempDir } from '../../helpers/util.js'
import { loopingShard } from '../../parquet/hostile.js'
import { parquetFiles, waitUntil, writeImageShards } from './fixtures.js'
import { hasRedis, RedisServer } from './redis-server.js'

if (!hasRedis) {
  console.warn('test/queue: redis-server is not on PATH: SKIPPING the hanging-shard distributed tests (install the Debian package redis-server to run them)')
}

type ShardJob = Job<ShardJobData, ShardJobResult>

interface Worker {
  readonly child: ChildProcess
  readonly events: { event: string; shard?: string; error?: string; retry?: boolean }[]
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  log(): string
}

let dir: string
let cleanup: () => void
let input: string
let redis: RedisServer | undefined
let queue: Queue<ShardJobData, ShardJobResult> | undefined
const workers: Worker[] = []
let testNo = 0

beforeAll(async () => {
  if (!hasRedis) return
  ;({ dir, cleanup } = tempDir('evflow-hang-'))
  input = join(dir, 'in')
  await writeImageShards(input, 4, 20, { rowGroupSize: 10 })
  const images = await Promise.all(Array.from({ length: 4 }, (_, i) => img.png(8 + i, 8, i)))
  mkdirSync(input, { recursive: true })
  writeFileSync(join(input, 'hang.parquet'), loopingShard(images))
})

afterEach(async () => {
  for (const w of workers.splice(0)) {
    if (w.child.exitCode === null && w.child.signalCode === null) {
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

async function freshQueue(): Promise<{ url: string; name: string; out: string }> {
  testNo += 1
  redis = await RedisServer.start(join(dir, `redis-${testNo}`))
  const name = `hang${testNo}`
  queue = new Queue<ShardJobData, ShardJobResult>(name, { connection: { url: redis.url, maxRetriesPerRequest: null } })
  queue.on('error', () => {})
  return { url: redis.url, name, out: join(dir, `out-${testNo}`) }
}

function startWorker(url: string, name: string, args: readonly string[]): Worker {
  const child = spawn(process.execPath, [CLI, 'worker', '--queue', url, '--queue-name', name, '--json', '--lock-ms', '15000', '--stalled-ms', '500', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const events: Worker['events'] = []
  let text = ''
  let pending = ''
  child.stderr!.on('data', (chunk: Buffer) => {
    text += chunk.toString()
    pending += chunk.toString()
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const line of lines) {
      try {
        events.push(JSON.parse(line) as Worker['events'][number])
      } catch {
        // not an event
      }
    }
  })
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const worker = { child, events, exit, log: () => text }
  workers.push(worker)
  return worker
}

async function exitWithin(worker: Worker, ms: number) {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`worker ${worker.child.pid} did not exit in ${ms} ms\n${worker.log()}`)), ms)
  })
  try {
    return await Promise.race([worker.exit, timeout])
  } finally {
    clearTimeout(timer)
  }
}

function submit(url: string, name: string, out: string, extra: readonly string[] = []) {
  const result = runCli(['submit', input, '-o', out, '--pipeline', 'scan', '--concurrency', '2', '--queue', url, '--queue-name', name, ...extra])
  expect(result.code).toBe(0)
  return result
}

describe.skipIf(!hasRedis)('distributed mode: a shard whose parsing hangs', { timeout: 120_000 }, () => {
  it('the good shards commit, the hanging one fails with reason timeout, every worker exits on SIGTERM within 3 s', async () => {
    const { url, name, out } = await freshQueue()
    submit(url, name, out, ['--attempts', '2', '--backoff-ms', '100'])
    const pool = [1, 2].map(() => startWorker(url, name, ['--read-timeout', '2']))
    await waitUntil(
      async () => (await queue!.getJobCounts('completed')).completed === 4 && (await queue!.getJobCounts('failed')).failed === 1,
      60_000,
      `4 completed and 1 failed job\n${pool.map((w) => w.log()).join('\n')}`,
    )
    expect(parquetFiles(out)).toEqual(['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet', 'part-00003.parquet'])
    const [failed] = (await queue!.getJobs(['failed'], 0, -1)) as ShardJob[]
    expect(failed.data.shard).toBe('hang')
    expect(failed.attemptsMade).toBe(2)
    expect(failed.failedReason).toMatch(/hang\.parquet \(row group 0\): timeout: the row group was not parsed within 2 s/)
    const attempts = pool.flatMap((w) => w.events.filter((e) => e.event === 'job-failed' && e.shard === 'hang'))
    expect(attempts.map((e) => e.retry).sort()).toEqual([false, true])

    // Healthy after the timeout: the same workers take and finish new work.
    const again = submit(url, name, join(out, '..', `out-${testNo}-again`))
    expect(again.stdout).toMatch(/5 added/)
    await waitUntil(async () => (await queue!.getJobCounts('completed')).completed === 8, 60_000, `8 completed jobs\n${pool.map((w) => w.log()).join('\n')}`)

    const sent = Date.now()
    for (const w of pool) w.child.kill('SIGTERM')
    for (const w of pool) expect(await exitWithin(w, 3000)).toEqual({ code: 0, signal: null })
    expect(Date.now() - sent).toBeLessThan(3000)
  })

  it('SIGTERM in the middle of the hanging parse: the worker exits within 3 s (default --stop-timeout) and puts the shard back', async () => {
    const { url, name, out } = await freshQueue()
    const only = join(dir, 'only-hang')
    mkdirSync(only, { recursive: true })
    const images = await Promise.all(Array.from({ length: 4 }, (_, i) => img.png(8 + i, 8, i)))
    writeFileSync(join(only, 'hang.parquet'), loopingShard(images))
    const result = runCli(['submit', only, '-o', out, '--pipeline', 'scan', '--queue', url, '--queue-name', name])
    expect(result.code).toBe(0)
    const worker = startWorker(url, name, [])
    await waitUntil(() => worker.events.some((e) => e.event === 'job-start'), 20_000, `the job to start\n${worker.log()}`)
    await new Promise((r) => setTimeout(r, 1500))
    expect(worker.child.exitCode).toBeNull()
    const sent = Date.now()
    worker.child.kill('SIGTERM')
    expect(await exitWithin(worker, 3000)).toEqual({ code: 0, signal: null })
    expect(Date.now() - sent).toBeLessThan(3000)
    const [job] = (await queue!.getJobs(['waiting'], 0, -1)) as ShardJob[]
    expect(job?.data.shard).toBe('hang')
    expect(job.attemptsMade).toBe(0)
  })
})
