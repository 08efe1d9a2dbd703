/**
 * Runs for the report tests: input shards with a distinct image per row and a reference caption, and a
 * small test pipeline (no model) that writes what the first-contact outputs will carry — `caption`,
 * `finish_reason` and the mean / minimum token log-probability — through the real runner (`runPipeline`,
 * `writeShards`, completion records), so the report reads a genuine output folder.
 */
import { join } from 'node:path'
import { map } from 'rxjs'
import { z } from 'zod'
import { parquetWriteBuffer } from 'hyparquet-writer'
import sharp from 'sharp'

import { runPipeline, type RunOptions, type RunSummary } from '../../../pipelines/run.js'
import type { PipelineDefinition } from '../../../pipelines/definition.js'
import { toErrorRecord, type KeyedRecord } from '../../../src/records.js'
import { recordSeries, teeProgress } from '../../../app/cli/progress.js'
import { rng } from '../../helpers/images.js'
import { writeBuffer } from '../../helpers/shards.js'

/** A seeded image: a gradient and a bright square whose place and colours depend on the seed. */
export async function seededImage(seed: number, size = 48): Promise<Buffer> {
  const random = rng(seed * 7919 + 13)
  const c1 = [random() * 255, random() * 255, random() * 255]
  const c2 = [random() * 255, random() * 255, random() * 255]
  const bx = Math.floor(random() * size * 0.6)
  const by = Math.floor(random() * size * 0.6)
  const raw = Buffer.alloc(size * size * 3)
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const inBox = x >= bx && x < bx + size / 3 && y >= by && y < by + size / 3
      for (let c = 0; c < 3; c++) raw[(y * size + x) * 3 + c] = Math.round(inBox ? c2[c] : (c1[c] * (x + y)) / (2 * size))
    }
  }
  return sharp(raw, { raw: { width: size, height: size, channels: 3 } }).jpeg({ quality: 90 }).toBuffer()
}

/** A seeded image of random pixels (compresses badly: the worst case for thumbnail sizes). */
export async function noiseImage(seed: number, size = 128): Promise<Buffer> {
  const random = rng(seed * 104729 + 7)
  const raw = Buffer.alloc(size * size * 3)
  for (let i = 0; i < raw.length; i++) raw[i] = Math.floor(random() * 256)
  return sharp(raw, { raw: { width: size, height: size, channels: 3 } }).jpeg({ quality: 90 }).toBuffer()
}

export interface InputRow {
  readonly id: string
  readonly image: Uint8Array | null
  readonly caption: string
}

/** The reference caption of row `i` of shard `s`. */
export const referenceCaption = (s: number, i: number) => `a test scene number ${s} ${i} with a ${['red', 'green', 'blue', 'yellow'][i % 4]} square`

/**
 * Writes `shards` input files `part-0000S.parquet` of `rows` rows (id, image, caption). Images are distinct
 * per row when `distinct` is 0, else cycle through `distinct` images; random pixels with `noise`. Rows
 * listed in `broken` get bytes that do not decode.
 */
export async function writeInputs(dir: string, shards: number, rows: number, options: { distinct?: number; size?: number; rowGroupSize?: number; broken?: ReadonlySet<number>; noise?: boolean } = {}): Promise<string[]> {
  const files: string[] = []
  const make = options.noise ? noiseImage : seededImage
  const pool = options.distinct ? await Promise.all(Array.from({ length: options.distinct }, (_, i) => make(i, options.size))) : []
  for (let s = 0; s < shards; s++) {
    const data: InputRow[] = []
    for (let i = 0; i < rows; i++) {
      const image = options.broken?.has(i) ? Buffer.from('not an image at all') : pool.length > 0 ? pool[(s * 31 + i) % pool.length] : await make(s * 100_000 + i, options.size)
      data.push({ id: `s${s}-r${i}`, image, caption: referenceCaption(s, i) })
    }
    const file = join(dir, `part-${String(s).padStart(5, '0')}.parquet`)
    writeBuffer(
      file,
      parquetWriteBuffer({
        columnData: [
          { name: 'id', data: data.map((r) => r.id), type: 'STRING' },
          { name: 'image', data: data.map((r) => r.image), type: 'BYTE_ARRAY' },
          { name: 'caption', data: data.map((r) => r.caption), type: 'STRING' },
        ],
        rowGroupSize: options.rowGroupSize ?? 500,
      }),
    )
    files.push(file)
  }
  return files
}

interface Generated extends KeyedRecord {
  readonly kind: 'generated'
  readonly caption: string
  readonly finish: 'stop' | 'length'
  readonly mean: number
  readonly min: number
}

/** What the test pipeline writes for row `i` of shard `s`: known captions, finish reasons and log-probabilities. */
export function expected(s: number, i: number): { status: 'ok' | 'error'; code?: string; caption?: string; finish?: 'stop' | 'length'; mean?: number; min?: number } {
  if (i % 13 === 5) return { status: 'error', code: 'corrupt' }
  if (i % 29 === 7) return { status: 'error', code: 'too-many-pixels' }
  const mean = -((((s * 37 + i) * 7919) % 1000) / 400)
  return {
    status: 'ok',
    caption: i % 5 === 0 ? `a wrong caption for ${s} ${i}` : referenceCaption(s, i),
    finish: i % 7 === 3 ? 'length' : 'stop',
    mean,
    min: mean * 2 - 0.5,
  }
}

const shardIndex = (name: string) => Number(/part-(\d+)/.exec(name)?.[1] ?? 0)

/** The test pipeline: no model, known outputs (see {@link expected}); error rows carry the codes above. */
export const textPipeline: PipelineDefinition<{ note: string }, Generated> = {
  name: 'test-caption',
  summary: 'test pipeline: known captions, finish reasons and log-probabilities',
  defaults: { note: 'test' },
  schema: z.strictObject({ note: z.string() }),
  flags: [],
  outputKeys: ['note'],
  read: () => ({ requireImage: true }),
  stages: () =>
    map((record) => {
      if (record.kind !== 'image-row') return record
      const e = expected(shardIndex(record.source.name), record.key.row)
      if (e.status === 'error') return toErrorRecord(record, 'testStage', e.code as 'corrupt', `${e.code}: the test pipeline fails row ${record.key.row}`)
      return { kind: 'generated' as const, key: record.key, source: record.source, kept: record.kept, id: record.id, caption: e.caption!, finish: e.finish!, mean: e.mean!, min: e.min! }
    }),
  columns: () => [
    { name: 'caption', type: 'STRING', value: (r) => r.caption },
    { name: 'finish_reason', type: 'STRING', value: (r) => r.finish },
    { name: 'mean_logprob', type: 'DOUBLE', value: (r) => r.mean },
    { name: 'min_logprob', type: 'DOUBLE', value: (r) => r.min },
  ],
}

/** Runs the test pipeline over `inputs` into `outDir`, recording the time series as the CLI does. */
export async function runTextPipeline(inputs: readonly string[], outDir: string, options: Partial<RunOptions> = {}): Promise<RunSummary> {
  const series = recordSeries(outDir)
  try {
    return await runPipeline(textPipeline, textPipeline.defaults, { ...options, inputs, outDir, progress: teeProgress(series), progressIntervalMs: 50 })
  } finally {
    await series.done()
  }
}
