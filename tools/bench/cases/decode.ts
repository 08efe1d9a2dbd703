/**
 * `decode 64px`, `decode 224px`: the full in-process read + decode path (`readShards → decodeImages`) against
 * the limit, sharp alone decoding the same bytes from memory to the same size with as many in flight.
 * Target: full ≥ 0.8 × sharp alone, measured as the median of per-rep ratios with the variants interleaved.
 */
import sharp from 'sharp'

import { decodeImages } from '../../../operators/decode-images.js'
import { readShards } from '../../../operators/read-shards.js'
import { ROWS } from '../inputs.js'
import { interleave, max, median, min, pool, spread, timed, type Timed } from '../stats.js'
import type { BenchCase, BenchContext, CaseResult } from '../types.js'

const TARGET_RATIO = 0.8
const WARMUP_IMAGES = 200

type Variant = 'read+decode' | 'sharp alone'
const VARIANTS: readonly Variant[] = ['read+decode', 'sharp alone']

/** Reads and decodes every row of `file` with the product operators; returns decoded images. */
async function readAndDecode(file: string, size: number, concurrency: number, limit?: number): Promise<number> {
  let decoded = 0
  let errors = 0
  await new Promise<void>((resolve, reject) => {
    readShards(file, limit === undefined ? {} : { limit })
      .pipe(decodeImages({ size, concurrency }))
      .subscribe({
        next: (record) => {
          if (record.kind === 'decoded-image') decoded += 1
          else if (record.kind === 'error') errors += 1
        },
        error: reject,
        complete: resolve,
      })
  })
  if (errors > 0) throw new Error(`read+decode: ${errors} error rows`)
  return decoded
}

/** The limit: sharp decoding in-memory buffers to `size`² raw RGB, `concurrency` promises in flight. */
async function sharpAlone(buffers: readonly Buffer[], size: number, concurrency: number): Promise<number> {
  let decoded = 0
  await pool(buffers, concurrency, async (buffer) => {
    const raw = await sharp(buffer).resize(size, size, { fit: 'fill' }).raw().toBuffer()
    if (raw.length !== size * size * 3) throw new Error(`sharp alone: ${raw.length} bytes for ${size}x${size}x3`)
    decoded += 1
  })
  return decoded
}

/** Median main-thread CPU ms per image, or n/a off Linux. */
function mainCpuMs(ts: readonly Timed[], images: number): string {
  const values = ts.map((t) => t.mainCpuS).filter((v): v is number => v !== null)
  return values.length === ts.length ? spread(values.map((v) => (v * 1000) / images), 2) : 'n/a'
}

/** Fresh copies, so no variant or rep reuses a buffer another one has decoded. */
const copies = (images: readonly Uint8Array[]): Buffer[] => images.map((bytes) => Buffer.from(bytes))

async function runDecode(size: number, context: BenchContext): Promise<CaseResult> {
  const { reps, concurrency } = context.settings
  const { file } = await context.inputs.shard(ROWS)
  const images = await context.inputs.encodedImages()
  const encodedBytes = images.reduce((n, b) => n + b.byteLength, 0)

  // Warm-up: module loading, JIT, libvips start-up, thread pool.
  await readAndDecode(file, size, concurrency, WARMUP_IMAGES)
  await sharpAlone(copies(images.slice(0, WARMUP_IMAGES)), size, concurrency)

  const samples = await interleave(VARIANTS, reps, async (variant, rep) => {
    const buffers = variant === 'sharp alone' ? copies(images) : []
    let count = 0
    const t = await timed(async () => {
      count = variant === 'read+decode' ? await readAndDecode(file, size, concurrency) : await sharpAlone(buffers, size, concurrency)
    })
    if (count !== images.length) throw new Error(`${variant}: decoded ${count} of ${images.length}`)
    context.log(`decode ${size}px rep ${rep + 1}/${reps} ${variant}: ${(count / t.wallS).toFixed(0)} img/s`)
    return t
  })

  const rate = (t: Timed) => images.length / t.wallS
  const ratios = samples['read+decode'].map((t, i) => rate(t) / rate(samples['sharp alone'][i]))
  const cpuRatios = samples['read+decode'].map((t, i) => samples['sharp alone'][i].cpuS / t.cpuS)
  const rows = VARIANTS.map((variant) => {
    const ts = samples[variant]
    const rates = ts.map(rate)
    return {
      variant,
      'images/s': spread(rates),
      'MB/s': (median(rates) * (encodedBytes / images.length) / 1e6).toFixed(2),
      'CPU ms/img': spread(ts.map((t) => (t.cpuS * 1000) / images.length), 2),
      'main-thread CPU ms/img': mainCpuMs(ts, images.length),
      'CPU use': `${(median(ts.map((t) => t.cpuS / t.wallS)) * 100).toFixed(0)}%`,
      'vs sharp alone': variant === 'sharp alone' ? '1' : spread(ratios, 2),
    }
  })
  const ratio = median(ratios)
  return {
    rows,
    checks: [
      {
        name: `read+decode ${size}px / sharp alone`,
        target: `>= ${TARGET_RATIO.toFixed(2)}`,
        value: `${ratio.toFixed(2)} (reps ${min(ratios).toFixed(2)}–${max(ratios).toFixed(2)}; by CPU time ${median(cpuRatios).toFixed(2)})`,
        met: ratio >= TARGET_RATIO,
      },
    ],
    notes: [
      `${images.length} rows of 256×256 JPEG (${(encodedBytes / images.length / 1024).toFixed(1)} KiB mean), ${reps} reps, variants interleaved; figures are median [min–max] over reps.`,
      `MB/s counts encoded bytes; CPU ms/img is process CPU (all threads) per image, main-thread CPU the event loop's share of it (from /proc); CPU use is CPU time / wall time (200% = both cores busy).`,
    ],
    settings: { size, concurrency, reps, rows: images.length, encodedBytes, sharpConcurrency: sharp.concurrency(), uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? '4 (default)' },
    raw: { ratios, cpuRatios, samples },
  }
}

function decodeCase(size: number): BenchCase {
  return {
    name: `decode ${size}px`,
    section: 'foundation',
    byDefault: true,
    description: `readShards → decodeImages to ${size}px vs sharp alone on the same in-memory bytes`,
    run: (context) => runDecode(size, context),
  }
}

/** In this order: 64px, then 224px. */
export const decodeCases: readonly BenchCase[] = [decodeCase(64), decodeCase(224)]
