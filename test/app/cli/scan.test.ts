import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { writeJpegShards } from '../../helpers/big-shards.js'
import { exited, runCli, startCli } from '../../helpers/cli.js'
import { duckQuery } from '../../helpers/duckdb.js'
import { tempDir } from '../../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-cli-')))
afterAll(() => cleanup())

const parquetFiles = (out: string) => readdirSync(out).filter((f) => f.endsWith('.parquet')).sort()
const bytesOf = (out: string) => Object.fromEntries(parquetFiles(out).map((f) => [f, readFileSync(join(out, f)).toString('base64')]))

async function waitFor(predicate: () => boolean, timeoutMs = 60_000): Promise<void> {
  const start = Date.now()
  while (!predicate()) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting')
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe('evflow scan (the README main command)', () => {
  it('scans the bundled shards: one output per input, every row accounted for', async () => {
    const out = join(dir, 'readme')
    const result = runCli(['scan', 'fixtures/shards', '-o', out])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^scan: 3 shard\(s\): 3 committed, 0 skipped, 0 failed$/m)
    expect(result.stdout).toMatch(/^rows: 124 in, 111 ok, 13 error \(/m)
    expect(parquetFiles(out)).toEqual(['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet'])
    const counts = await duckQuery(`SELECT status, count(*)::int AS n FROM read_parquet('${out}/*.parquet') GROUP BY status ORDER BY status`)
    expect(counts).toEqual([{ status: 'error', n: 13 }, { status: 'ok', n: 111 }])
    const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8'))
    expect(summary).toMatchObject({ pipeline: 'scan', interrupted: false, rows: { in: 124, ok: 111, error: 13 } })

    const again = runCli(['scan', 'fixtures/shards', '-o', out])
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('0 committed, 3 skipped')
    const overwrite = runCli(['scan', 'fixtures/shards', '-o', out, '--overwrite'])
    expect(overwrite.stdout).toContain('3 committed, 0 skipped')
    const changed = runCli(['scan', 'fixtures/shards', '-o', out, '--size', '32'])
    expect(changed.stdout).toContain('3 committed, 0 skipped') // a different config is not skipped
  })

  it('scans every synthetic scenes fixture (images and video clips) with zero errors', async () => {
    const out = join(dir, 'scenes')
    const result = runCli(['scan', 'fixtures/scenes', '-o', out])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/rows: (\d+) in, \1 ok, 0 error/)
    const clips = await duckQuery(`SELECT min(frames)::int AS lo, max(frames)::int AS hi, count(*)::int AS n FROM read_parquet('${join(out, 'video.parquet')}')`)
    expect(clips).toEqual([{ lo: 4, hi: 8, n: 128 }])
  })

  it('prints JSON lines with --json: start, shard events and a summary', () => {
    const result = runCli(['scan', 'fixtures/shards/part-00002.parquet', '-o', join(dir, 'json'), '--json'])
    expect(result.code).toBe(0)
    const events = result.stdout.trim().split('\n').map((l) => JSON.parse(l) as { event: string })
    expect(events[0].event).toBe('start')
    expect(events.filter((e) => e.event === 'shard')).toHaveLength(1)
    expect(events.at(-1)).toMatchObject({ event: 'summary', rows: { in: 24, ok: 23, error: 1 } })
  })

  it('a scan killed with SIGKILL mid-run, then rerun, gives output identical to an uninterrupted run', async () => {
    const input = join(dir, 'kill-in')
    await writeJpegShards(input, 6, 300, { size: 128, distinct: 12, rowGroupSize: 100 })
    const reference = join(dir, 'kill-ref')
    expect(runCli(['scan', input, '-o', reference, '--concurrency', '2']).code).toBe(0)

    const out = join(dir, 'kill-out')
    const child = startCli(['scan', input, '-o', out, '--concurrency', '2'])
    const commits = join(out, '_evflow', 'commits')
    await waitFor(() => existsSync(commits) && readdirSync(commits).length >= 1)
    child.kill('SIGKILL')
    await exited(child)
    const committedBefore = readdirSync(commits).length
    expect(committedBefore).toBeLessThan(6)

    const rerun = runCli(['scan', input, '-o', out, '--concurrency', '2'])
    expect(rerun.code).toBe(0)
    expect(rerun.stdout).toContain(`${6 - committedBefore} committed, ${committedBefore} skipped`)
    expect(bytesOf(out)).toEqual(bytesOf(reference))
    expect(readdirSync(join(out, '_evflow', 'tmp')).filter((f) => f.endsWith('.parquet'))).toEqual([])
  })

  it('Ctrl-C stops cleanly: exit 130, nothing half-written looks complete, a rerun finishes', async () => {
    const input = join(dir, 'kill-in')
    const out = join(dir, 'sigint-out')
    const child = startCli(['scan', input, '-o', out, '--concurrency', '2'])
    await waitFor(() => existsSync(join(out, '_evflow', 'tmp')) && readdirSync(join(out, '_evflow', 'tmp')).length > 0)
    child.kill('SIGINT')
    const { code } = await exited(child)
    expect(code).toBe(130)
    expect(readdirSync(join(out, '_evflow', 'tmp'))).toEqual([])
    expect(existsSync(join(out, '_evflow', 'lock'))).toBe(false)
    const committed = readdirSync(join(out, '_evflow', 'commits')).map((f) => f.replace('.json', '.parquet')).sort()
    expect(parquetFiles(out)).toEqual(committed)
    expect(JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')).interrupted).toBe(true)
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    expect(bytesOf(out)).toEqual(bytesOf(join(dir, 'kill-ref')))
  })

  it('refuses an output folder held by a live run (exit 4)', () => {
    const out = join(dir, 'locked')
    runCli(['scan', 'fixtures/shards/part-00002.parquet', '-o', out])
    writeFileSync(join(out, '_evflow', 'lock'), JSON.stringify({ host: hostname(), pid: process.pid, startedAt: 'now' }))
    const result = runCli(['scan', 'fixtures/shards/part-00002.parquet', '-o', out, '--overwrite'])
    expect(result.code).toBe(4)
    expect(result.stderr).toMatch(/OutputLockedError: .* is in use by another evflow run/)
  })

  it('reports bad usage and config with exit 2 and one clear line', () => {
    const badSize = runCli(['scan', 'fixtures/shards', '-o', join(dir, 'x'), '--size', '0'])
    expect(badSize.code).toBe(2)
    expect(badSize.stderr.trim().split('\n')).toHaveLength(1)
    expect(badSize.stderr).toContain('PipelineConfigError: size:')
    const missing = runCli(['scan', 'no/such/dir', '-o', join(dir, 'x')])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('InputNotFoundError: no/such/dir')
    const config = join(dir, 'config.json')
    writeFileSync(config, JSON.stringify({ size: 16, bogus: 1 }))
    const unknownKey = runCli(['scan', 'fixtures/shards', '-o', join(dir, 'x'), '--config', config])
    expect(unknownKey.code).toBe(2)
    expect(unknownKey.stderr).toContain('bogus')
    expect(runCli(['scan', 'fixtures/shards']).code).toBe(2) // -o is required
  })

  it('exits 3 when a shard cannot be read, after finishing the others', () => {
    const input = join(dir, 'poison')
    runCli(['scan', 'fixtures/shards/part-00002.parquet', '-o', join(dir, 'unused')])
    mkdirSync(input, { recursive: true })
    writeFileSync(join(input, 'bad.parquet'), 'PAR1 not really PAR1')
    copyFileSync('fixtures/shards/part-00002.parquet', join(input, 'good.parquet'))
    const result = runCli(['scan', input, '-o', join(dir, 'poison-out')])
    expect(result.code).toBe(3)
    expect(result.stdout).toContain('1 committed, 0 skipped, 1 failed')
    expect(result.stdout).toMatch(/failed: bad: .*bad\.parquet/)
  })

  it('takes flags over --config over defaults, and stores the config in the output', async () => {
    const config = join(dir, 'size.json')
    writeFileSync(config, JSON.stringify({ size: 16, keep: ['url'] }))
    const out = join(dir, 'configured')
    expect(runCli(['scan', 'fixtures/shards/part-00000.parquet', '-o', out, '--config', config, '--max-bytes', '1000000']).code).toBe(0)
    const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8'))
    expect(summary.config).toMatchObject({ scan: { size: 16, maxBytes: 1_000_000 }, read: { keep: ['url'] } })
    const columns = await duckQuery(`SELECT name FROM parquet_schema('${join(out, 'part-00000.parquet')}')`)
    expect(columns.map((c) => c.name)).toContain('url')
  })

  it('inspect shows the schema, row groups and image column', () => {
    const result = runCli(['inspect', 'fixtures/shards/part-00002.parquet'])
    expect(result.code).toBe(0)
    expect(result.stdout).toContain('24 rows in 3 row group(s)')
    expect(result.stdout).toContain('image: group  <- image (hf-struct)')
    const json = JSON.parse(runCli(['inspect', 'fixtures/shards/part-00000.parquet', '--json']).stdout)
    expect(json).toMatchObject({ rows: 64, imageColumn: 'image' })
    expect(runCli(['inspect', 'README.md']).code).toBe(3)
  })

  it('has --help on every command', () => {
    for (const args of [['--help'], ['scan', '--help'], ['inspect', '--help']]) {
      const result = runCli(args)
      expect(result.code).toBe(0)
      expect(result.stdout).toContain('Usage: evflow')
    }
  })
})

describe('output determinism', () => {
  it('gives byte-identical shards whatever the speed settings (they are not written into the files)', () => {
    const a = join(dir, 'det-a')
    const b = join(dir, 'det-b')
    expect(runCli(['scan', 'fixtures/shards', '-o', a, '--concurrency', '1', '--max-in-flight', '16']).code).toBe(0)
    expect(runCli(['scan', 'fixtures/shards', '-o', b, '--concurrency', '7']).code).toBe(0)
    expect(bytesOf(a)).toEqual(bytesOf(b))
  })
})
