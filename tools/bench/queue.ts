/**
 * `npm run build && node dist/tools/bench/queue.js [--shards 40] [--rows 50] [--reps 3] [--workers 1,2,4,1x2]`
 *
 * Distributed mode on one machine: `scan` over small shards, one single-process run (`evflow scan`) against
 * 1, 2 and 4 `evflow worker` processes on a private `redis-server` (`1x2`: one worker running two shards at
 * once, `--concurrency 2`). Reports, as medians over the
 * repetitions: wall time from `submit` to the last shard done (workers already started and connected),
 * rows/s, throughput relative to the single process, and the per-shard overhead of the queue
 * `(T(1 worker) - T(single)) / shards` (everything distributed mode adds per shard: the job round trips,
 * re-planning, the pipeline's start and drain per shard, staging and publishing).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Queue } from 'bullmq'

import { scanDefaults, scanPipeline } from '../../pipelines/scan.js'
import type { PipelineDefinition } from '../../pipelines/definition.js'
import { queueAddress } from '../../app/queue/connection.js'
import { submitShards } from '../../app/queue/submit.js'
import { writeImageShards } from '../../test/app/queue/fixtures.js'
import { hasRedis, RedisServer } from '../../test/app/queue/redis-server.js'

const CLI = fileURLToPath(new URL('../../app/cli/main.js', import.meta.url))
const CONFIG = Object.freeze({ ...scanDefaults, concurrency: 2 })

/** `N` worker processes, or `NxC`: N processes running C shards each at once. */
interface Variant {
  readonly label: string
  readonly workers: number
  readonly concurrency: number
}

function variant(text: string): Variant {
  const m = /^(\d+)(?:x(\d+))?$/.exec(text.trim())
  if (!m) throw new Error(`--workers: expected N or NxC, got ${text}`)
  const workers = Number(m[1])
  const concurrency = Number(m[2] ?? 1)
  const label = `${workers} worker process${workers === 1 ? '' : 'es'}${concurrency > 1 ? `, ${concurrency} shards at once each` : ''}`
  return { label, workers, concurrency }
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** One single-process run: the run's own duration (from its summary) and the process's wall time. */
function singleProcess(input: string, out: string): { runS: number; wallS: number } {
  const started = performance.now()
  const result = spawnSync(process.execPath, [CLI, 'scan', input, '-o', out, '--concurrency', '2', '--json'], { encoding: 'utf8' })
  const wallS = (performance.now() - started) / 1000
  if (result.status !== 0) throw new Error(`evflow scan failed: ${result.stderr}`)
  const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as { durationS: number }
  return { runS: summary.durationS, wallS }
}

function startWorkers(url: string, name: string, count: number, concurrency: number): { children: ChildProcess[]; ready: Promise<void> } {
  const children: ChildProcess[] = []
  const readies: Promise<void>[] = []
  for (let i = 0; i < count; i++) {
    const args = [CLI, 'worker', '--queue', url, '--queue-name', name, '--json', '--concurrency', String(concurrency)]
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    children.push(child)
    readies.push(
      new Promise((resolve, reject) => {
        let text = ''
        child.stderr!.on('data', (chunk: Buffer) => {
          text += chunk.toString()
          if (text.includes('"event":"ready"')) resolve()
        })
        child.once('exit', (code) => reject(new Error(`worker exited with ${code}: ${text}`)))
      }),
    )
  }
  return { children, ready: Promise.all(readies).then(() => {}) }
}

async function stopWorkers(children: readonly ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null) return resolve()
          child.once('exit', () => resolve())
          child.kill('SIGTERM')
        }),
    ),
  )
}

/** One distributed run: seconds from submit to the last shard completed, and the submit's own seconds. */
async function distributed(redis: RedisServer, name: string, variant: Variant, input: string, out: string, shards: number): Promise<{ totalS: number; submitS: number }> {
  const { children, ready } = startWorkers(redis.url, name, variant.workers, variant.concurrency)
  const queue = new Queue(name, { connection: { url: redis.url } })
  try {
    await ready
    await queue.waitUntilReady()
    const started = performance.now()
    await submitShards({ address: queueAddress(redis.url, name), definition: scanPipeline as unknown as PipelineDefinition, config: CONFIG, inputs: [input], outDir: out })
    const submitS = (performance.now() - started) / 1000
    for (;;) {
      const counts = await queue.getJobCounts('completed', 'failed')
      if (counts.failed > 0) throw new Error(`${counts.failed} shard(s) failed`)
      if (counts.completed === shards) break
      await new Promise((r) => setTimeout(r, 10))
    }
    return { totalS: (performance.now() - started) / 1000, submitS }
  } finally {
    await queue.close()
    await stopWorkers(children)
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      shards: { type: 'string', default: '40' },
      rows: { type: 'string', default: '50' },
      reps: { type: 'string', default: '3' },
      workers: { type: 'string', default: '1,2,4,1x2' },
    },
  })
  if (!hasRedis) {
    console.warn('bench queue: redis-server is not on PATH (install the Debian package redis-server): skipped')
    return
  }
  const shards = Number(values.shards)
  const rows = Number(values.rows)
  const reps = Number(values.reps)
  const variants = values.workers.split(',').map(variant)
  const loadBefore = loadavg()[0].toFixed(1)
  const dir = mkdtempSync(join(tmpdir(), 'evflow-bench-queue-'))
  const redis = await RedisServer.start(join(dir, 'redis'))
  try {
    const input = join(dir, 'in')
    await writeImageShards(input, shards, rows, { size: 64, rowGroupSize: rows })
    const single: { runS: number; wallS: number }[] = []
    const queued = new Map<string, { totalS: number; submitS: number }[]>(variants.map((v) => [v.label, []]))
    let run = 0
    for (let rep = 0; rep < reps; rep++) {
      single.push(singleProcess(input, join(dir, `single-${rep}`)))
      for (const v of variants) {
        run += 1
        queued.get(v.label)!.push(await distributed(redis, `bench${run}`, v, input, join(dir, `queue-${run}`), shards))
      }
      process.stderr.write(`bench queue: repetition ${rep + 1} of ${reps} done\n`)
    }

    const totalRows = shards * rows
    const base = median(single.map((s) => s.runS))
    const one = median(queued.get(variants[0].label)!.map((q) => q.totalS))
    const lines = [
      `distributed scan: ${shards} shards x ${rows} rows (64px JPEGs), ${reps} repetitions, medians; ${cpus()[0]?.model ?? 'cpu'}, ${availableParallelism()} cores, Node ${process.versions.node}; load average before ${loadBefore}, after ${loadavg()[0].toFixed(1)}`,
      '',
      '| variant | time s | rows/s | vs single process | submit s |',
      '|---|---|---|---|---|',
      `| single process (evflow scan; process wall ${median(single.map((s) => s.wallS)).toFixed(2)} s) | ${base.toFixed(2)} | ${Math.round(totalRows / base)} | 1.00x | - |`,
    ]
    for (const v of variants) {
      const samples = queued.get(v.label)!
      const t = median(samples.map((q) => q.totalS))
      lines.push(`| ${v.label} | ${t.toFixed(2)} | ${Math.round(totalRows / t)} | ${(base / t).toFixed(2)}x | ${median(samples.map((q) => q.submitS)).toFixed(2)} |`)
    }
    lines.push('', `per-shard overhead of the queue, ${variants[0].label} vs single process: ${(((one - base) / shards) * 1000).toFixed(1)} ms`)
    console.log(lines.join('\n'))
    console.log(JSON.stringify({ shards, rows, reps, single, queued: Object.fromEntries(queued) }))
  } finally {
    await redis.stop('SIGTERM')
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
