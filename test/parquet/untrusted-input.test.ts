/**
 * Issue 17, the reading side: named regressions for damaged and hostile Parquet inputs, run through the
 * built CLI as a user would. Before parsing moved to parser threads, the byte-3057 file and the looping
 * page hung `evflow scan` at 100% CPU deaf to SIGINT/SIGTERM, a row group claiming 2^31 rows killed it
 * with a heap OOM (exit 134), and one claiming 1,000,000 rows "succeeded" with 999,984 fake rows.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parquetReadObjects } from 'hyparquet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { exited, runCli, startCli } from '../helpers/cli.js'
import * as img from '../helpers/images.js'
import { tempDir } from '../helpers/util.js'
import { FIXTURE_SHARDS, byte3057, fixture, loopingShard, memoryBombShard, withRowGroupRows } from './hostile.js'

let dir: string
let cleanup: () => void
let images: Uint8Array[]

beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-untrusted-'))
  images = await Promise.all(Array.from({ length: 4 }, (_, i) => img.png(8 + i, 8, i)))
})
afterAll(() => cleanup())

interface Row {
  status: string
  error: string | null
  error_code: string | null
  id: string | null
}

async function rowsOf(path: string): Promise<Row[]> {
  const bytes = readFileSync(path)
  return (await parquetReadObjects({ file: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) })) as unknown as Row[]
}

function write(name: string, bytes: Uint8Array, sub = ''): string {
  const folder = join(dir, sub)
  mkdirSync(folder, { recursive: true })
  const path = join(folder, name)
  writeFileSync(path, bytes)
  return path
}

/** The summary line of a scan, and the output folder's state: no temp file left, a record per output. */
function checkOutput(out: string): void {
  const tmp = join(out, '_evflow', 'tmp')
  expect(existsSync(tmp) ? readdirSync(tmp) : []).toEqual([])
  for (const f of readdirSync(out).filter((f) => f.endsWith('.parquet'))) {
    expect(existsSync(join(out, '_evflow', 'commits', f.replace(/\.parquet$/, '.json')))).toBe(true)
  }
}

describe('damaged inputs: every row accounted for, nothing hangs', () => {
  it('byte 3057 (a corrupt page header in row group 1): that row group becomes 8 shard-read rows; the rest read', async () => {
    const input = write('p3057.parquet', byte3057())
    const out = join(dir, 'out-3057')
    const started = Date.now()
    const result = runCli(['scan', input, '-o', out], { timeoutMs: 30_000 })
    expect(Date.now() - started).toBeLessThan(30_000)
    expect(result.code).toBe(0)
    expect(result.stderr).not.toMatch(/\n\s+at /)
    checkOutput(out)
    const rows = await rowsOf(join(out, 'p3057.parquet'))
    expect(rows).toHaveLength(24)
    const failed = rows.filter((r) => r.error_code === 'shard-read')
    expect(failed).toHaveLength(8)
    expect(failed[0].error).toMatch(/row group 1\): damaged: .*column id/)
    expect(rows.slice(8, 16).every((r) => r.error_code === 'shard-read')).toBe(true)
  })

  it('byte 3057 in a folder with two good shards: the good shards commit, exit 0', async () => {
    const folder = join(dir, 'mixed')
    write('bad.parquet', byte3057(), 'mixed')
    write('part-00000.parquet', fixture('part-00000.parquet'), 'mixed')
    write('part-00001.parquet', fixture('part-00001.parquet'), 'mixed')
    const out = join(dir, 'out-mixed')
    const result = runCli(['scan', folder, '-o', out], { timeoutMs: 30_000 })
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/3 shard\(s\): 3 committed, 0 skipped, 0 failed/)
    checkOutput(out)
  })

  it.each([
    ['2^31', 2n ** 31n],
    ['2^40', 2n ** 40n],
    ['1,000,000', 1_000_000n],
    ['0', 0n],
  ])('a row group whose footer claims %s rows: its 8 real rows become shard-read rows, memory stays small', async (label, claimed) => {
    const input = write(`rows-${label.replace(/\W/g, '')}.parquet`, withRowGroupRows(fixture('part-00002.parquet'), 1, claimed))
    const out = join(dir, `out-rows-${label.replace(/\W/g, '')}`)
    const result = runCli(['scan', input, '-o', out, '--json'], { timeoutMs: 30_000 })
    expect(result.code).toBe(0)
    expect(result.stderr).not.toMatch(/\n\s+at /)
    checkOutput(out)
    const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as { rows: { in: number }; peakRssMiB: number }
    expect(summary.rows.in).toBe(24)
    expect(summary.peakRssMiB).toBeLessThan(400)
    const rows = await rowsOf(readdirSync(out).filter((f) => f.endsWith('.parquet')).map((f) => join(out, f))[0])
    expect(rows).toHaveLength(24)
    const failed = rows.slice(8, 16)
    expect(failed.every((r) => r.error_code === 'shard-read')).toBe(true)
    expect(failed[0].error).toContain(`the footer claims ${claimed} rows, its pages hold 8`)
    expect(rows.filter((r) => r.error_code === 'shard-read')).toHaveLength(8)
  })

  it('a data page that loops the parser forever: its row group times out (--read-timeout), the run goes on', async () => {
    const folder = join(dir, 'loop')
    write('loop.parquet', loopingShard(images), 'loop')
    write('part-00002.parquet', fixture('part-00002.parquet'), 'loop')
    const out = join(dir, 'out-loop')
    const started = Date.now()
    const result = runCli(['scan', folder, '-o', out, '--read-timeout', '2'], { timeoutMs: 30_000 })
    expect(Date.now() - started).toBeLessThan(30_000)
    expect(result.code).toBe(0)
    checkOutput(out)
    const rows = await rowsOf(join(out, 'loop.parquet'))
    expect(rows).toHaveLength(100)
    expect(rows.every((r) => r.error_code === 'shard-read' && /timeout: the row group was not parsed within 2 s/.test(r.error ?? ''))).toBe(true)
    expect((await rowsOf(join(out, 'part-00002.parquet'))).filter((r) => r.status === 'ok').length).toBeGreaterThan(20)
  })

  it.each([
    ['the default budget', []],
    ['--read-memory 128', ['--read-memory', '128']],
  ])('a 6-byte memory bomb in a data page, %s: the row group fails with reason memory, evflow lives', async (label, flags) => {
    const input = write('bomb.parquet', memoryBombShard(images))
    const out = join(dir, `out-bomb-${flags.length}`)
    const result = runCli(['scan', input, '-o', out, '--json', ...flags], { timeoutMs: 60_000 })
    expect(result.code, result.stderr).toBe(0)
    expect(result.stderr).not.toMatch(/FATAL|\n\s+at /)
    checkOutput(out)
    const rows = await rowsOf(join(out, 'bomb.parquet'))
    expect(rows).toHaveLength(100)
    expect(rows.every((r) => r.error_code === 'shard-read' && /memory|timeout/.test(r.error ?? ''))).toBe(true)
    const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as { peakRssMiB: number }
    expect(summary.peakRssMiB).toBeLessThan(300)
  })

  it('a footer that is not parsed within the budget fails its shard (exit 3), the others commit', () => {
    const folder = join(dir, 'slow-footer')
    write('slow.parquet', fixture('part-00002.parquet'), 'slow-footer')
    write('part-00000.parquet', fixture('part-00000.parquet'), 'slow-footer')
    const out = join(dir, 'out-slow-footer')
    const result = runCli(['scan', folder, '-o', out, '--read-timeout', '1', '--debug-spin', 'inspect:slow.parquet:60000'], { timeoutMs: 30_000 })
    expect(result.code).toBe(3)
    expect(result.stdout).toMatch(/2 shard\(s\): 1 committed, 0 skipped, 1 failed/)
    expect(result.stdout + result.stderr).toMatch(/slow\.parquet: timeout: the footer was not parsed within 1 s/)
    checkOutput(out)
  })
})

describe('signals during a hanging parse', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('%s ends the run within 3 s (exit 130); nothing half-written looks complete', async (signal) => {
    const input = write(`hang-${signal}.parquet`, loopingShard(images), `hang-${signal}`)
    const out = join(dir, `out-hang-${signal}`)
    const child = startCli(['scan', input, '-o', out, '--json'])
    let stdout = ''
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    const exit = exited(child)
    // The parse has started once the run has printed its start event; give the thread time to get stuck.
    const deadline = Date.now() + 20_000
    while (!stdout.includes('"event":"start"') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    expect(stdout).toContain('"event":"start"')
    await new Promise((r) => setTimeout(r, 1000))
    expect(child.exitCode).toBeNull()
    const sent = Date.now()
    child.kill(signal)
    const { code } = await exit
    expect(Date.now() - sent).toBeLessThan(3000)
    expect(code).toBe(130)
    expect(existsSync(join(out, `hang-${signal}.parquet`))).toBe(false)
  })
})

it('the fixture shards the repros are made from are where the tests expect them', () => {
  expect(readdirSync(FIXTURE_SHARDS)).toEqual(expect.arrayContaining(['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet']))
})
