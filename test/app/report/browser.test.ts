/**
 * The report in a real browser: headless Chromium (Debian's `chromium`, driven by playwright-core) opens
 * reports of real runs with the network cut off, and the page is checked against the output Parquet: the
 * gallery's texts under the right images, every error reason with its count, filters and search, no console
 * error, no request. Screenshots are kept under `out/report-test/` (not committed).
 *
 * Skipped, with a notice, where `/usr/bin/chromium` is missing (Debian package `chromium`).
 */
import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ROOT, runCli } from '../../helpers/cli.js'
import { tempDir } from '../../helpers/util.js'
import { hasChromium, openReport, type OpenedReport } from './browser.js'
import { expected, runTextPipeline, writeInputs } from './runs.js'

if (!hasChromium) {
  console.warn('test/app/report: /usr/bin/chromium is missing: SKIPPING the browser tests of the HTML report (install the Debian package chromium to run them)')
}

const SHOTS = join(ROOT, 'out', 'report-test')

type Row = Record<string, unknown>

async function readParquet(path: string, columns?: string[]): Promise<Row[]> {
  const file = await asyncBufferFromFile(path)
  return (await parquetReadObjects({ file, compressors, utf8: false, ...(columns ? { columns } : {}) })) as Row[]
}

const str = (v: unknown): string | null => (v === null || v === undefined ? null : v instanceof Uint8Array ? Buffer.from(v).toString('utf8') : String(v))

/** Output rows of every committed shard of `out`, by shard name, with each shard's input path and first row. */
async function readOutputs(out: string): Promise<Map<string, { rows: Row[]; input: string; rowStart: number }>> {
  const map = new Map<string, { rows: Row[]; input: string; rowStart: number }>()
  const commits = join(out, '_evflow', 'commits')
  for (const name of (await import('node:fs')).readdirSync(commits)) {
    const record = JSON.parse(readFileSync(join(commits, name), 'utf8')) as { shard: string; output: string; input: string; rowStart: number }
    map.set(record.shard, { rows: await readParquet(join(out, record.output)), input: record.input, rowStart: record.rowStart })
  }
  return map
}

/** Mean absolute difference of two images, both upright, flattened on grey and resized to 12×12 RGB (0-255). */
async function imageDistance(a: Buffer, b: Buffer): Promise<number> {
  const small = (x: Buffer) => sharp(x).autoOrient().flatten({ background: '#808080' }).resize(12, 12, { fit: 'fill' }).toColourspace('srgb').raw().toBuffer()
  const [pa, pb] = await Promise.all([small(a), small(b)])
  let sum = 0
  for (let i = 0; i < pa.length; i++) sum += Math.abs(pa[i] - pb[i])
  return sum / pa.length
}

const dataUrlBytes = (src: string) => Buffer.from(src.slice(src.indexOf(',') + 1), 'base64')

interface Card {
  shard: string
  row: number
  inputRow: number
  caption: string | null
  conf: string | null
  finish: string | null
  match: string | null
  images: string[]
  hidden: boolean
}

async function cards(report: OpenedReport, selector = '#gallery-grid .card'): Promise<Card[]> {
  return report.page.$$eval(selector, (els) =>
    els.map((el) => ({
      shard: el.getAttribute('data-shard') ?? '',
      row: Number(el.getAttribute('data-row')),
      inputRow: Number(el.getAttribute('data-input-row')),
      caption: el.querySelector('[data-field="caption"]')?.textContent ?? null,
      conf: el.getAttribute('data-conf'),
      finish: el.getAttribute('data-finish'),
      match: el.getAttribute('data-match'),
      images: Array.from(el.querySelectorAll('.thumb img')).map((img) => img.getAttribute('src') ?? ''),
      hidden: (el as HTMLElement).hidden,
    })),
  )
}

const shownCount = async (report: OpenedReport) => Number(await report.page.textContent('#shown'))

/** The page's error table: code → count. */
async function errorTable(report: OpenedReport): Promise<Record<string, number>> {
  const rows = await report.page.$$eval('table.errors tbody tr', (trs) => trs.map((tr) => [tr.getAttribute('data-code') ?? '', tr.querySelector('.count')?.textContent ?? '']))
  return Object.fromEntries(rows.map(([code, count]) => [code, Number(count.replace(/,/g, ''))]))
}

function expectCleanPage(report: OpenedReport): void {
  expect(report.errors).toEqual([])
  expect(report.blocked).toEqual([])
  expect(report.failed).toEqual([])
}

let dir: string
let cleanup: () => void
beforeAll(() => {
  ;({ dir, cleanup } = tempDir('evflow-report-browser-'))
  mkdirSync(SHOTS, { recursive: true })
})
afterAll(() => cleanup?.())

describe.skipIf(!hasChromium)('evflow report in headless Chromium', () => {
  it('caption --report on the fixture shards: texts under the right images, every error reason with its count, search', async () => {
    const out = join(dir, 'caption')
    const run = runCli(['caption', 'fixtures/shards', '-o', out, '--report'], { timeoutMs: 180_000 })
    expect(run.code, run.stderr).toBe(0)
    const file = join(out, '_evflow', 'report.html')
    expect(run.stdout).toContain(`report: ${file} (`)
    const outputs = await readOutputs(out)
    const okRows = [...outputs.values()].reduce((n, o) => n + o.rows.filter((r) => str(r.status) === 'ok').length, 0)
    const report = await openReport(file)
    try {
      expectCleanPage(report)
      const gallery = await cards(report)
      // Fewer ok rows than the default sample of 200: every ok row is in the gallery, once.
      expect(gallery).toHaveLength(okRows)
      expect(new Set(gallery.map((c) => `${c.shard}:${c.row}`)).size).toBe(okRows)
      const inputs = new Map<string, Row[]>()
      for (const card of gallery) {
        const output = outputs.get(card.shard)!
        const row = output.rows[card.row]
        expect(str(row.status)).toBe('ok')
        expect(card.caption).toBe(str(row.caption))
        expect(card.inputRow).toBe(output.rowStart + card.row)
        // The thumbnail is the input image of that row: closer to it than to any other input image.
        if (!inputs.has(output.input)) inputs.set(output.input, await readParquet(output.input, ['image']))
        const images = inputs.get(output.input)!
        const cell = images[card.inputRow].image
        const bytes = cell instanceof Uint8Array ? Buffer.from(cell) : Buffer.from((cell as { bytes: Uint8Array }).bytes)
        expect(card.images).toHaveLength(1)
        const thumb = dataUrlBytes(card.images[0])
        const own = await imageDistance(thumb, bytes)
        expect(own).toBeLessThan(12)
        const other = images.find((r, i) => i !== card.inputRow && r.image instanceof Uint8Array && !Buffer.from(r.image).equals(bytes))
        if (other) expect(own).toBeLessThan(await imageDistance(thumb, Buffer.from(other.image as Uint8Array)))
      }

      // Errors: every reason with the count in the output; examples are the output's error rows.
      const codes: Record<string, number> = {}
      for (const o of outputs.values()) for (const r of o.rows) if (str(r.status) === 'error') codes[str(r.error_code)!] = (codes[str(r.error_code)!] ?? 0) + 1
      expect(Object.keys(codes).length).toBeGreaterThanOrEqual(3)
      expect(await errorTable(report)).toEqual(codes)
      const examples = await report.page.$$eval('.error-group .example', (els) =>
        els.map((el) => ({ code: el.closest('.error-group')?.getAttribute('data-code'), shard: el.getAttribute('data-shard'), row: Number(el.getAttribute('data-row')), message: el.querySelector('.message')?.textContent, thumbs: el.querySelectorAll('img').length })),
      )
      for (const [code, n] of Object.entries(codes)) expect(examples.filter((e) => e.code === code)).toHaveLength(Math.min(4, n))
      for (const e of examples) {
        const row = outputs.get(e.shard!)!.rows[e.row]
        expect(str(row.error_code)).toBe(e.code)
        expect(e.message).toBe(str(row.error))
      }
      // A truncated JPEG still decodes in part: its example has a thumbnail; a null cell has none.
      expect(examples.filter((e) => e.code === 'truncated').every((e) => e.thumbs === 1)).toBe(true)
      expect(examples.filter((e) => e.code === 'missing').every((e) => e.thumbs === 0)).toBe(true)

      // Search filters the gallery over the texts.
      const word = 'triangle'
      const withWord = gallery.filter((c) => c.caption!.includes(word)).length
      expect(withWord).toBeGreaterThan(0)
      expect(withWord).toBeLessThan(okRows)
      await report.page.fill('#search', word)
      expect(await shownCount(report)).toBe(withWord)
      const visible = (await cards(report)).filter((c) => !c.hidden)
      expect(visible).toHaveLength(withWord)
      expect(visible.every((c) => c.caption!.includes(word))).toBe(true)
      await report.page.fill('#search', 'no such words anywhere')
      expect(await shownCount(report)).toBe(0)
      expect(await report.page.isVisible('#gallery-empty')).toBe(true)
      await report.page.fill('#search', '')
      expect(await shownCount(report)).toBe(okRows)

      // Summary figures, the time charts and the expert load are there.
      expect(await report.page.textContent('[data-fact="rows"]')).toMatch(/^124 in · 111 ok · 13 error/)
      expect(await report.page.$$eval('#time svg', (s) => s.length)).toBeGreaterThanOrEqual(4)
      expect(await report.page.$$eval('#time .bars .bar-row', (rows) => rows.map((r) => r.textContent))).toEqual(expect.arrayContaining([expect.stringMatching(/^expert 0/)]))
      await report.page.screenshot({ path: join(SHOTS, 'caption.png') })
      expectCleanPage(report)
    } finally {
      await report.close()
    }

    // On a phone: nothing wider than the screen.
    const phone = await openReport(file, { width: 390, height: 844 })
    try {
      expect(await phone.page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390)
      await phone.page.screenshot({ path: join(SHOTS, 'caption-phone.png') })
      expectCleanPage(phone)
    } finally {
      await phone.close()
    }
  }, 240_000)

  it('confidence, finish reason and reference views: lowest confidence first, mismatches only, finish_reason = length', async () => {
    const inputs = join(dir, 'text-in')
    const out = join(dir, 'text-out')
    await writeInputs(inputs, 2, 90, { rowGroupSize: 40 })
    const summary = await runTextPipeline([inputs], out)
    expect(summary.shards.committed).toBe(2)
    const file = join(dir, 'text-report.html')
    const result = runCli(['report', out, '-o', file, '--reference', inputs, '--sample', '40', '--seed', '3'])
    expect(result.code, result.stderr).toBe(0)
    const evalJson = JSON.parse(runCli(['eval', out, '--reference', inputs, '--json']).stdout) as { caption: { exactMatch: number; bleu4: number; ciderD: number } }

    const all: { s: number; i: number; e: ReturnType<typeof expected> }[] = []
    for (let s = 0; s < 2; s++) for (let i = 0; i < 90; i++) all.push({ s, i, e: expected(s, i) })
    const ok = all.filter((r) => r.e.status === 'ok')
    const report = await openReport(file)
    try {
      expectCleanPage(report)
      const gallery = await cards(report)
      const pools = await report.page.$$eval('#gallery-grid .card', (els) => els.map((el) => el.getAttribute('data-pools') ?? ''))
      expect(pools.filter((p) => p.includes('sample'))).toHaveLength(40)
      expect(pools.filter((p) => p.includes('lowest'))).toHaveLength(10)
      for (const card of gallery) {
        const s = Number(/part-(\d+)/.exec(card.shard)![1])
        const e = expected(s, card.row)
        expect(e.status).toBe('ok')
        expect(card.caption).toBe(e.caption)
        expect(Number(card.conf)).toBeCloseTo(e.mean!, 9)
        expect(card.finish).toBe(e.finish)
        expect(card.match).toBe(e.caption!.startsWith('a wrong') ? '0' : '1')
      }
      // The least confident rows of the whole output are in the gallery, first when sorted by confidence.
      const lowest = [...ok].sort((a, b) => a.e.mean! - b.e.mean!).slice(0, 10)
      await report.page.selectOption('#sort', 'confidence')
      const sorted = (await cards(report)).map((c) => Number(c.conf))
      expect(sorted).toEqual([...sorted].sort((a, b) => a - b))
      expect(sorted.slice(0, 10)).toEqual(lowest.map((r) => r.e.mean))
      await report.page.selectOption('#sort', 'output')

      // Mismatches only: exactly the cards whose caption differs from the reference.
      await report.page.check('#only-mismatches')
      const mismatches = gallery.filter((c) => c.caption!.startsWith('a wrong')).length
      expect(mismatches).toBeGreaterThan(0)
      expect(await shownCount(report)).toBe(mismatches)
      expect((await cards(report)).filter((c) => !c.hidden).every((c) => c.match === '0')).toBe(true)
      await report.page.uncheck('#only-mismatches')

      // finish_reason = length: the rows cut at the token limit.
      await report.page.check('#only-length')
      const cut = gallery.filter((c) => c.finish === 'length').length
      expect(cut).toBeGreaterThan(0)
      expect(await shownCount(report)).toBe(cut)
      expect((await cards(report)).filter((c) => !c.hidden).every((c) => c.finish === 'length')).toBe(true)
      await report.page.screenshot({ path: join(SHOTS, 'confidence-length.png') })
      await report.page.uncheck('#only-length')
      expect(await shownCount(report)).toBe(gallery.length)

      // Finish reasons over every ok row, and the errors by reason.
      const lengthRows = ok.filter((r) => r.e.finish === 'length').length
      expect(await report.page.textContent('#gallery')).toContain(`length ${lengthRows} (`)
      const codes: Record<string, number> = {}
      for (const r of all) if (r.e.status === 'error') codes[r.e.code!] = (codes[r.e.code!] ?? 0) + 1
      expect(await errorTable(report)).toEqual(codes)

      // The evaluation shows the figures of evflow eval.
      expect(await report.page.textContent('[data-metric="exact-match"]')).toBe(`${(100 * evalJson.caption.exactMatch).toFixed(2)}%`)
      expect(await report.page.textContent('[data-metric="bleu4"]')).toBe(evalJson.caption.bleu4.toFixed(4))
      expect(await report.page.textContent('[data-metric="cider-d"]')).toBe(evalJson.caption.ciderD.toFixed(4))
      expectCleanPage(report)
    } finally {
      await report.close()
    }
  }, 180_000)

  it('video-caption: every frame of a clip in a strip', async () => {
    const out = join(dir, 'video')
    const run = runCli(['video-caption', 'fixtures/scenes/video.parquet', '-o', out, '--limit', '4', '--report'], { timeoutMs: 180_000 })
    expect(run.code, run.stderr).toBe(0)
    const clips = await readParquet(join(ROOT, 'fixtures/scenes/video.parquet'), ['frames'])
    const report = await openReport(join(out, '_evflow', 'report.html'))
    try {
      expectCleanPage(report)
      const gallery = await cards(report)
      expect(gallery).toHaveLength(4)
      for (const card of gallery) expect(card.images).toHaveLength((clips[card.inputRow].frames as unknown[]).length)
    } finally {
      await report.close()
    }
  }, 180_000)
})
