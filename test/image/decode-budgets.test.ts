/**
 * The decoder's budgets against hostile images, measured from outside: each case decodes its images with
 * the built `decodeImages` in a child process and reports every row's outcome, the wall time and the peak
 * RSS (`process.resourceUsage().maxRSS`). Before the budgets, the eight lying JPEGs decoded as "ok" and took
 * 1.4 GB, four real 64-megapixel ones 0.8 GB or more, and the SVG a minute.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { cut, flat, lyingJpeg, lyingPng, manyScansJpeg, nestedUseSvg, noisy } from '../helpers/hostile-images.js'
import * as img from '../helpers/images.js'

const OPERATOR = fileURLToPath(new URL('../../dist/operators/decode-images.js', import.meta.url))

/** Decodes `files` (each `times` times) with `options` in a fresh Node process. */
const PROBE = `
import { readFileSync } from 'node:fs'
import { from, lastValueFrom, toArray } from 'rxjs'
const { decodeImages } = await import(process.argv[1])
const job = JSON.parse(process.argv[2])
const rows = []
for (const { path, times } of job.files) {
  for (let i = 0; i < times; i++) rows.push({ kind: 'image-row', key: { shard: path, rowGroup: 0, row: rows.length }, id: String(rows.length), kept: {}, image: readFileSync(path) })
}
const started = performance.now()
const out = await lastValueFrom(from(rows).pipe(decodeImages({ ordered: true, ...job.options }), toArray()))
const wallMs = performance.now() - started
process.stdout.write(JSON.stringify({ outcomes: out.map((r) => (r.kind === 'error' ? r.code : 'ok')), messages: out.map((r) => r.message ?? ''), wallMs, maxRssMb: process.resourceUsage().maxRSS / 1024 }))
`

interface Probe {
  outcomes: string[]
  messages: string[]
  wallMs: number
  maxRssMb: number
}

/** `bytes` with every 997th byte after the header inverted: damaged, not short. */
const flipped = (bytes: Uint8Array) => Buffer.from(bytes.map((v, i) => (i > 100 && i % 997 === 0 ? v ^ 0xff : v)))

let dir: string
const file = (name: string, bytes: Uint8Array) => {
  const path = join(dir, name)
  writeFileSync(path, bytes)
  return path
}

function probe(files: { path: string; times?: number }[], options: Record<string, unknown> = {}, limitMs = 60_000): Probe {
  const job = { files: files.map((f) => ({ path: f.path, times: f.times ?? 1 })), options }
  const started = performance.now()
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', PROBE, OPERATOR, JSON.stringify(job)], { encoding: 'utf8', timeout: limitMs, cwd: fileURLToPath(new URL('../..', import.meta.url)) })
  if (result.status !== 0) throw new Error(`probe failed after ${(performance.now() - started).toFixed(0)} ms (status ${result.status}, signal ${result.signal}): ${result.stderr.slice(-2000)}`)
  return JSON.parse(result.stdout) as Probe
}

describe.skipIf(!existsSync(OPERATOR))('decodeImages budgets (hostile images, measured in a child process)', () => {
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'evflow-hostile-'))
  })
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it('turns eight 16x16 progressive JPEGs whose headers claim 7999x7999 into truncated rows, at once, in little memory', async () => {
    const path = file('lie.jpg', await lyingJpeg(7999, 7999, true))
    const out = probe([{ path, times: 8 }], { concurrency: 8 })
    expect(out.outcomes).toEqual(new Array(8).fill('truncated'))
    expect(out.messages[0]).toMatch(/header's 7999x7999/)
    expect(out.wallMs).toBeLessThan(2_000)
    expect(out.maxRssMb).toBeLessThan(200)
  })

  it('decodes four real 64-megapixel progressive JPEGs within the pixel budget, not four at once', async () => {
    const path = file('flat64.jpg', await flat('jpeg', 7999, 7999, true))
    const out = probe([{ path, times: 4 }], { concurrency: 4 })
    expect(out.outcomes).toEqual(new Array(4).fill('ok'))
    // One at a time: ~180 MB of coefficients plus the process (four at once take ~830 MB, eight 1.4 GB).
    expect(out.maxRssMb).toBeLessThan(450)
  })

  it('stops a nested-<use> SVG at the time limit and goes on with the other rows', async () => {
    const svg = file('nested.svg', nestedUseSvg(5, 10))
    expect(svg.length).toBeGreaterThan(0)
    const good = file('good.jpg', await img.jpeg(300, 200, 1))
    const started = performance.now()
    const out = probe([{ path: good }, { path: svg }, { path: good }], { timeoutMs: 1_500 }, 30_000)
    expect(out.outcomes).toEqual(['ok', 'timeout', 'ok'])
    expect(out.messages[1]).toMatch(/did not finish within 1500 ms/)
    expect(out.wallMs).toBeLessThan(6_000)
    // The process ended promptly too: the killed renderer holds nothing.
    expect(performance.now() - started).toBeLessThan(15_000)
  })

  it('gives each truncation and refusal its own reason, and decodes a flat decompression bomb', async () => {
    const jpeg = await noisy('jpeg', 512)
    const png = await noisy('png', 256)
    const webp = await noisy('webp', 256)
    const cases: [string, Uint8Array, string][] = [
      ['cut.jpg', cut(jpeg, 0.5), 'truncated'],
      ['cut.png', cut(png, 0.5), 'truncated'],
      ['cut-iend.png', cut(png, 0.5, [0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]), 'truncated'],
      ['flipped.png', flipped(png), 'corrupt'],
      ['cut.webp', cut(webp, 0.5), 'truncated'],
      ['lie.png', await lyingPng(7999, 7999), 'truncated'],
      ['lie-baseline.jpg', await lyingJpeg(7999, 7999, false), 'truncated'],
      ['scans.jpg', await manyScansJpeg(600), 'corrupt'],
      ['bomb.png', await flat('png', 7000, 7000), 'ok'],
      ['photo.jpg', jpeg, 'ok'],
    ]
    const out = probe(cases.map(([name, bytes]) => ({ path: file(name, bytes) })))
    expect(out.outcomes).toEqual(cases.map(([, , code]) => code))
    expect(out.maxRssMb).toBeLessThan(300)
  })
})
