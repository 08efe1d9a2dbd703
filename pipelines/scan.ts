import { availableParallelism } from 'node:os'
import { pipe } from 'rxjs'
import { z } from 'zod'

import { DEFAULT_MAX_PIXELS_IN_FLIGHT, decodeImages } from '../operators/decode-images.js'
import { DEFAULT_IMAGE_DECODE } from '../src/image/decode.js'
import { bytes, int, mebibytes, pipelineConfig, type PipelineDefinition } from './definition.js'
import type { DecodedImage } from '../src/records.js'

const scanConfig = pipelineConfig(
  {
    /** Side of the square the image is decoded to (decoding at any size reads every pixel). */
    size: z.number().int().min(1).max(4096),
    /** Largest accepted `width × height`. */
    maxPixels: z.number().int().min(1),
    /** Largest accepted encoded size in bytes. */
    maxBytes: z.number().int().min(1),
  },
  {
    /** Images decoded at once. */
    concurrency: z.number().int().min(1).max(256),
    /** Most source pixels being decoded at once. */
    maxPixelsInFlight: z.number().int().min(1),
    /** Longest one image may take to decode, in ms (0: no limit). */
    decodeTimeoutMs: z.number().int().min(0),
  },
)

export const scanConfigSchema = scanConfig.schema

export type ScanConfig = z.infer<typeof scanConfigSchema>

export const scanDefaults: ScanConfig = Object.freeze({
  size: 64,
  maxPixels: 64_000_000,
  maxBytes: 64 * 1024 * 1024,
  concurrency: 2 * availableParallelism(),
  maxPixelsInFlight: DEFAULT_MAX_PIXELS_IN_FLIGHT,
  decodeTimeoutMs: DEFAULT_IMAGE_DECODE.timeoutMs,
})

/**
 * `scan`: decodes every image (every frame of a clip) and writes, per row, its width, height, format,
 * channels, bit depth, frame count, byte size and sha256 (for a clip: of its first frame), with `status`/`error` for rows that cannot be decoded. A dataset validator in the
 * spirit of img2dataset's per-shard stats.
 */
export const scanPipeline: PipelineDefinition<ScanConfig, DecodedImage> = {
  name: 'scan',
  summary: 'decode every image; write width, height, format, channels, bytes and sha256 per row',
  defaults: scanDefaults,
  schema: scanConfigSchema,
  outputKeys: scanConfig.outputKeys,
  flags: [
    { flags: '--size <px>', description: 'decode to this square size', key: 'size', parse: int },
    { flags: '--max-pixels <n>', description: 'reject images with more pixels', key: 'maxPixels', parse: int },
    { flags: '--max-bytes <bytes>', description: 'reject images larger than this (bytes, or with a unit: 64MiB, 512KiB)', key: 'maxBytes', parse: bytes, formatDefault: mebibytes },
    { flags: '--concurrency <n>', description: 'images decoded at once', key: 'concurrency', parse: int, defaultText: 'twice the number of cores' },
    { flags: '--max-pixels-in-flight <n>', description: 'most source pixels decoded at once', key: 'maxPixelsInFlight', parse: int },
    { flags: '--decode-timeout-ms <ms>', description: 'longest one image may take to decode; 0: no limit', key: 'decodeTimeoutMs', parse: int },
  ],
  read: () => ({ requireImage: true }),
  stages: (config, { metrics }) =>
    pipe(
      decodeImages({
        size: config.size,
        maxPixels: config.maxPixels,
        maxBytes: config.maxBytes,
        hash: true,
        concurrency: config.concurrency,
        maxPixelsInFlight: config.maxPixelsInFlight,
        timeoutMs: config.decodeTimeoutMs,
        metrics,
      }),
    ),
  columns: () => [
    { name: 'width', type: 'INT32', value: (r) => r.info.width },
    { name: 'height', type: 'INT32', value: (r) => r.info.height },
    { name: 'format', type: 'STRING', value: (r) => r.info.format },
    { name: 'channels', type: 'INT32', value: (r) => r.info.channels },
    { name: 'bit_depth', type: 'INT32', value: (r) => r.info.bitDepth },
    { name: 'frames', type: 'INT32', value: (r) => r.frames },
    { name: 'bytes', type: 'INT64', value: (r) => r.info.bytes },
    { name: 'sha256', type: 'STRING', value: (r) => r.info.sha256 },
  ],
}
