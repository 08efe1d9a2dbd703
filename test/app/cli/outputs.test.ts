/**
 * The output folder under hostile names and paths (issue 17, the output side), through the built CLI as a
 * user runs it, read back with DuckDB as users' tools read it:
 * - output names are collision-free (unicode names, sanitising clashes, `--rows` suffix clashes, names
 *   that differ only in case), so every input row reaches the output exactly once;
 * - an output folder that equals, contains or is inside an input is refused, inputs are never written;
 * - nothing under `_evflow/` is followed through a symlink or emptied;
 * - outputs no longer in the plan (renamed inputs, `--limit` trials, other `--rows`) are set aside, so
 *   `read_parquet('out/*.parquet')` never double-counts;
 * - committed outputs are verified by sha256 on rerun; a record path that is a folder is a clear error;
 * - every name evflow makes, temp names included, fits NAME_MAX (255 bytes) with a 64-byte hostname.
 */
import { spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { DuckDBInstance } from '@duckdb/node-api'

import { CLI, ROOT, runCli } from '../../helpers/cli.js'
import { duckQuery } from '../../helpers/duckdb.js'
import * as img from '../../helpers/images.js'
import { imageShardBuffer, writeBuffer } from '../../helpers/shards.js'
import { tempDir } from '../../helpers/util.js'

let dir: string
let cleanup: () => void
let pool: Buffer[]
beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-outputs-'))
  pool = await Promise.all(Array.from({ length: 4 }, (_, i) => img.jpeg(24 + i, 24, 900 + i, 80)))
})
afterAll(() => cleanup())

/** Writes a shard of `rows` rows whose ids are `<tag>-<i>` (unique over a test's inputs). */
function shard(path: string, tag: string, rows: number, rowGroupSize = 8): string[] {
  const ids = Array.from({ length: rows }, (_, i) => `${tag}-${i}`)
  writeBuffer(path, imageShardBuffer(ids.map((id, i) => ({ id, image: pool[i % pool.length] })), rowGroupSize))
  return ids
}

const parquetFiles = (out: string) => readdirSync(out).filter((f) => f.endsWith('.parquet')).sort()
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex')
const snapshot = (folder: string) => Object.fromEntries(readdirSync(folder, { recursive: true, encoding: 'utf8' }).sort().map((f) => [f, statSync(join(folder, f)).isFile() ? sha(join(folder, f)) : 'dir']))

/** The ids read from the output folder the documented way (`read_parquet('<out>/*.parquet')`). */
async function outputIds(out: string): Promise<string[]> {
  const rows = await duckQuery(`SELECT id FROM read_parquet('${out}/*.parquet') ORDER BY id`)
  return rows.map((r) => r.id as string)
}

const oneLine = (stderr: string) => stderr.trim().split('\n')

describe('output names never collide', () => {
  it('unicode names that sanitise alike (图像, 画像 beside shard-1): every row once, stable across reruns', async () => {
    const input = join(dir, 'unicode')
    const ids = [...shard(join(input, '图像.parquet'), 'tu', 16), ...shard(join(input, '画像.parquet'), 'hua', 16), ...shard(join(input, 'shard-1.parquet'), 's1', 16)]
    const out = join(dir, 'unicode-out')
    const first = runCli(['scan', input, '-o', out])
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain('3 committed, 0 skipped, 0 failed')
    expect(parquetFiles(out)).toHaveLength(3)
    expect(await outputIds(out)).toEqual([...ids].sort())
    const names = parquetFiles(out)
    const again = runCli(['scan', input, '-o', out])
    expect(again.stdout).toContain('0 committed, 3 skipped')
    expect(parquetFiles(out)).toEqual(names)
    expect(await outputIds(out)).toEqual([...ids].sort())
  })

  it('`a b`, `a_b` and `a_b-1` in one folder: three outputs, every row once', async () => {
    const input = join(dir, 'spaces')
    const ids = [...shard(join(input, 'a b.parquet'), 'space', 10), ...shard(join(input, 'a_b.parquet'), 'under', 11), ...shard(join(input, 'a_b-1.parquet'), 'one', 12)]
    const out = join(dir, 'spaces-out')
    const result = runCli(['scan', input, '-o', out])
    expect(result.code, result.stderr).toBe(0)
    expect(parquetFiles(out)).toHaveLength(3)
    expect(await outputIds(out)).toEqual([...ids].sort())
  })

  it('`x` with --rows 0:24 beside a file named `x.rows-0-24`: both shards, every selected row once', async () => {
    const input = join(dir, 'suffix')
    const x = shard(join(input, 'x.parquet'), 'x', 48)
    const y = shard(join(input, 'x.rows-0-24.parquet'), 'y', 24)
    const out = join(dir, 'suffix-out')
    const result = runCli(['scan', input, '-o', out, '--rows', '0:24'])
    expect(result.code, result.stderr).toBe(0)
    expect(parquetFiles(out)).toHaveLength(2)
    expect(await outputIds(out)).toEqual([...x.slice(0, 24), ...y].sort())
  })

  it('names that differ only in case get names that differ in more than case (case-insensitive file systems)', async () => {
    const input = join(dir, 'case')
    const ids = [...shard(join(input, 'Photos.parquet'), 'upper', 5), ...shard(join(input, 'photos.parquet'), 'lower', 6)]
    const out = join(dir, 'case-out')
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    const names = parquetFiles(out)
    expect(names).toHaveLength(2)
    expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(2)
    expect(await outputIds(out)).toEqual([...ids].sort())
  })

  it('keeps the plain names of plain inputs (the fixtures)', () => {
    const out = join(dir, 'plain-out')
    expect(runCli(['scan', 'fixtures/shards', '-o', out]).code).toBe(0)
    expect(parquetFiles(out)).toEqual(['part-00000.parquet', 'part-00001.parquet', 'part-00002.parquet'])
    const rows = join(dir, 'plain-rows')
    expect(runCli(['scan', 'fixtures/shards/part-00000.parquet', '-o', rows, '--rows', '0:10']).code).toBe(0)
    expect(parquetFiles(rows)).toEqual(['part-00000.rows-0-10.parquet'])
  })
})

describe('inputs are never written', () => {
  let input: string
  let before: Record<string, string>
  beforeAll(() => {
    input = join(dir, 'precious')
    shard(join(input, 'part-0.parquet'), 'p0', 12)
    shard(join(input, 'sub', 'part-1.parquet'), 'p1', 12)
    before = snapshot(input)
  })

  const refused = (args: string[]) => {
    const result = runCli(['scan', ...args])
    expect(result.code, result.stdout + result.stderr).toBe(2)
    expect(oneLine(result.stderr)).toHaveLength(1)
    expect(result.stderr).toMatch(/UnsafeOutputError: .*input/)
    expect(snapshot(input)).toEqual(before)
    return result
  }

  it('refuses -o equal to the input folder', () => {
    refused([input, '-o', input])
  })

  it('refuses -o inside the input folder, and creates nothing there', () => {
    refused([input, '-o', join(input, 'out')])
    expect(existsSync(join(input, 'out'))).toBe(false)
    refused([join(input, 'part-0.parquet'), join(input, 'sub'), '-o', join(input, 'sub', 'deeper', 'out')])
  })

  it('refuses -o that contains an input (a folder or a file)', () => {
    refused([join(input, 'sub'), '-o', input])
    refused([join(input, 'part-0.parquet'), '-o', input])
    refused([join(input, 'part-0.parquet'), '-o', join(input, 'part-0.parquet')])
  })

  it('sees through symlinked folders, and through globs', () => {
    const link = join(dir, 'precious-link')
    symlinkSync(input, link)
    refused([link, '-o', join(input, 'out')])
    refused([input, '-o', join(link, 'out')])
    refused([`${input}/**/*.parquet`, '-o', join(input, 'sub', 'out')])
  })

  it('never reads evflow outputs found inside an input folder as inputs', async () => {
    const root = join(dir, 'nested')
    const ids = shard(join(root, 'data', 'part-0.parquet'), 'n', 9)
    const out = join(dir, 'nested-out')
    expect(runCli(['scan', join(root, 'data'), '-o', out]).code).toBe(0)
    // An old output folder moved inside the data (as a user might): not an input.
    cpSync(out, join(root, 'data', 'old-out'), { recursive: true })
    const out2 = join(dir, 'nested-out-2')
    const result = runCli(['scan', root, '-o', out2])
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout).toContain('scan: 1 shard(s)')
    expect(await outputIds(out2)).toEqual([...ids].sort())
  })
})

describe('nothing under _evflow is followed through a symlink', () => {
  it('a symlinked _evflow/tmp: exit 2, the link target untouched', () => {
    const input = join(dir, 'sym-in')
    shard(join(input, 'p.parquet'), 'p', 6)
    const victim = join(dir, 'victim-tmp')
    mkdirSync(victim, { recursive: true })
    writeFileSync(join(victim, 'keep.txt'), 'precious')
    writeFileSync(join(victim, 'file.host.1.deadbeef.tmp'), 'precious too')
    const out = join(dir, 'sym-out-tmp')
    mkdirSync(join(out, '_evflow'), { recursive: true })
    symlinkSync(victim, join(out, '_evflow', 'tmp'))
    const result = runCli(['scan', input, '-o', out])
    expect(result.code, result.stderr).toBe(2)
    expect(result.stderr).toMatch(/UnsafeOutputError: .*tmp.*symlink/)
    expect(readdirSync(victim).sort()).toEqual(['file.host.1.deadbeef.tmp', 'keep.txt'])
  })

  it('a symlinked _evflow/commits: exit 2, nothing written through it', () => {
    const input = join(dir, 'sym-in')
    const victim = join(dir, 'victim-commits')
    mkdirSync(victim, { recursive: true })
    const out = join(dir, 'sym-out-commits')
    mkdirSync(join(out, '_evflow'), { recursive: true })
    symlinkSync(victim, join(out, '_evflow', 'commits'))
    const result = runCli(['scan', input, '-o', out])
    expect(result.code, result.stderr).toBe(2)
    expect(result.stderr).toMatch(/UnsafeOutputError: .*commits.*symlink/)
    expect(readdirSync(victim)).toEqual([])
  })

  it('a symlinked _evflow itself: exit 2', () => {
    const input = join(dir, 'sym-in')
    const victim = join(dir, 'victim-meta')
    mkdirSync(victim, { recursive: true })
    const out = join(dir, 'sym-out-meta')
    mkdirSync(out, { recursive: true })
    symlinkSync(victim, join(out, '_evflow'))
    const result = runCli(['scan', input, '-o', out])
    expect(result.code, result.stderr).toBe(2)
    expect(readdirSync(victim)).toEqual([])
  })
})

describe('the output folder always reads right', () => {
  it('renamed inputs: the old output is set aside and reported, DuckDB counts each row once', async () => {
    const input = join(dir, 'rename-in')
    const a = shard(join(input, 'a.parquet'), 'a', 20)
    const b = shard(join(input, 'b.parquet'), 'b', 30)
    const out = join(dir, 'rename-out')
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    renameSync(join(input, 'b.parquet'), join(input, 'c.parquet'))
    const rerun = runCli(['scan', input, '-o', out])
    expect(rerun.code, rerun.stderr).toBe(0)
    expect(rerun.stdout).toContain('1 committed, 1 skipped')
    expect(rerun.stdout).toMatch(/set aside: 1 output\(s\) not in this plan .*_evflow\/stale\//)
    expect(parquetFiles(out)).toEqual(['a.parquet', 'c.parquet'])
    expect(await outputIds(out)).toEqual([...a, ...b].sort())
    const manifest = JSON.parse(readFileSync(join(out, '_evflow', 'manifest.json'), 'utf8'))
    expect(manifest.files).toEqual(['a.parquet', 'c.parquet'])
    const stale = readdirSync(join(out, '_evflow', 'stale'), { recursive: true, encoding: 'utf8' })
    expect(stale.some((f) => f.endsWith('b.parquet'))).toBe(true)
  })

  it('--limit trial, then the full run, then other --rows, then full again: never a double count', async () => {
    const input = join(dir, 'limit-in')
    const ids = [...shard(join(input, 'p0.parquet'), 'p0', 24), ...shard(join(input, 'p1.parquet'), 'p1', 24)]
    const out = join(dir, 'limit-out')
    expect(runCli(['scan', input, '-o', out, '--limit', '10']).code).toBe(0)
    expect(await outputIds(out)).toHaveLength(10)
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    expect(await outputIds(out)).toEqual([...ids].sort())
    expect(runCli(['scan', input, '-o', out, '--rows', '0:8']).code).toBe(0)
    expect(await outputIds(out)).toHaveLength(16)
    const full = runCli(['scan', input, '-o', out])
    expect(full.code).toBe(0)
    expect(await outputIds(out)).toEqual([...ids].sort())
    expect(parquetFiles(out)).toEqual(['p0.parquet', 'p1.parquet'])
    const manifest = JSON.parse(readFileSync(join(out, '_evflow', 'manifest.json'), 'utf8'))
    expect(manifest).toMatchObject({ complete: true, files: ['p0.parquet', 'p1.parquet'] })
  })

  it("docs/cli.md's DuckDB queries (the glob, and the manifest's list) count each row once after a --limit trial and a full run", async () => {
    const input = join(dir, 'docs-in')
    shard(join(input, 'p0.parquet'), 'd0', 20)
    shard(join(input, 'p1.parquet'), 'd1', 20)
    const out = join(dir, 'docs-out', 'scan')
    expect(runCli(['scan', input, '-o', out, '--limit', '7']).code).toBe(0)
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    const docs = readFileSync(join(ROOT, 'docs', 'cli.md'), 'utf8')
    const sql = /## Output\n[\s\S]*?```sql\n([\s\S]*?)```/.exec(docs)![1].replaceAll('out/scan', out)
    const statements = sql.split(/;\s*\n/).map((t) => t.replace(/^--.*$/gm, '').trim()).filter((t) => t.length > 0)
    expect(statements).toHaveLength(3)
    const instance = await DuckDBInstance.create(':memory:')
    const connection = await instance.connect()
    try {
      const total = async (statement: string) => {
        const rows = (await connection.runAndReadAll(statement)).getRowObjectsJS()
        return rows.reduce((n, r) => n + Number(r['count_star()']), 0)
      }
      expect(await total(statements[0])).toBe(40)
      await connection.run(statements[1])
      expect(await total(statements[2])).toBe(40)
    } finally {
      connection.closeSync()
      instance.closeSync()
    }
  })
})

describe('resume verifies what it skips', () => {
  it('a committed output replaced by same-size garbage is redone, giving the original bytes', () => {
    const input = join(dir, 'garbage-in')
    shard(join(input, 'g0.parquet'), 'g0', 10)
    shard(join(input, 'g1.parquet'), 'g1', 10)
    const out = join(dir, 'garbage-out')
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    const original = sha(join(out, 'g0.parquet'))
    writeFileSync(join(out, 'g0.parquet'), randomBytes(statSync(join(out, 'g0.parquet')).size))
    const rerun = runCli(['scan', input, '-o', out])
    expect(rerun.code).toBe(0)
    expect(rerun.stdout).toContain('1 committed, 1 skipped')
    expect(sha(join(out, 'g0.parquet'))).toBe(original)
  })

  it('a completion record path that is a folder is a clear error (exit 2), not "unexpected error"', () => {
    const input = join(dir, 'garbage-in')
    const out = join(dir, 'record-dir-out')
    expect(runCli(['scan', input, '-o', out]).code).toBe(0)
    rmSync(join(out, '_evflow', 'commits', 'g0.json'))
    mkdirSync(join(out, '_evflow', 'commits', 'g0.json'))
    const rerun = runCli(['scan', input, '-o', out])
    expect(rerun.code, rerun.stderr).toBe(2)
    expect(oneLine(rerun.stderr)).toHaveLength(1)
    expect(rerun.stderr).toMatch(/UnsafeOutputError: .*g0\.json.*not a file/)
  })
})

describe('names fit NAME_MAX', () => {
  it('a 239-character input name with a 64-character hostname commits, every name within 255 bytes', async () => {
    const input = join(dir, 'long-in')
    const stem = 'n'.repeat(239)
    const ids = [...shard(join(input, `${stem}.parquet`), 'long', 10), ...shard(join(input, `${'é'.repeat(120)}.parquet`), 'wide', 10)]
    const out = join(dir, 'long-out')
    // A 64-byte hostname (Linux's HOST_NAME_MAX), set in the CLI process before evflow loads.
    const preload = `data:text/javascript,${encodeURIComponent("import os from 'node:os'; import { syncBuiltinESMExports } from 'node:module'; os.hostname = () => 'h'.repeat(64); syncBuiltinESMExports()")}`
    const result = spawnSync(process.execPath, ['--import', preload, CLI, 'scan', input, '-o', out, '--rows', '0:9'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout).toContain('2 committed')
    const names = readdirSync(out, { recursive: true, encoding: 'utf8' }).flatMap((p) => p.split('/'))
    expect(Math.max(...names.map((n) => Buffer.byteLength(n)))).toBeLessThanOrEqual(255)
    expect(await outputIds(out)).toEqual([...ids.filter((id) => !id.endsWith('-9'))].sort())
  })
})
