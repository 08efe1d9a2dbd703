/**
 * Decoding one encoded image into normalised float32 CHW pixels with sharp (libvips, on libuv threads).
 * Pure apart from sharp: no record types here, so the same function serves the operator, the benchmarks
 * and the training-data export.
 */
import { createHash } from 'node:crypto'
import sharp, { type Metadata } from 'sharp'

import { ImageDecodeError, PipelineConfigError, type ImageDecodeReason } from '../errors.js'
import type { ImageInfo } from '../records.js'

/**
 * How the image is fitted to `width × height`:
 * - `cover`: scale to cover the box, centre-crop the overflow (CLIP-style);
 * - `contain`: scale to fit inside, centred, the rest filled with `background` (letterbox);
 * - `pad`: scale to fit inside, anchored top-left, the rest filled with `background`;
 * - `fill`: stretch to the box, ignoring the aspect ratio.
 */
export type ResizeMode = 'cover' | 'contain' | 'pad' | 'fill'

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
}

/**
 * Decodes `bytes` (any format sharp reads: JPEG, PNG, WebP, GIF, TIFF, AVIF, HEIF, SVG), applies the EXIF
 * orientation, takes the first frame of animations, converts to 8-bit sRGB (greyscale, CMYK and 16-bit
 * included), flattens alpha onto `background`, resizes and normalises to float32 CHW.
 * Throws `ImageDecodeError` with a reason code.
 */
export async function decodeImage(bytes: Uint8Array | null, options: ImageDecodeOptions): Promise<DecodedPixels> {
  if (bytes === null) throw new ImageDecodeError('missing', 'the image cell is null')
  if (bytes.byteLength === 0) throw new ImageDecodeError('empty', 'the image has 0 bytes')
  if (bytes.byteLength > options.maxBytes) {
    throw new ImageDecodeError('too-many-bytes', `${bytes.byteLength} bytes exceeds maxBytes ${options.maxBytes}`)
  }
  const input = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  let meta: Metadata
  try {
    meta = await sharp(input, { limitInputPixels: false, pages: 1 }).metadata()
  } catch (cause) {
    throw classify(cause, bytes)
  }
  const width = meta.autoOrient?.width ?? meta.width ?? 0
  const height = meta.autoOrient?.height ?? meta.height ?? 0
  if (width * height > options.maxPixels) {
    throw new ImageDecodeError('too-many-pixels', `${width}x${height} exceeds maxPixels ${options.maxPixels}`)
  }
  const { width: outW, height: outH } = options
  const background = { r: options.background[0], g: options.background[1], b: options.background[2] }
  let raw: Buffer
  try {
    let image = sharp(input, { limitInputPixels: options.maxPixels, pages: 1, failOn: 'error' })
      .autoOrient()
      .toColourspace('srgb')
      .flatten({ background })
    if (options.resize === 'fill') {
      image = image.resize(outW, outH, { fit: 'fill' })
    } else if (options.resize === 'cover') {
      image = image.resize(outW, outH, { fit: 'cover', position: 'centre' })
    } else {
      image = image.resize(outW, outH, {
        fit: 'contain',
        position: options.resize === 'pad' ? 'left top' : 'centre',
        background,
      })
    }
    raw = await image.removeAlpha().raw({ depth: 'uchar' }).toBuffer()
  } catch (cause) {
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

/** The format from magic numbers, for the formats whose truncation we can detect. */
export function sniffFormat(bytes: Uint8Array): string | undefined {
  const b = bytes
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg'
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'png'
  if (b.length >= 6 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46) return 'gif'
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45) return 'webp'
  return undefined
}

/** Whether encoded data stops before the format's end marker. */
export function isTruncated(bytes: Uint8Array, format: string): boolean {
  const tail = bytes.subarray(Math.max(0, bytes.length - 64))
  const has = (...marker: number[]) => {
    for (let i = tail.length - marker.length; i >= 0; i--) {
      if (marker.every((m, j) => tail[i + j] === m)) return true
    }
    return false
  }
  switch (format) {
    case 'jpeg':
      return !has(0xff, 0xd9)
    case 'png':
      return !has(0x49, 0x45, 0x4e, 0x44) // IEND
    case 'gif':
      return bytes[bytes.length - 1] !== 0x3b
    case 'webp': {
      if (bytes.length < 8) return true
      const size = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(4, true)
      return bytes.length < size + 8
    }
    default:
      return false
  }
}
