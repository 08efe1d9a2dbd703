/**
 * The output side of issue 17 in distributed mode, end to end (`evflow submit` + `evflow worker` processes
 * on a private `redis-server`): hostile input names reach the output exactly once under the same naming
 * rule as a single-process run, names stay within NAME_MAX with a 64-byte hostname, `submit` sets aside
 * outputs that are not part of its plan and writes the manifest that the workers keep up to date, and a
 * worker killed mid-shard on one host leaves no staging folder once a worker on another host has run the
 * shard. Workers get their hostname from a preload module (so "another host" is real to evflow).
 *
 * Skipped, with a notice, where `redis-server` is not installed (Debian package `redis-server`).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Queue } from 'bullmq'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'

import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import { duckQuery } from '../../helpers/duckdb.js'
import * as img from '../../helpers/images.js'
import { imageShardBuffer, writeBuffer } from '../../helpers/shards.js'
import { tempDir } from '../../helpers/util.js'
import { parquetFiles, waitUntil } from './fixtures.js'
import { hasRedis, RedisServer } from './redis-server.js'

if (!hasRedis) {
  console.warn('test/app/queue/outputs: redis-server is not on PATH: SKIPPING these distributed-mode tests (install the Debian package redis-server to run them)')
}

let dir: string
let cleanup: () => void
let pool: Buffer[]
let redis: RedisServer | undefined
const children: ChildProcess[] = []

beforeAll(async () => {
  if (!hasRedis) return
  ;({ dir, cleanup } = tempDir('evflow-queue-outputs-'))
  pool = await Promise.all(Array.from({ length: 4 }, (_, i) => img.jpeg(24 + i, 24, 700 + i, 80)))
})
afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await new Promise((r) => child.once('exit', r))
    }
  }
  await redis?.stop()
  redis = undefined
})
afterAll(() => cleanup?.())

function shard(path: string, tag: string, rows: number, rowGroupSize = 8): string[] {
  const ids = Array.from({ length: rows }, (_, i) => `${tag}-${i}`)
  writeBuffer(path, imageShardBuffer(ids.map((id, i) => ({ id, image: pool[i % pool.length] })), rowGroupSize))
  return ids
}

const preload = (host: string) =>
  `data:text/javascript,${encodeURIComponent(`import os from 'node:os'; import { syncBuiltinESMExports } from 'node:module'; os.hostname = () => ${JSON.stringify(host)}; syncBuiltinESMExports()`)}`

/** A worker process that believes its host is `host`; resolves its exit. */
function worker(url: string, host: string, args: readonly string[]): { child: ChildProcess; exit: Promise<number | null>; log: () => string } {
  const child = spawn(process.execPath, ['--import', preload(host), CLI, 'worker', '--queue', url, '--json', ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] })
  children.push(child)
  let text = ''
  child.stderr!.on('data', (chunk: Buffer) => (text += chunk.toString()))
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, exit, log: () => text }
}

async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what()}`)), ms)))])
  } finally {
    clearTimeout(timer)
  }
}

const allNames = (folder: string) => readdirSync(folder, { recursive: true, encoding: 'utf8' }).flatMap((p) => p.split('/'))

describe.skipIf(!hasRedis)('distributed mode: outputs', { timeout: 120_000 }, () => {
  it('hostile names, split shards and a 64-byte hostname: every row once, stale outputs set aside, the manifest complete', async () => {
    redis = await RedisServer.start(join(dir, 'redis-1'))
    const input = join(dir, 'in-1')
    const ids = [
      ...shard(join(input, '图像.parquet'), 'tu', 16),
      ...shard(join(input, '画像.parquet'), 'hua', 16),
      ...shard(join(input, 'shard-1.parquet'), 's1', 16),
      ...shard(join(input, 'a b.parquet'), 'space', 10),
      ...shard(join(input, 'a_b.parquet'), 'under', 30),
      ...shard(join(input, `${'n'.repeat(239)}.parquet`), 'long', 20),
    ]
    const out = join(dir, 'out-1')
    mkdirSync(out, { recursive: true })
    writeFileSync(join(out, 'renamed-away.parquet'), 'an output of an input that is gone')

    const submitted = runCli(['submit', input, '-o', out, '--pipeline', 'scan', '--concurrency', '2', '--queue', redis.url, '--max-rows-per-job', '16'])
    expect(submitted.code, submitted.stderr).toBe(0)
    expect(submitted.stdout).toMatch(/set aside: 1 output\(s\) not in this plan in .*_evflow\/stale\//)
    const planned = JSON.parse(readFileSync(join(out, '_evflow', 'manifest.json'), 'utf8'))
    expect(planned).toMatchObject({ complete: false, files: [] })

    const host = 'h'.repeat(64)
    const workers = [1, 2].map(() => worker(redis!.url, host, ['--exit-when-idle']))
    for (const w of workers) expect(await within(w.exit, 60_000, w.log)).toBe(0)

    const rows = await duckQuery(`SELECT id FROM read_parquet('${out}/*.parquet') ORDER BY id`)
    expect(rows.map((r) => r.id)).toEqual([...ids].sort())
    const manifest = JSON.parse(readFileSync(join(out, '_evflow', 'manifest.json'), 'utf8'))
    expect(manifest.complete).toBe(true)
    expect([...manifest.files].sort()).toEqual(parquetFiles(out))
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
    expect(Math.max(...allNames(out).map((n) => Buffer.byteLength(n)))).toBeLessThanOrEqual(255)
  })

  it("a worker killed mid-shard on one host: a worker on another host runs the shard and removes the dead one's staging folder", async () => {
    redis = await RedisServer.start(join(dir, 'redis-2'))
    const input = join(dir, 'in-2')
    const ids = shard(join(input, 'slow.parquet'), 'slow', 40)
    const out = join(dir, 'out-2')
    expect(runCli(['submit', input, '-o', out, '--pipeline', 'scan', '--concurrency', '2', '--queue', redis.url]).code).toBe(0)

    const lock = ['--lock-ms', '1500', '--stalled-ms', '500', '--progress-ms', '100']
    const doomed = worker(redis.url, 'host-a', [...lock, '--debug-row-delay-ms', '100'])
    const staging = join(out, '_evflow', 'staging')
    await waitUntil(() => existsSync(staging) && readdirSync(staging).length === 1, 20_000, 'the first worker to stage its shard')
    const queue = new Queue('evflow', { connection: { url: redis.url, maxRetriesPerRequest: null } })
    try {
      await waitUntil(
        async () => {
          const [job] = await queue.getJobs(['active'], 0, 0)
          return ((job?.progress as { rowsDone?: number } | undefined)?.rowsDone ?? 0) > 0
        },
        20_000,
        'the first worker to be mid-shard',
      )
    } finally {
      await queue.close()
    }
    doomed.child.kill('SIGKILL')
    await doomed.exit
    expect(readdirSync(staging)).toHaveLength(1)
    expect(readdirSync(staging)[0]).toMatch(/^host-a\+/)

    const next = worker(redis.url, 'host-b', [...lock, '--exit-when-idle'])
    expect(await within(next.exit, 60_000, next.log)).toBe(0)
    expect(readdirSync(staging)).toEqual([])
    const rows = await duckQuery(`SELECT id FROM read_parquet('${out}/*.parquet') ORDER BY id`)
    expect(rows.map((r) => r.id)).toEqual([...ids].sort())
  })
})
