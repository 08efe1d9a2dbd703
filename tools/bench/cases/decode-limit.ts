/**
 * `decode limit` (investigation, issue #19): CPU ms per image to turn JPEG bytes into 64 px and 224 px RGB,
 * for the synthetic scenes (256×256) and for real photos at 256, 640 and 2,048 px (`tools/photos.ts`):
 * - the libjpeg-turbo limit: `tjbench` (Debian `libjpeg-turbo-progs`) decoding the same files with DCT-domain
 *   scaling, at the fastest scale M/8 whose output is at least the target on both sides (no resize, no
 *   colour work beyond YCbCr → RGB); tjbench times one thread by wall clock, so its figure is scaled by the
 *   process's CPU / wall time (GNU time) to be CPU ms like the others;
 * - sharp alone: `sharp(buf).resize(s, s, {fit: 'fill'}).raw().toBuffer()`, 2 × cores in flight;
 * - `decodeImages` with `decoder: 'sharp'` (every image through sharp, with the budgets) and the default
 *   `decoder: 'auto'` (small baseline JPEGs through the fast path), on in-memory rows, 2 × cores in flight.
 * CPU is the process's user + system time (all threads) over the measurement, divided by images; the
 * variants are interleaved within each rep. Target: decodeImages ≤ 2 × the limit at 64 and 224 px on the
 * scenes and on photos up to 640 px.
 *
 * `decode in caption` (investigation): the graphs-alone limit and `evflow caption` with each decoder on
 * 2,000 scenes, interleaved, with the decoder's share of the run's CPU.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { from, lastValueFrom, toArray } from 'rxjs'
import sharp from 'sharp'

import { decodeImages } from '../../../operators/decode-images.js'
import { readShards } from '../../../operators/read-shards.js'
import type { ImageRow } from '../../../src/records.js'
import { renderImage } from '../../../scenes/render.js'
import { sceneOf } from '../../../scenes/generate.js'
import type { ImageScene } from '../../../scenes/scene.js'
import { buildPhotoSets, readPhotoSet } from '../../photos.js'
import { HAVE_MODEL, MODEL_DIR, loadBenchModel, predecode, runLimit, sceneShard } from '../model.js'
import { CLI } from '../scan.js'
import { interleave, median, pool, spread } from '../stats.js'
import type { BenchCase, BenchContext, CaseResult, Check, Row } from '../types.js'

const TJBENCH = '/usr/bin/tjbench'
const GNU_TIME = '/usr/bin/time'
const SIZES = [64, 224] as const
const TJ_FILES = 12
const TJ_BENCHTIME = '0.15'
const CONCURRENCY = 2 * availableParallelism()

interface ImageSet {
  readonly name: string
  readonly images: readonly Uint8Array[]
}

/** 300 synthetic test scenes as 256×256 JPEGs (quality 85), as the model benchmarks make them. */
async function scenes(count: number): Promise<Uint8Array[]> {
  const images: Uint8Array[] = new Array(count)
  await pool(Array.from({ length: count }, (_, i) => i), 4, async (u) => {
    const { scene } = sceneOf('caption', 3_000_000, u)
    images[u] = await sharp(await renderImage(scene as ImageScene)).resize(256, 256, { fit: 'fill' }).jpeg({ quality: 85 }).toBuffer()
  })
  return images
}

/** Installs tjbench (root with apt-get), or says why the limit is not measured. */
function ensureTjbench(log: (m: string) => void): string | undefined {
  if (existsSync(TJBENCH)) return undefined
  if (typeof process.getuid === 'function' && process.getuid() === 0 && existsSync('/usr/bin/apt-get')) {
    log('installing libjpeg-turbo-progs (tjbench) with apt-get')
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env })
    spawnSync('apt-get', ['install', '-y', '-qq', 'libjpeg-turbo-progs'], { stdio: 'ignore', env })
  }
  return existsSync(TJBENCH) ? undefined : 'tjbench not found (apt-get install libjpeg-turbo-progs): the limit is not measured'
}

/** Scales M/8 libjpeg-turbo can decode to, fastest first within each output size (1/1, 1/2, 1/4, 1/8 have SIMD IDCTs). */
function candidateScales(width: number, height: number, target: number): string[] {
  const fits = (m: number) => Math.ceil((width * m) / 8) >= target && Math.ceil((height * m) / 8) >= target
  const smallest = [1, 2, 3, 4, 5, 6, 7, 8].find(fits) ?? 8
  const power = [1, 2, 4, 8].find(fits) ?? 8
  return [...new Set([smallest, power])].map((m) => (m === 8 ? '1/1' : `${m}/8`))
}

/** CPU ms per decode of one file at the fastest eligible scale (tjbench's wall-clock rate scaled by CPU / wall). */
function tjbenchMs(file: string, width: number, height: number, target: number): number {
  let best = Infinity
  for (const scale of candidateScales(width, height, target)) {
    const timeFile = `${file}.time`
    const out = execFileSync(GNU_TIME, ['-f', '%e %U %S', '-o', timeFile, TJBENCH, file, '-scale', scale, '-benchtime', TJ_BENCHTIME, '-warmup', '0.05', '-nowrite', '-rgb'], { encoding: 'utf8' })
    const fps = Number(/Frame rate:\s+([\d.]+)/.exec(out)?.[1])
    const [wall, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(/\s+/).map(Number)
    if (!(fps > 0)) throw new Error(`tjbench gave no frame rate for ${file} at ${scale}: ${out.slice(-300)}`)
    const cpuShare = wall > 0 ? Math.min(1, (user + sys) / wall) : 1
    best = Math.min(best, (1000 / fps) * cpuShare)
  }
  return best
}

const rowsOf = (images: readonly Uint8Array[]): ImageRow[] =>
  images.map((image, i) => ({ kind: 'image-row', key: { shard: 'bench', rowGroup: 0, row: i }, id: String(i), source: 'bench', kept: {}, image }) as unknown as ImageRow)

type Variant = 'sharp alone' | 'decodeImages (decoder sharp)' | 'decodeImages (auto)'
const VARIANTS: readonly Variant[] = ['sharp alone', 'decodeImages (decoder sharp)', 'decodeImages (auto)']

async function runVariant(variant: Variant, images: readonly Uint8Array[], size: number): Promise<void> {
  if (variant === 'sharp alone') {
    await pool(images.map((b) => Buffer.from(b)), CONCURRENCY, (b) => sharp(b).resize(size, size, { fit: 'fill' }).raw().toBuffer())
    return
  }
  const out = await lastValueFrom(from(rowsOf(images)).pipe(decodeImages({ size, concurrency: CONCURRENCY, decoder: variant === 'decodeImages (auto)' ? 'auto' : 'sharp' }), toArray()))
  const errors = out.filter((r) => r.kind === 'error').length
  if (errors > 0) throw new Error(`${variant}: ${errors} error rows`)
}

async function cpuMsPerImage(run: () => Promise<void>, images: number): Promise<number> {
  const before = process.cpuUsage()
  await run()
  const used = process.cpuUsage(before)
  return (used.user + used.system) / 1000 / images
}

async function measureLimit(context: BenchContext): Promise<CaseResult> {
  const reps = Math.min(context.settings.reps, 3)
  const notes: string[] = []
  const skipTj = ensureTjbench(context.log)
  if (skipTj) notes.push(skipTj)
  const photos = await buildPhotoSets({ sets: ['jpeg-256', 'jpeg-640', 'jpeg-2048'], log: context.log })
  const sets: ImageSet[] = [
    { name: 'scenes 256 px', images: await scenes(300) },
    { name: 'photos 256 px', images: await readPhotoSet(photos.sets['jpeg-256'], 300) },
    { name: 'photos 640 px', images: await readPhotoSet(photos.sets['jpeg-640'], 150) },
    { name: 'photos 2048 px', images: await readPhotoSet(photos.sets['jpeg-2048'], 100) },
  ]
  const dir = join(context.inputs.dir, 'tj')
  mkdirSync(dir, { recursive: true })
  const rows: Row[] = []
  const checks: Check[] = []
  const raw: Record<string, unknown> = {}
  for (const set of sets) {
    const meta = await Promise.all(set.images.slice(0, TJ_FILES).map((b) => sharp(b).metadata()))
    const files = set.images.slice(0, TJ_FILES).map((b, i) => {
      const file = join(dir, `${set.name.replace(/\W+/g, '-')}-${i}.jpg`)
      writeFileSync(file, b)
      return file
    })
    const meanKiB = set.images.reduce((n, b) => n + b.byteLength, 0) / set.images.length / 1024
    for (const size of SIZES) {
      await runVariant('decodeImages (auto)', set.images.slice(0, 10), size) // warm-up
      const samples = await interleave(VARIANTS, reps, async (variant) => cpuMsPerImage(() => runVariant(variant, set.images, size), set.images.length))
      const limit = skipTj ? undefined : median(files.map((f, i) => tjbenchMs(f, meta[i].width!, meta[i].height!, size)))
      context.log(`decode limit ${set.name} → ${size}px: limit ${limit?.toFixed(3) ?? 'n/a'} ms, ${VARIANTS.map((v) => `${v} ${median(samples[v]).toFixed(3)}`).join(', ')}`)
      const vsLimit = (ms: number) => (limit === undefined ? 'n/a' : `${(ms / limit).toFixed(1)}×`)
      rows.push({ images: `${set.name} (${set.images.length}, ${meanKiB.toFixed(1)} KiB)`, size: `${size}px`, variant: 'libjpeg-turbo limit (tjbench, DCT scaling)', 'CPU ms/img': limit === undefined ? 'n/a' : limit.toFixed(3), 'vs limit': '1×' })
      for (const variant of VARIANTS) {
        rows.push({ images: set.name, size: `${size}px`, variant, 'CPU ms/img': spread(samples[variant], 3), 'vs limit': vsLimit(median(samples[variant])) })
      }
      const ours = median(samples['decodeImages (auto)'])
      const before = median(samples['decodeImages (decoder sharp)'])
      if (limit !== undefined && set.name !== 'photos 2048 px') {
        checks.push({ name: `decodeImages ${set.name} → ${size}px ÷ limit`, target: '<= 2', value: `${(ours / limit).toFixed(1)} (sharp path ${(before / limit).toFixed(1)})`, met: ours / limit <= 2 })
      }
      if (set.name === 'photos 2048 px') {
        checks.push({ name: `decodeImages ${set.name} → ${size}px ÷ sharp path (no regression)`, target: '<= 1.05', value: (ours / before).toFixed(2), met: ours / before <= 1.05 })
      }
      raw[`${set.name} ${size}`] = { limit, samples }
    }
  }
  return {
    rows,
    checks,
    notes: [
      `CPU ms per image: process user + system time over the whole measurement (all threads), median [min–max] over ${reps} interleaved reps; ${CONCURRENCY} images in flight; in-memory rows (no Parquet reading).`,
      `The limit is the median over ${TJ_FILES} files of tjbench's single-thread rate at the fastest scale M/8 with both sides ≥ the target (the smallest such M/8 and the smallest such power of two are both tried: 3/8, 5/8, 7/8 have no SIMD IDCT and can be slower than the next power of two), scaled by tjbench's CPU / wall time.`,
      'decodeImages (decoder sharp) is every image through sharp with the budgets; decodeImages (auto) is the default: small baseline JPEGs (and plain PNGs) resized by 2× or more take @napi-rs/image, the rest sharp; for 640 and 2,048 px photos both decodeImages rows run the same code (sharp), so their difference is noise.',
      ...notes,
    ],
    settings: { sizes: SIZES, concurrency: CONCURRENCY, reps, tjFiles: TJ_FILES, tjBenchtime: TJ_BENCHTIME, sharpConcurrency: sharp.concurrency(), uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? '4 (default)' },
    raw,
  }
}

/** `evflow caption` with GNU time: rows/s from its summary, and the process's CPU seconds. */
async function captionRun(input: string, out: string, decoder: string): Promise<{ rowsPerS: number; cpuS: number; wallS: number; rows: number }> {
  const shebang = readFileSync(CLI, 'utf8').split('\n', 1)[0]
  const nodeFlags = shebang.split(/\s+/).filter((w) => w.startsWith('--'))
  const timeFile = `${out}.time`
  const args = ['-f', '%e %U %S', '-o', timeFile, process.execPath, ...nodeFlags, CLI, 'caption', input, '-o', out, '--json', '--model', MODEL_DIR, '--decoder', decoder]
  await new Promise<void>((resolve, reject) => {
    const child = spawn(GNU_TIME, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')))
    child.on('error', reject)
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`evflow caption exited with ${code}: ${stderr.slice(-1000)}`))))
  })
  const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as { rowsPerS: number; rows: { in: number } }
  const [wallS, user, sys] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(/\s+/).map(Number)
  execFileSync('rm', ['-rf', out, timeFile])
  return { rowsPerS: summary.rowsPerS, cpuS: user + sys, wallS, rows: summary.rows.in }
}

async function measureCaption(context: BenchContext): Promise<CaseResult> {
  if (!HAVE_MODEL) throw new Error(`no model package at ${MODEL_DIR}`)
  const reps = context.settings.reps
  const pkg = await loadBenchModel()
  const shard = await sceneShard(context.inputs, 2_000, context.log)
  const decoded = await predecode(shard.file, pkg)
  const images = await lastValueFrom(readShards(shard.file).pipe(toArray()))
  const encoded = images.flatMap((r) => (r.kind === 'image-row' && r.image ? [r.image] : []))
  const decodeCpu: Record<string, number[]> = { auto: [], sharp: [] }
  const samples = await interleave(['limit', 'sharp', 'auto'] as const, reps, async (variant) => {
    if (variant === 'limit') {
      const before = process.cpuUsage()
      const run = await runLimit(pkg, decoded.images, { batch: 32, workers: availableParallelism() })
      const used = process.cpuUsage(before)
      return { rowsPerS: run.imagesPerS, cpuS: (used.user + used.system) / 1e6, wallS: Number.NaN, rows: decoded.images.length }
    }
    decodeCpu[variant].push(await cpuMsPerImage(() => runVariant(variant === 'auto' ? 'decodeImages (auto)' : 'decodeImages (decoder sharp)', encoded, 64), encoded.length))
    return captionRun(shard.dir, join(context.inputs.dir, `caption-${variant}`), variant)
  })
  const limit = median(samples.limit.map((s) => s.rowsPerS))
  const limitCpu = median(samples.limit.map((s) => (s.cpuS * 1000) / s.rows))
  const rows: Row[] = [
    { variant: 'limit: graphs alone on pre-decoded tensors', 'rows/s': spread(samples.limit.map((s) => s.rowsPerS)), '÷ limit': '1.00', 'process CPU ms/row': limitCpu.toFixed(2), 'limit CPU ÷ this CPU': '1.00', 'decode CPU ms/img (alone)': '', "decode's share of CPU": '' },
  ]
  const checks: Check[] = []
  for (const decoder of ['sharp', 'auto'] as const) {
    const runs = samples[decoder]
    const ratios = runs.map((r, i) => r.rowsPerS / samples.limit[i].rowsPerS)
    const cpuPerRow = median(runs.map((r) => (r.cpuS * 1000) / r.rows))
    const decodeMs = median(decodeCpu[decoder])
    rows.push({
      variant: `evflow caption --decoder ${decoder}`,
      'rows/s': spread(runs.map((r) => r.rowsPerS)),
      '÷ limit': spread(ratios, 2),
      'process CPU ms/row': cpuPerRow.toFixed(2),
      'limit CPU ÷ this CPU': (limitCpu / cpuPerRow).toFixed(2),
      'decode CPU ms/img (alone)': decodeMs.toFixed(3),
      "decode's share of CPU": `${((100 * decodeMs) / cpuPerRow).toFixed(0)}%`,
    })
    if (decoder === 'auto') checks.push({ name: 'evflow caption ÷ graphs-alone limit (tiny model, 2 cores)', target: '>= 0.85', value: `${median(ratios).toFixed(2)} (sharp decoder ${median(samples.sharp.map((r, i) => r.rowsPerS / samples.limit[i].rowsPerS)).toFixed(2)})`, met: median(ratios) >= 0.85 })
  }
  return {
    rows,
    checks,
    notes: [
      `2,000 synthetic test scenes (256×256 JPEG) → 64 px, evlm-tiny, batch 32, ${availableParallelism()} workers × 1 thread; limit and both decoders interleaved, ${reps} reps, median [min–max]; limit ${limit.toFixed(0)} img/s.`,
      "Decode's share: decodeImages' CPU per image measured alone in this process on the same images (readShards excluded) over the caption process's CPU per row (GNU time, all threads).",
      'CPU per row is what a busy machine cannot distort: "limit CPU ÷ this CPU" is the ratio a CPU-bound run on free cores approaches (the limit\'s CPU is this process\'s over runLimit: main thread and inference workers). Rates and ÷ limit are only meaningful at a low load average (see the footer).',
    ],
    settings: { rows: 2_000, reps, workers: availableParallelism() },
    raw: { samples, decodeCpu },
  }
}

export const decodeLimitCases: readonly BenchCase[] = [
  {
    name: 'decode limit',
    section: 'foundation',
    byDefault: false,
    description: 'CPU ms per image, JPEG → 64 / 224 px: libjpeg-turbo (tjbench, DCT scaling) vs sharp alone vs decodeImages (sharp path, auto), scenes and real photos at 256 / 640 / 2,048 px',
    run: measureLimit,
  },
  {
    name: 'decode in caption',
    section: 'model',
    byDefault: false,
    description: '`evflow caption` with --decoder sharp and auto vs the graphs-alone limit on 2,000 scenes, and decode\'s share of the CPU',
    run: measureCaption,
  },
]
