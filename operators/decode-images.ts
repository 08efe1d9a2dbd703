import { availableParallelism } from 'node:os'
import type { OperatorFunction } from 'rxjs'

import { ImageDecodeError, PipelineConfigError, describeError } from '../src/errors.js'
import type { RunMetrics } from '../src/engine/metrics.js'
import { PixelBudget } from '../src/image/budget.js'
import {
  DEFAULT_IMAGE_DECODE,
  decodeImage,
  validateImageDecodeOptions,
  type ImageDecodeOptions,
  type ResizeMode,
} from '../src/image/decode.js'
import { toErrorRecord, type DecodedImage, type ErrorRecord, type ImageRow } from '../src/records.js'
import { mapRecords, validateConcurrency } from './internal/map-records.js'

export interface DecodeImagesOptions {
  /** Output size: one number for a square, or `[width, height]`. Default 64. */
  size?: number | readonly [number, number]
  /** `cover` | `contain` | `pad` | `fill` (see `ResizeMode`). Default `fill`. */
  resize?: ResizeMode
  /** RGB 0-255 for flattening alpha and padding. Default white. */
  background?: readonly [number, number, number]
  /** Per-channel mean. Default `[0.5, 0.5, 0.5]`. */
  mean?: readonly [number, number, number]
  /** Per-channel std. Default `[0.5, 0.5, 0.5]`. */
  std?: readonly [number, number, number]
  /** Largest source `width × height`. Default 64,000,000. */
  maxPixels?: number
  /** Largest encoded size in bytes. Default 64 MiB. */
  maxBytes?: number
  /**
   * Most source pixels (`width × height` as the headers claim) being decoded at once, over all images in
   * flight; one image is always admitted. Default 100,000,000 (one 64-megapixel image, or eight 12-megapixel
   * photos): decoder memory follows source pixels, not the number of images.
   */
  maxPixelsInFlight?: number
  /** Longest one image may take to decode, in ms; 0: no limit. Default 10,000. */
  timeoutMs?: number
  /**
   * `auto`: small baseline JPEGs and plain 8-bit PNGs (≤ 196,608 pixels, `fill` to at most half their size)
   * take a faster decoder (`@napi-rs/image`), everything else sharp; `sharp`: sharp for everything. Default `auto`.
   */
  decoder?: 'auto' | 'sharp'
  /** Compute each image's sha256 (in `info.sha256`). Default false. */
  hash?: boolean
  /** Images decoded at once (sharp works on libuv threads). Default: twice the number of cores (measured best). */
  concurrency?: number
  /** Emit in input order. Default false (`writeShards` reorders anyway). */
  ordered?: boolean
  /** Run metrics; counted under `decodeImages`. */
  metrics?: RunMetrics
}

/** Default of `maxPixelsInFlight`. */
export const DEFAULT_MAX_PIXELS_IN_FLIGHT = 100_000_000

/** Resolves and validates decode options (throws `PipelineConfigError` naming the field). */
export function resolveDecodeOptions(options: DecodeImagesOptions = {}): ImageDecodeOptions {
  const size = options.size ?? 64
  const [width, height] = typeof size === 'number' ? [size, size] : size
  if (!Array.isArray(size) && typeof size !== 'number') throw new PipelineConfigError('size', 'must be a number or [width, height]')
  const resolved: ImageDecodeOptions = {
    width,
    height,
    resize: options.resize ?? DEFAULT_IMAGE_DECODE.resize,
    background: options.background ?? DEFAULT_IMAGE_DECODE.background,
    mean: options.mean ?? DEFAULT_IMAGE_DECODE.mean,
    std: options.std ?? DEFAULT_IMAGE_DECODE.std,
    maxPixels: options.maxPixels ?? DEFAULT_IMAGE_DECODE.maxPixels,
    maxBytes: options.maxBytes ?? DEFAULT_IMAGE_DECODE.maxBytes,
    timeoutMs: options.timeoutMs ?? DEFAULT_IMAGE_DECODE.timeoutMs,
    decoder: options.decoder ?? DEFAULT_IMAGE_DECODE.decoder,
    hash: options.hash ?? false,
  }
  validateImageDecodeOptions(resolved)
  return resolved
}

/** Decodes every frame of a clip into one `[F, 3, H, W]` tensor; a bad frame fails the clip, naming it. */
async function decodeClip(row: ImageRow, decode: ImageDecodeOptions, budget: PixelBudget): Promise<DecodedImage> {
  const frames = row.frames ?? null
  if (frames === null) throw new ImageDecodeError('missing', 'the frames cell is null')
  if (frames.length === 0) throw new ImageDecodeError('empty', 'the clip has no frames')
  const plane = 3 * decode.width * decode.height
  const pixels = new Uint8Array(frames.length * plane)
  let info: DecodedImage['info'] | undefined
  for (const [index, frame] of frames.entries()) {
    try {
      const decoded = await decodeImage(frame, decode, budget)
      pixels.set(decoded.pixels, index * plane)
      info ??= decoded.info
    } catch (error) {
      if (error instanceof ImageDecodeError) {
        throw new ImageDecodeError(error.reason, `frame ${index} of ${frames.length}: ${error.message.replace(`${error.reason}: `, '')}`, { cause: error })
      }
      throw error
    }
  }
  return decodedRecord(row, info!, frames.length, pixels, decode)
}

function decodedRecord(row: ImageRow, info: DecodedImage['info'], frames: number, pixels: Uint8Array, decode: ImageDecodeOptions): DecodedImage {
  return {
    kind: 'decoded-image',
    key: row.key,
    source: row.source,
    kept: row.kept,
    id: row.id,
    info,
    frames,
    pixels,
    width: decode.width,
    height: decode.height,
    mean: [...decode.mean] as [number, number, number],
    std: [...decode.std] as [number, number, number],
  }
}

/**
 * Decodes image bytes into resized uint8 RGB pixels, ready to be normalised into a model's
 * `pixel_values` batch tensor (`writePixelValues`; `pixelValues` for one record).
 *
 * Use after `readShards` (or on any `ImageRow`s). Decoding runs in sharp on libuv threads, `concurrency`
 * images at a time and at most `maxPixelsInFlight` source pixels at a time; EXIF orientation is applied,
 * animations give their first frame, greyscale / CMYK / 16-bit / alpha become 8-bit sRGB. Headers are
 * checked against the data before the decoder allocates anything; each image has `timeoutMs`.
 *
 * In → out: 1 → 1. `ImageRow` → `DecodedImage` (a `frames` clip → `[F, 3, H, W]`), or → `ErrorRecord` (code `missing`, `empty`,
 * `too-many-bytes`, `too-many-pixels`, `unsupported-format`, `truncated`, `corrupt` or `timeout`) when the
 * image cannot be decoded; every other record passes through unchanged. The run goes on.
 * Errors: invalid options throw `PipelineConfigError` at once.
 *
 * @example
 * readShards('shards/').pipe(decodeImages({ size: 224, resize: 'cover', mean: [0.48, 0.46, 0.41], std: [0.27, 0.26, 0.28] }))
 */
export function decodeImages<T extends { kind: string }>(
  options: DecodeImagesOptions = {},
): OperatorFunction<T, Exclude<T, ImageRow> | DecodedImage | ErrorRecord> {
  const decode = resolveDecodeOptions(options)
  const concurrency = options.concurrency ?? 2 * availableParallelism()
  validateConcurrency(concurrency)
  if (options.maxPixelsInFlight !== undefined && (!Number.isInteger(options.maxPixelsInFlight) || options.maxPixelsInFlight < 1)) {
    throw new PipelineConfigError('maxPixelsInFlight', `must be a positive integer, got ${options.maxPixelsInFlight}`)
  }
  const budget = new PixelBudget(options.maxPixelsInFlight ?? DEFAULT_MAX_PIXELS_IN_FLIGHT)
  const metrics = options.metrics?.stage('decodeImages')
  return mapRecords(
    (record: T): record is T & ImageRow => record.kind === 'image-row',
    async (row: ImageRow): Promise<DecodedImage | ErrorRecord> => {
      try {
        if (row.frames !== undefined && row.image === null) return await decodeClip(row, decode, budget)
        const decoded = await decodeImage(row.image, decode, budget)
        return decodedRecord(row, decoded.info, 1, decoded.pixels, decode)
      } catch (error) {
        if (error instanceof ImageDecodeError) {
          const detail = error.reason === 'missing' && row.imagePath ? `${error.message} (path: ${row.imagePath})` : error.message
          return toErrorRecord(row, 'decodeImages', error.reason, detail)
        }
        return toErrorRecord(row, 'decodeImages', 'stage-failed', describeError(error))
      }
    },
    { concurrency, ordered: options.ordered ?? false, stage: 'decodeImages', ...(metrics ? { metrics } : {}) },
  ) as OperatorFunction<T, Exclude<T, ImageRow> | DecodedImage | ErrorRecord>
}
