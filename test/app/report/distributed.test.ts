/**
 * The report of a distributed run: `evflow submit` and two `evflow worker` processes write one folder;
 * each worker records its own series file, and the report shows each worker's throughput.
 *
 * Skipped, with a notice, where `redis-server` is not installed (Debian package `redis-server`).
 */
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { readSeries } from '../../../app/report/series.js'
import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import { tempDir } from '../../helpers/util.js'
import { writeImageShards } from '../queue/fixtures.js'
import { hasRedis, RedisServer } from '../queue/redis-server.js'

if (!hasRedis) {
  console.warn('test/app/report: redis-server is not on PATH: SKIPPING the report of a distributed run (install the Debian package redis-server to run it)')
}

let dir: string
let cleanup: () => void
let redis: RedisServer | undefined
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-report-queue-')))
afterAll(async () => {
  await redis?.stop()
  cleanup?.()
})

describe.skipIf(!hasRedis)('evflow report of a distributed run', () => {
  it('shows the throughput of each worker that wrote the folder', async () => {
    redis = await RedisServer.start(join(dir, 'redis'))
    const inputs = join(dir, 'in')
    const out = join(dir, 'out')
    await writeImageShards(inputs, 6, 20, { rowGroupSize: 10 })
    const queue = ['--queue', redis.url, '--queue-name', 'report']
    const submitted = runCli(['submit', inputs, '-o', out, '--pipeline', 'scan', '--concurrency', '2', ...queue])
    expect(submitted.code, submitted.stderr).toBe(0)
    // Slow rows (20 ms each) so that both workers take shards.
    const workers = ['w1', 'w2'].map(() =>
      spawn(process.execPath, [CLI, 'worker', ...queue, '--exit-when-idle', '--progress-ms', '100', '--debug-row-delay-ms', '20', '--lock-ms', '15000', '--json'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] }),
    )
    const logs = workers.map((w) => {
      let text = ''
      w.stderr!.on('data', (chunk: Buffer) => (text += chunk.toString()))
      return () => text
    })
    const codes = await Promise.all(workers.map((w) => new Promise<number | null>((resolve) => w.on('exit', (code) => resolve(code)))))
    expect(codes, logs.map((l) => l()).join('\n')).toEqual([0, 0])
    const done = logs.map((l) => l().split('\n').filter((line) => line.includes('"job-done"') && line.includes('"committed"')).length)
    expect(done.every((n) => n > 0), `shards per worker: ${done.join(', ')}`).toBe(true)

    const { files } = await readSeries(out)
    expect(files).toHaveLength(2)
    expect(files.every((f) => f.header.source === 'worker' && f.header.pipeline === 'scan')).toBe(true)
    expect(files.reduce((n, f) => n + f.points.at(-1)!.rows, 0)).toBe(120)

    const file = join(dir, 'report.html')
    const report = runCli(['report', out, '-o', file])
    expect(report.code, report.stderr).toBe(0)
    const html = readFileSync(file, 'utf8')
    const sources = [...html.matchAll(/<tr data-source="worker"><td>worker ([^<]+)<\/td><td>[^<]*<\/td><td class="num">[^<]*<\/td><td class="num">(\d+)<\/td>/g)]
    expect(sources.map((m) => m[1]).sort()).toEqual(files.map((f) => f.header.name).sort())
    expect(sources.reduce((n, m) => n + Number(m[2]), 0)).toBe(120)
    expect(html).toContain('Rows finished per second (reaching the writer), per process')
    expect(html).toContain('<li><span class="swatch" style="background:#0072b2"></span>all processes</li>')
    for (const f of files) expect(html).toContain(`</span>worker ${f.header.name}</li>`)
    expect(html).toMatch(/<dd data-fact="rows">120 in · <b>120<\/b> ok · <b>0<\/b> error/)
  }, 180_000)
})
