/**
 * Decoding one encoded image into resized uint8 RGB pixels — with sharp (libvips, on libuv threads), or for
 * small JPEGs and PNGs the fast path (`fast-decode.ts`) — under budgets: the header is read first and
 * checked against the data present (`headers.ts`), the source's pixels are counted against a `PixelBudget`
 * while the decoder runs, and each image has a time limit. No record types here, so the same function serves
 * the operator, the benchmarks and the training-data export.
 */
import { createHash } from 'node:crypto'
import { createInflate, constants as zlibConstants } from 'node:zlib'
import sharp, { type Metadata } from 'sharp'

import { ImageDecodeError, PipelineConfigError } from '../errors.js'
import type { ImageInfo } from '../records.js'
import type { PixelBudget } from './budget.js'
import { ChildDecoder } from './child-decoder.js'
import { decodeFastRgb, fastChannels, fastEligible } from './fast-decode.js'
import { isTruncated, pngIdat, pngOverrun, pngRawBytes, readImageHeader, sniffFormat, type ImageHeader, type JpegHeader, type PngHeader } from './headers.js'
import { rgbPixels, type PipelineOptions, type ResizeMode } from './pipeline.js'

export type { ResizeMode } from './pipeline.js'
export { isTruncated, sniffFormat } from './headers.js'

export interface ImageDecodeOptions {
  /** Output width in pixels. */
  width: number
  /** Output height in pixels. */
  height: number
  /** Fitting mode. */
  resize: ResizeMode
  /** RGB 0-255 used to flatten alpha and to pad. */
  background: readonly [number, number, number]
  /** Per-channel mean subtracted after scaling to [0, 1]. */
  mean: readonly [number, number, number]
  /** Per-channel std divided by after subtracting the mean. */
  std: readonly [number, number, number]
  /** Largest accepted `width × height` of the source. */
  maxPixels: number
  /** Largest accepted encoded size in bytes. */
  maxBytes: number
  /** Longest one image may take to decode, in ms (reading its header and decoding it, each); 0: no limit. */
  timeoutMs: number
  /**
   * `auto`: small baseline JPEGs and plain 8-bit PNGs take the fast path (`fast-decode.ts`), everything else
   * sharp; `sharp`: sharp for everything (the pixels the reference model was trained on).
   */
  decoder: 'auto' | 'sharp'
  /** Compute the sha256 of the encoded bytes (for `scan`). */
  hash: boolean
}

export const DEFAULT_IMAGE_DECODE: Readonly<ImageDecodeOptions> = Object.freeze({
  width: 64,
  height: 64,
  resize: 'fill',
  background: [255, 255, 255] as const,
  mean: [0.5, 0.5, 0.5] as const,
  std: [0.5, 0.5, 0.5] as const,
  maxPixels: 64_000_000,
  maxBytes: 64 * 1024 * 1024,
  timeoutMs: 10_000,
  decoder: 'auto',
  hash: false,
})

export interface DecodedPixels {
  readonly info: ImageInfo
  /** `[height, width, 3]` uint8 RGB (normalise with `writePixelValues`). */
  readonly pixels: Uint8Array
  readonly width: number
  readonly height: number
}

/** Validates decode options, naming the offending field. */
export function validateImageDecodeOptions(options: ImageDecodeOptions, prefix = ''): void {
  const field = (f: string) => `${prefix}${f}`
  for (const f of ['width', 'height'] as const) {
    if (!Number.isInteger(options[f]) || options[f] < 1 || options[f] > 16384) {
      throw new PipelineConfigError(field(f), `must be an integer in [1, 16384], got ${options[f]}`)
    }
  }
  if (!['cover', 'contain', 'pad', 'fill'].includes(options.resize)) {
    throw new PipelineConfigError(field('resize'), `must be cover, contain, pad or fill, got ${options.resize}`)
  }
  for (const f of ['mean', 'std', 'background'] as const) {
    const v = options[f]
    if (!Array.isArray(v) || v.length !== 3 || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
      throw new PipelineConfigError(field(f), `must be three numbers, got ${JSON.stringify(v)}`)
    }
  }
  if (options.std.some((s) => s === 0)) throw new PipelineConfigError(field('std'), 'must not contain 0')
  if (!(options.maxPixels >= 1)) throw new PipelineConfigError(field('maxPixels'), `must be >= 1, got ${options.maxPixels}`)
  if (!(options.maxBytes >= 1)) throw new PipelineConfigError(field('maxBytes'), `must be >= 1, got ${options.maxBytes}`)
  if (options.decoder !== 'auto' && options.decoder !== 'sharp') {
    throw new PipelineConfigError(field('decoder'), `must be auto or sharp, got ${String(options.decoder)}`)
  }
  if (!(options.timeoutMs >= 0) || !Number.isFinite(options.timeoutMs)) {
    throw new PipelineConfigError(field('timeoutMs'), `must be a finite number >= 0 (0: no limit), got ${options.timeoutMs}`)
  }
}

/**
 * libvips' operation cache keeps recent operations alive, and with them the decoder state they hold — for a
 * progressive JPEG the whole frame's coefficients, allocated by libjpeg where the cache's memory limit does
 * not see them. Eight 64-megapixel progressive JPEGs decoded one after the other peaked at 1,371 MB with the
 * cache and 264 MB without it (and ran faster without). Decoded bytes are never the same twice in a
 * dataset, so the cache has nothing to give here; it is turned off (process-wide: sharp has no per-call
 * switch) on the first decode.
 */
let cacheOff = false

/** The child process that renders SVG, started on the first SVG and killed when one runs past its limit. */
let svgDecoder: ChildDecoder | undefined

/**
 * Resolves with `work`, or rejects with `ImageDecodeError('timeout')` after `ms` (0: never). The work itself
 * goes on: whoever holds resources for it releases them when it settles, not when the timer fires.
 */
function withinTime<T>(work: Promise<T>, ms: number): Promise<T> {
  if (ms <= 0) return work
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new ImageDecodeError('timeout', `decoding did not finish within ${ms} ms`)), ms)
    work.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error: unknown) => {
        clearTimeout(timer)
        reject(error)
      },
    )
  })
}

/**
 * Decodes `bytes` (any format sharp reads: JPEG, PNG, WebP, GIF, TIFF, AVIF, HEIF, SVG), applies the EXIF
 * orientation, takes the first frame of animations, converts to 8-bit sRGB (greyscale, CMYK and 16-bit
 * included), flattens alpha onto `background`, resizes to uint8 RGB.
 *
 * Before anything is allocated from the header: a JPEG whose scans, or a PNG whose IDAT, cannot fill the
 * dimensions its header claims is `truncated`; more than `maxPixels` is `too-many-pixels`. While the decoder
 * runs, the source's `width × height` is held in `budget` (when given). Reading the header and decoding each
 * have `timeoutMs`; SVG is rendered in a child process that is killed at the limit (librsvg cannot be
 * interrupted otherwise).
 * Throws `ImageDecodeError` with a reason code.
 */
export async function decodeImage(bytes: Uint8Array | null, options: ImageDecodeOptions, budget?: PixelBudget): Promise<DecodedPixels> {
  if (bytes === null) throw new ImageDecodeError('missing', 'the image cell is null')
  if (bytes.byteLength === 0) throw new ImageDecodeError('empty', 'the image has 0 bytes')
  if (bytes.byteLength > options.maxBytes) {
    throw new ImageDecodeError('too-many-bytes', `${bytes.byteLength} bytes exceeds maxBytes ${options.maxBytes}`)
  }
  const header = readImageHeader(bytes)
  if (header?.refused) throw new ImageDecodeError('corrupt', header.refused)
  if (header && header.width * header.height > options.maxPixels) {
    throw new ImageDecodeError('too-many-pixels', `${header.width}x${header.height} exceeds maxPixels ${options.maxPixels}`)
  }
  if (header?.shortfall) throw new ImageDecodeError('truncated', header.shortfall)
  if (options.decoder === 'auto' && header && fastEligible(header, options.resize, options.width, options.height)) {
    const fast = await decodeFast(bytes, header, options, budget)
    if (fast) return fast
  }
  if (!cacheOff) {
    sharp.cache(false)
    cacheOff = true
  }
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  // An 8-bit JPEG's header says all that sharp's metadata() would (one libuv round trip saved).
  const meta = jpegInfo(header) ?? (await readMetadata(input, bytes, options.timeoutMs))
  const [width, height] = meta.displayed
  if (width * height > options.maxPixels) {
    throw new ImageDecodeError('too-many-pixels', `${width}x${height} exceeds maxPixels ${options.maxPixels}`)
  }
  const { width: outW, height: outH } = options
  const pipeline: PipelineOptions = {
    width: outW,
    height: outH,
    resize: options.resize,
    background: options.background,
    maxPixels: options.maxPixels,
    timeoutSeconds: Math.ceil(options.timeoutMs / 1000),
  }
  const release = budget ? await budget.acquire(width * height) : () => {}
  let raw: Uint8Array
  const started = performance.now()
  try {
    if (meta.format === 'svg') {
      svgDecoder ??= new ChildDecoder()
      const work = svgDecoder.decode(bytes, pipeline, options.timeoutMs)
      work.then(release, release)
      raw = await work
    } else {
      const work = rgbPixels(input, pipeline)
      work.then(release, release)
      raw = await withinTime(work, options.timeoutMs)
    }
  } catch (cause) {
    if (cause instanceof ImageDecodeError) throw cause
    if (options.timeoutMs > 0 && performance.now() - started >= options.timeoutMs) {
      throw new ImageDecodeError('timeout', `decoding did not finish within ${options.timeoutMs} ms`, { cause })
    }
    if (header?.format === 'png') {
      const short = pngOverrun(bytes) ?? (await pngShortfall(bytes, header as PngHeader))
      if (short) throw new ImageDecodeError('truncated', short, { cause })
    }
    throw classify(cause, bytes, meta.format)
  }
  if (raw.byteLength !== outW * outH * 3) {
    throw new ImageDecodeError('corrupt', `decoder returned ${raw.byteLength} bytes for ${outW}x${outH}x3`)
  }
  const info: ImageInfo = {
    width,
    height,
    format: meta.format ?? 'unknown',
    channels: meta.channels ?? 0,
    bitDepth: bitDepth(meta.depth),
    bytes: bytes.byteLength,
    sha256: options.hash ? createHash('sha256').update(bytes).digest('hex') : '',
  }
  return { info, pixels: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), width: outW, height: outH }
}

/**
 * For a PNG the decoder rejected: whether its zlib stream ends, valid as far as it goes, before the rows its
 * IHDR claims are filled (inflated and counted, nothing kept: bounded by the claimed size). A sentence for
 * the error row, or undefined when the data was long enough or invalid (the PNG is corrupt).
 */
async function pngShortfall(bytes: Uint8Array, header: PngHeader): Promise<string | undefined> {
  const interlaced = bytes[28] === 1
  const needed = pngRawBytes(header.width, header.height, header.depth, header.colorType, interlaced)
  let inflated = 0
  let invalid = false
  await new Promise<void>((resolve) => {
    const inflate = createInflate({ finishFlush: zlibConstants.Z_SYNC_FLUSH })
    const done = () => {
      inflate.removeAllListeners()
      inflate.on('error', () => {})
      inflate.destroy()
      resolve()
    }
    inflate.on('data', (chunk: Buffer) => {
      inflated += chunk.length
      if (inflated >= needed) done()
    })
    inflate.on('end', done)
    inflate.on('error', () => {
      invalid = true
      done()
    })
    inflate.end(pngIdat(bytes))
  })
  // A stream that is invalid (not merely short) is corrupt, however much it gave before failing.
  return !invalid && inflated < needed ? `png image data ends before its header's ${header.width}x${header.height} are filled (${inflated} of ${needed} bytes)` : undefined
}

type SourceFacts = Pick<Metadata, 'format' | 'channels' | 'depth'> & { displayed: [number, number] }

/** sharp's metadata(), under the time limit: format, channels, depth and the displayed (oriented) size. */
async function readMetadata(input: Buffer, bytes: Uint8Array, timeoutMs: number): Promise<SourceFacts> {
  let meta: Metadata
  try {
    meta = await withinTime(sharp(input, { limitInputPixels: false, pages: 1 }).metadata(), timeoutMs)
  } catch (cause) {
    if (cause instanceof ImageDecodeError) throw cause
    throw classify(cause, bytes)
  }
  const displayed: [number, number] = [meta.autoOrient?.width ?? meta.width ?? 0, meta.autoOrient?.height ?? meta.height ?? 0]
  return { format: meta.format, channels: meta.channels, depth: meta.depth, displayed }
}

/** The same facts from an 8-bit JPEG's own header (EXIF orientations 5-8 swap the sides); undefined otherwise. */
function jpegInfo(header: ImageHeader | undefined): SourceFacts | undefined {
  if (header?.format !== 'jpeg') return undefined
  const jpeg = header as JpegHeader
  if (jpeg.precision !== 8 || jpeg.components.length === 0) return undefined
  const displayed: [number, number] = jpeg.orientation >= 5 ? [jpeg.height, jpeg.width] : [jpeg.width, jpeg.height]
  return { format: 'jpeg', channels: jpeg.components.length as Metadata['channels'], depth: 'uchar', displayed }
}

/**
 * The fast path under the same budgets; undefined when its decoder rejects the data (sharp then decides,
 * so an image's outcome does not depend on the path). Info comes from the header, which for these files
 * says what sharp's metadata says (no rotation, 1 or 3 channels, 8 bits).
 */
async function decodeFast(bytes: Uint8Array, header: ImageHeader, options: ImageDecodeOptions, budget: PixelBudget | undefined): Promise<DecodedPixels | undefined> {
  const release = budget ? await budget.acquire(header.width * header.height) : () => {}
  const work = decodeFastRgb(bytes, options.width, options.height)
  work.then(release, release)
  let pixels: Uint8Array
  try {
    pixels = await withinTime(work, options.timeoutMs)
  } catch (error) {
    if (error instanceof ImageDecodeError) throw error
    return undefined
  }
  const info: ImageInfo = {
    width: header.width,
    height: header.height,
    format: header.format,
    channels: fastChannels(header),
    bitDepth: 8,
    bytes: bytes.byteLength,
    sha256: options.hash ? createHash('sha256').update(bytes).digest('hex') : '',
  }
  return { info, pixels, width: options.width, height: options.height }
}

// Normalising pixels into `pixel_values` is a pure tensor function (src/tensor/pixels.ts): inference threads
// run it without loading sharp. Re-exported here, where the decoded records come from.
export { pixelValues, writePixelValues } from '../tensor/pixels.js'

function bitDepth(depth: string | undefined): number {
  switch (depth) {
    case 'ushort':
    case 'short':
      return 16
    case 'uint':
    case 'int':
    case 'float':
      return 32
    case 'double':
      return 64
    default:
      return 8
  }
}

/**
 * Turns a decoder failure into a stable reason and a deterministic message.
 *
 * libvips keeps one process-wide error buffer: when several images fail at once, a failure's message can
 * be lost ("Unknown error") or carry another image's message. Reasons and messages therefore come from the
 * bytes themselves (magic numbers, end markers); the decoder's own text is kept only as `cause`.
 */
export function classify(cause: unknown, bytes: Uint8Array, format?: string): ImageDecodeError {
  const text = (cause instanceof Error ? cause.message : String(cause)).toLowerCase()
  const detected = format ?? sniffFormat(bytes)
  if (detected === undefined && text.includes('unsupported image format')) {
    const head = Buffer.from(bytes.subarray(0, 8)).toString('hex').replace(/(..)(?!$)/g, '$1 ')
    return new ImageDecodeError('unsupported-format', `not a supported image format (${bytes.byteLength} bytes starting ${head})`, { cause })
  }
  if (text.includes('pixel limit')) return new ImageDecodeError('too-many-pixels', 'the image exceeds the pixel limit', { cause })
  const name = detected ?? 'image'
  if (detected !== undefined && isTruncated(bytes, detected)) {
    return new ImageDecodeError('truncated', `${name} data ends before its end marker (${bytes.byteLength} bytes)`, { cause })
  }
  return new ImageDecodeError('corrupt', `cannot decode the ${name} data (${bytes.byteLength} bytes)`, { cause })
}
