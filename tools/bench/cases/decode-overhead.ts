/**
 * `decodeImage overhead` (investigation): what `decodeImage` (src/image/decode.ts) adds over a bare
 * `sharp(buf).resize(s, s).raw().toBuffer()`, step by step, on in-memory buffers with the same number of
 * images in flight: the `metadata()` call, the pipeline's extra steps (autoOrient, toColourspace, flatten,
 * removeAlpha, options), the JS normalisation to float32 CHW (into a reused buffer, to separate the arithmetic
 * from allocating a new Float32Array per image), and the whole function.
 */
import sharp from 'sharp'

import { DEFAULT_IMAGE_DECODE, decodeImage } from '../../../src/image/decode.js'
import { interleave, median, pool, spread, timed } from '../stats.js'
import type { BenchCase, BenchContext, CaseResult, Row } from '../types.js'

const SIZES = [64, 224] as const
const IMAGES = 500

const VARIANTS = [
  'bare resize',
  'bare + metadata()',
  'product pipeline',
  'metadata() + product pipeline',
  '… + normalise into a reused buffer',
  "decodeImage() (decoder 'sharp')",
  "decodeImage() (decoder 'auto': fast JPEG path)",
] as const
type Variant = (typeof VARIANTS)[number]

const background = { r: 255, g: 255, b: 255 }

const bare = (buffer: Buffer, size: number) => sharp(buffer).resize(size, size, { fit: 'fill' }).raw().toBuffer()

/** decodeImage's sharp pipeline for `fill`, without the metadata() call and without normalisation. */
const productPipeline = (buffer: Buffer, size: number) =>
  sharp(buffer, { limitInputPixels: DEFAULT_IMAGE_DECODE.maxPixels, pages: 1, failOn: 'error' })
    .autoOrient()
    .toColourspace('srgb')
    .flatten({ background })
    .resize(size, size, { fit: 'fill' })
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer()

/** toNormalizedChw's arithmetic into a caller-owned buffer: isolates the allocation of a new Float32Array per image. */
function normaliseInto(out: Float32Array, hwc: Uint8Array, plane: number, mean: readonly number[], std: readonly number[]): void {
  for (let c = 0; c < 3; c++) {
    const scale = 1 / (255 * std[c])
    const shift = mean[c] / std[c]
    const base = c * plane
    for (let i = 0; i < plane; i++) out[base + i] = hwc[i * 3 + c] * scale - shift
  }
}

const metadata = (buffer: Buffer) => sharp(buffer, { limitInputPixels: false, pages: 1 }).metadata()

function step(variant: Variant, size: number, concurrency: number): (buffer: Buffer) => Promise<unknown> {
  const options = { ...DEFAULT_IMAGE_DECODE, width: size, height: size }
  switch (variant) {
    case 'bare resize':
      return (b) => bare(b, size)
    case 'bare + metadata()':
      return async (b) => {
        await metadata(b)
        return bare(b, size)
      }
    case 'product pipeline':
      return (b) => productPipeline(b, size)
    case 'metadata() + product pipeline':
      return async (b) => {
        await metadata(b)
        return productPipeline(b, size)
      }
    case '… + normalise into a reused buffer': {
      // One output per image in flight, reused: the same arithmetic as decodeImage without a fresh allocation.
      const free = Array.from({ length: concurrency }, () => new Float32Array(3 * size * size))
      return async (b) => {
        await metadata(b)
        const raw = await productPipeline(b, size)
        const out = free.pop()!
        normaliseInto(out, raw, size * size, options.mean, options.std)
        free.push(out)
      }
    }
    case "decodeImage() (decoder 'sharp')":
      return (b) => decodeImage(b, { ...options, decoder: 'sharp' })
    case "decodeImage() (decoder 'auto': fast JPEG path)":
      return (b) => decodeImage(b, { ...options, decoder: 'auto' })
  }
}

async function measure(context: BenchContext): Promise<CaseResult> {
  const { reps, concurrency } = context.settings
  const images = (await context.inputs.encodedImages()).slice(0, IMAGES)
  const rows: Row[] = []
  const raw: Record<string, unknown> = {}
  for (const size of SIZES) {
    for (const variant of VARIANTS) await pool(images.slice(0, 100).map((b) => Buffer.from(b)), concurrency, step(variant, size, concurrency))
    const samples = await interleave(VARIANTS, reps, async (variant) => {
      const buffers = images.map((b) => Buffer.from(b))
      const fn = step(variant, size, concurrency)
      return timed(() => pool(buffers, concurrency, fn))
    })
    context.log(`decodeImage overhead ${size}px done`)
    const bareRates = samples['bare resize'].map((t) => images.length / t.wallS)
    for (const variant of VARIANTS) {
      const rates = samples[variant].map((t) => images.length / t.wallS)
      const cpuMs = samples[variant].map((t) => (t.cpuS * 1000) / images.length)
      rows.push({
        size: `${size}px`,
        variant,
        'images/s': spread(rates),
        'CPU ms/img': spread(cpuMs, 3),
        'vs bare': spread(rates.map((r, i) => r / bareRates[i]), 2),
        'CPU vs bare': (median(cpuMs) / median(samples['bare resize'].map((t) => (t.cpuS * 1000) / images.length))).toFixed(2),
        'main-thread CPU ms/img': samples[variant].every((t) => t.mainCpuS !== null)
          ? spread(samples[variant].map((t) => (t.mainCpuS! * 1000) / images.length), 3)
          : 'n/a',
      })
    }
    raw[`${size}px`] = samples
  }
  return {
    rows,
    notes: [
      `${images.length} in-memory 256×256 JPEGs per measurement (fresh buffer copies), ${concurrency} in flight, ${reps} reps interleaved; "vs bare" is the median [min–max] of per-rep ratios.`,
      '"product pipeline" = autoOrient + toColourspace(srgb) + flatten + resize(fill) + removeAlpha + raw(uchar) with decodeImage\'s input options; "… + normalise into a reused buffer" adds decodeImage\'s float32 CHW arithmetic writing into a preallocated buffer; decodeImage() is the product function (uint8 RGB out, budgets included), with every image through sharp and with the default decoder (these 256×256 baseline JPEGs take the fast path at 64 px, sharp at 224 px).',
    ],
    settings: { sizes: SIZES, images: images.length, concurrency, reps },
    raw,
  }
}

export const decodeOverhead: BenchCase = {
  name: 'decodeImage overhead',
  section: 'foundation',
  byDefault: false,
  description: 'decodeImage() vs a bare sharp resize, step by step, on in-memory 256×256 JPEGs',
  run: measure,
}
