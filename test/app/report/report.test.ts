/**
 * `evflow report` without a browser: the size and memory bounds on a 20,000-row run, what the page says
 * when inputs changed or vanished after the run, failed shards, the thumbnail budget, and the command's
 * errors and exit codes.
 */
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { buildReport, validateReportOptions } from '../../../app/report/index.js'
import { scanOutput } from '../../../app/report/read-output.js'
import { BUDGET_REACHED, makeThumbnails } from '../../../app/report/thumbnails.js'
import { ROOT, runCli } from '../../helpers/cli.js'
import { tempDir } from '../../helpers/util.js'
import { writePoisonShard } from '../queue/fixtures.js'
import { runTextPipeline, writeInputs } from './runs.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-report-')))
afterAll(() => cleanup?.())

/** Builds a report in a fresh Node process; returns the result and the process's peak RSS (MiB). */
function reportInChild(outDir: string, output: string): { result: Awaited<ReturnType<typeof buildReport>>; peakRssMiB: number } {
  const script = join(dir, 'build-report.mjs')
  writeFileSync(
    script,
    `import { buildReport } from ${JSON.stringify(pathToFileURL(join(ROOT, 'dist/app/report/index.js')).href)}
const result = await buildReport({ outDir: process.argv[2], output: process.argv[3] })
process.stdout.write(JSON.stringify({ result, peakRssMiB: process.resourceUsage().maxRSS / 1024 }))\n`,
  )
  const child = spawnSync(process.execPath, [script, outDir, output], { encoding: 'utf8', timeout: 300_000 })
  expect(child.status, child.stderr).toBe(0)
  return JSON.parse(child.stdout) as { result: Awaited<ReturnType<typeof buildReport>>; peakRssMiB: number }
}

describe('evflow report', () => {
  it('of a 20,000-row run stays within its size bound, reads each output row group once, and keeps memory flat', async () => {
    const sizes = [2_000, 20_000]
    const measured: { rows: number; bytes: number; peak: number }[] = []
    for (const rows of sizes) {
      const inputs = join(dir, `big-in-${rows}`)
      const out = join(dir, `big-out-${rows}`)
      await writeInputs(inputs, 2, rows / 2, { distinct: 64, size: 96, rowGroupSize: 500 })
      const summary = await runTextPipeline([inputs], out)
      expect(summary.rows.in).toBe(rows)
      const { result, peakRssMiB } = reportInChild(out, join(dir, `big-${rows}.html`))
      expect(result.rows.total).toBe(rows)
      expect(result.gallery).toBeGreaterThanOrEqual(200)
      expect(result.thumbnails.missing).toBe(0)
      // Each output row group read exactly once (both outputs have row groups of 1000 rows, writeShards' default).
      expect(result.outputRowGroupsRead).toEqual({ 'part-00000.parquet': Math.ceil(rows / 2 / 1000), 'part-00001.parquet': Math.ceil(rows / 2 / 1000) })
      expect(result.bytes).toBeLessThanOrEqual(5 * 1024 * 1024)
      measured.push({ rows, bytes: result.bytes, peak: peakRssMiB })
    }
    const [small, big] = measured
    console.info(`report size and peak RSS: ${measured.map((m) => `${m.rows} rows: ${(m.bytes / 1024).toFixed(0)} KiB, ${m.peak.toFixed(0)} MiB`).join('; ')}`)
    // Ten times the rows: about the same page and the same memory (generous bounds).
    expect(big.bytes).toBeLessThan(small.bytes * 1.5)
    expect(big.peak - small.peak).toBeLessThan(64)
  }, 300_000)

  it('reports inputs that changed or vanished since the run, and shards that failed, instead of failing', async () => {
    const inputs = join(dir, 'changing-in')
    const out = join(dir, 'changing-out')
    const [first, second] = await writeInputs(inputs, 2, 30, { rowGroupSize: 10 })
    writePoisonShard(join(inputs, 'part-00009.parquet'))
    const summary = await runTextPipeline([inputs], out)
    expect(summary.shards).toMatchObject({ committed: 2, failed: 1 })
    // The first input changes (rewritten with other rows), the second disappears.
    await writeInputs(join(dir, 'other'), 1, 30, { rowGroupSize: 7 })
    copyFileSync(join(dir, 'other', 'part-00000.parquet'), first)
    rmSync(second)
    const result = await buildReport({ outDir: out, sample: 20 })
    expect(result.thumbnails.made).toBe(0)
    const html = readFileSync(result.path, 'utf8')
    expect(html).toContain('no thumbnail: input ' + first + ' changed since the run (its fingerprint differs)')
    expect(html).toMatch(/no thumbnail: input [^<]*part-00001\.parquet: no such file or folder/)
    expect(html).toContain('<li data-shard="part-00009"><b>part-00009</b>')
    expect(result.path).toBe(join(out, '_evflow', 'report.html'))
  })

  it('keeps thumbnails within the byte budget: smaller past two thirds of it, none past it; the page stays under 5 MB', async () => {
    const inputs = join(dir, 'budget-in')
    const out = join(dir, 'budget-out')
    await writeInputs(inputs, 1, 600, { size: 128, noise: true, distinct: 200, rowGroupSize: 100 })
    await runTextPipeline([inputs], out)
    const scan = await scanOutput(out, { sample: 40, seed: 1 })
    const rows = scan.gallery
    const free = await makeThumbnails(scan.shards, rows)
    expect([...free.results.values()].every((r) => r.ok)).toBe(true)
    const one = free.bytes / free.results.size
    const budget = Math.round(one * 8)
    const tight = await makeThumbnails(scan.shards, rows, { budgetBytes: budget })
    const results = rows.map((r) => tight.results.get(`${r.shard}\u0000${r.row}`)!)
    const made = results.filter((r) => r.ok)
    expect(made.length).toBeGreaterThan(5)
    expect(made.length).toBeLessThan(rows.length)
    expect(results.filter((r) => !r.ok).every((r) => !r.ok && r.reason === BUDGET_REACHED)).toBe(true)
    expect(tight.bytes).toBeLessThanOrEqual(budget)
    // Past two thirds of the budget the thumbnails are smaller.
    const widths = made.map((r) => (r.ok ? r.thumbnail.width : 0))
    expect(Math.min(...widths)).toBeLessThan(Math.max(...widths))

    // With every ok row sampled, incompressible images would make ~10 MB of thumbnails: the page stays under 5 MB.
    expect(one * scan.rows.ok).toBeGreaterThan(6 * 1024 * 1024)
    const whole = await buildReport({ outDir: out, sample: 600 })
    expect(whole.bytes).toBeLessThanOrEqual(5 * 1024 * 1024)
    expect(whole.thumbnails.bytes).toBeLessThanOrEqual(3 * 1024 * 1024)
    expect(whole.thumbnails.bytes).toBeLessThan(one * scan.rows.ok / 2)
  })

  it('validates its options before any I/O and exits 2 with one line on bad usage', () => {
    expect(() => validateReportOptions({ outDir: 'x', output: 'report.txt' })).toThrow(/output: must end in \.html/)
    expect(() => validateReportOptions({ outDir: 'x', sample: 1.5 })).toThrow(/sample: must be an integer/)
    expect(() => validateReportOptions({ outDir: 'x', seed: -1 })).toThrow(/seed: must be an integer/)
    expect(() => validateReportOptions({ outDir: 'x', reference: [] })).toThrow(/reference: give at least one/)

    const missing = runCli(['report', join(dir, 'nope')])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toBe(`evflow: InputNotFoundError: ${join(dir, 'nope')}: no such output folder\n`)
    const empty = join(dir, 'empty')
    mkdirSync(empty)
    const nothing = runCli(['report', empty])
    expect(nothing.code).toBe(2)
    expect(nothing.stderr).toMatch(/^evflow: InputNotFoundError: .*no committed output shard .*is it the output folder of an evflow run\?\n$/)
    const txt = runCli(['report', empty, '-o', join(dir, 'x.txt')])
    expect(txt.code).toBe(2)
    expect(txt.stderr).toBe('evflow: PipelineConfigError: output: must end in .html or .htm, got ' + join(dir, 'x.txt') + '\n')
    expect(runCli(['report', empty, '--sample', '-3']).code).toBe(2)
    expect(existsSync(join(dir, 'x.txt'))).toBe(false)
    expect(readdirSync(empty)).toEqual([])
  })
})
