/**
 * The scene generator: seeded rows → Parquet shards, plus the training export (pre-decoded uint8 pixels
 * in `.npy`, text and scenes in JSONL) that a PyTorch trainer reads with numpy alone.
 *
 * Determinism: each unit (an image with its rows, or a clip) draws from its own `Rng([seed, kind, unit])`
 * and units are rendered concurrently but written strictly in order, so the output bytes depend only on
 * the options (and the sharp build), never on timing or `concurrency`.
 */
import { mkdirSync, renameSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'

import type { SchemaElement } from 'hyparquet'
import { ParquetWriter, fileWriter } from 'hyparquet-writer'

import { buildVocabulary, captionOf, sampleQuestions, type QaPair } from './grammar.js'
import { NpyWriter } from './npy.js'
import { MODEL_SIZE, resizeForModel } from './pixels.js'
import { renderImage, renderVideo } from './render.js'
import { Rng } from './rng.js'
import { sampleImageScene, sampleVideoScene, type Scene } from './scene.js'
import { PipelineConfigError } from '../src/errors.js'
import { KINDS, KIND_STREAM, SPLITS, SPLIT_SEEDS, checkSeed, type Kind, type Split } from './splits.js'

/** Version of the generated data's layout; bump when a column, the grammar or the export changes. */
export const FORMAT = 'evflow-scenes/1'
/** Fixed `created_by` of every shard (no version numbers or timestamps: bytes must be reproducible). */
export const CREATED_BY = 'evflow scenes generator'
/** Rows (questions) per image in a vqa shard. */
export const VQA_PER_IMAGE = 2
/** Frames of every clip in the `.frames.npy` export: clips are zero-padded up to it. */
export const MAX_FRAMES = 8

export interface GenerateOptions {
  split: Split
  /** What a row holds (default 'caption'). */
  kind?: Kind
  /** Seed within the split's range (default: the split's first seed). */
  seed?: number
  /** Number of rows. */
  rows: number
  /** Output directory, created if missing. */
  out: string
  /** File stem (default: `{split}` for captions, `{split}-{kind}` otherwise). */
  name?: string
  /** Rows per Parquet shard (default 4096); one shard is named `{stem}.parquet`. */
  shardRows?: number
  /** Rows per row group (default 256). */
  rowGroupSize?: number
  /** Write the training export (`.npy`, `.jsonl`, manifest) next to the shards (default true). */
  export?: boolean
  /** Side of the pre-decoded pixels in the export (default 64, the model's resolution). */
  size?: number
  /** Units rendered at once (default 8); never changes the output. */
  concurrency?: number
  /** Called after each row group with the rows written so far. */
  onProgress?: (rowsDone: number, rowsTotal: number) => void
}

/** One output row. */
export interface SceneRow {
  id: string
  /** The image (or clip) the row is about; equals `id` except in vqa shards. */
  imageId: string
  image: Buffer | null
  frames: Buffer[] | null
  caption: string
  question: string
  answer: string
  /** One question of each available type for this image (the training export's multi-task set). */
  qa: QaPair[]
  scene: Scene
}

/** The rows of one unit (image or clip) and its pre-decoded pixels (`frames × size × size × 3`). */
export interface Unit {
  rows: SceneRow[]
  pixels: Buffer | null
}

export interface GenerateResult {
  rows: number
  /** Files written, relative to `out`. */
  files: string[]
  parquet: string[]
  seconds: number
}

function rowsPerUnit(kind: Kind): number {
  return kind === 'vqa' ? VQA_PER_IMAGE : 1
}

/** The scene of one unit (exported so that tests and tools can draw any row's scene alone). */
export function sceneOf(kind: Kind, seed: number, unit: number): { scene: Scene; rng: Rng } {
  const rng = new Rng([seed, KIND_STREAM[kind], unit])
  const scene = kind === 'video' ? sampleVideoScene(rng) : sampleImageScene(rng)
  return { scene, rng }
}

/** A unit's rows without their media: everything but the rendering, cheap and machine-independent. */
export function planUnit(split: Split, kind: Kind, seed: number, unit: number): SceneRow[] {
  const { scene, rng } = sceneOf(kind, seed, unit)
  const qa = sampleQuestions(scene, rng)
  const caption = captionOf(scene)
  const imageId = `${split}-${kind}-${seed}-${String(unit).padStart(7, '0')}`
  const base = { imageId, image: null, frames: null, caption, qa, scene }
  if (kind === 'vqa') {
    return rng
      .shuffle(qa)
      .slice(0, VQA_PER_IMAGE)
      .map((p, k) => ({ ...base, id: `${imageId}-q${k}`, question: p.question, answer: p.answer }))
  }
  const p = rng.pick(qa)
  return [{ ...base, id: imageId, question: p.question, answer: p.answer }]
}

/** Renders one unit: its rows with their media and, when `size` is given, its pixels at `size × size`. */
export async function generateUnit(split: Split, kind: Kind, seed: number, unit: number, size: number | null): Promise<Unit> {
  const rows = planUnit(split, kind, seed, unit)
  const scene = rows[0].scene
  let pixels: Buffer | null = null
  if (scene.kind === 'video') {
    const frames = await renderVideo(scene)
    for (const row of rows) row.frames = frames
    if (size !== null) pixels = Buffer.concat(await Promise.all(frames.map((f) => resizeForModel(f, size))))
  } else {
    const image = await renderImage(scene)
    for (const row of rows) row.image = image
    if (size !== null) pixels = await resizeForModel(image, size)
  }
  return { rows, pixels }
}

/** Maps `0..count-1` through `fn` with at most `concurrency` calls in flight, yielding results in order. */
async function* orderedMap<T>(count: number, concurrency: number, fn: (i: number) => Promise<T>): AsyncGenerator<T> {
  const inFlight = new Map<number, Promise<T>>()
  let next = 0
  for (let i = 0; i < count; i++) {
    while (next < count && next < i + concurrency) {
      const p = fn(next)
      p.catch(() => {}) // surfaced when awaited below, in order
      inFlight.set(next++, p)
    }
    const value = await inFlight.get(i)!
    inFlight.delete(i)
    yield value
  }
}

const text = (name: string): SchemaElement => ({
  name,
  type: 'BYTE_ARRAY',
  converted_type: 'UTF8',
  repetition_type: 'REQUIRED',
})

/** The Parquet schema of a shard of `kind`. */
export function shardSchema(kind: Kind): SchemaElement[] {
  const media: SchemaElement[] =
    kind === 'video'
      ? [
          { name: 'frames', repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
          { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
          { name: 'element', type: 'BYTE_ARRAY', repetition_type: 'REQUIRED' },
        ]
      : [text('image_id'), { name: 'image', type: 'BYTE_ARRAY', repetition_type: 'REQUIRED' }]
  const columns = kind === 'video' ? 6 : 7
  return [
    { name: 'root', num_children: columns },
    text('id'),
    ...media,
    text('caption'),
    text('question'),
    text('answer'),
    { name: 'scene', type: 'BYTE_ARRAY', converted_type: 'JSON', repetition_type: 'REQUIRED' },
  ]
}

function columnData(kind: Kind, rows: SceneRow[]) {
  const binary = { encoding: 'PLAIN', codec: 'UNCOMPRESSED', statistics: false } as const
  const media =
    kind === 'video'
      ? [{ name: 'frames', data: rows.map((r) => r.frames!), ...binary }]
      : [
          { name: 'image_id', data: rows.map((r) => r.imageId) },
          { name: 'image', data: rows.map((r) => r.image!), ...binary },
        ]
  return [
    { name: 'id', data: rows.map((r) => r.id) },
    ...media,
    { name: 'caption', data: rows.map((r) => r.caption) },
    { name: 'question', data: rows.map((r) => r.question) },
    { name: 'answer', data: rows.map((r) => r.answer) },
    { name: 'scene', data: rows.map((r) => r.scene), statistics: false },
  ]
}

/** One JSONL line of the training export. */
function jsonLine(row: SceneRow): string {
  const line: Record<string, unknown> = {
    id: row.id,
    image_id: row.imageId,
    caption: row.caption,
    question: row.question,
    answer: row.answer,
    qa: row.qa,
  }
  if (row.scene.kind === 'video') line.num_frames = row.scene.frames
  line.scene = row.scene
  return JSON.stringify(line) + '\n'
}

function positiveInt(field: string, v: number, max = Number.MAX_SAFE_INTEGER): number {
  if (!Number.isSafeInteger(v) || v < 1 || v > max) throw new PipelineConfigError(field, `must be an integer in [1, ${max}], got ${v}`)
  return v
}

/** Validated options with defaults applied. */
export function resolveOptions(o: GenerateOptions) {
  if (!SPLITS.includes(o.split)) throw new PipelineConfigError('split', `must be one of ${SPLITS.join(', ')}, got ${o.split}`)
  const kind = o.kind ?? 'caption'
  if (!KINDS.includes(kind)) throw new PipelineConfigError('kind', `must be one of ${KINDS.join(', ')}, got ${kind}`)
  const seed = o.seed ?? SPLIT_SEEDS[o.split].min
  checkSeed(o.split, seed)
  const name = o.name ?? (kind === 'caption' ? o.split : `${o.split}-${kind}`)
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new PipelineConfigError('name', `must be a plain file stem, got ${JSON.stringify(name)}`)
  return {
    split: o.split,
    kind,
    seed,
    rows: positiveInt('rows', o.rows, 10_000_000),
    out: o.out,
    name,
    shardRows: positiveInt('shardRows', o.shardRows ?? 4096),
    rowGroupSize: positiveInt('rowGroupSize', o.rowGroupSize ?? 256),
    export: o.export ?? true,
    size: positiveInt('size', o.size ?? MODEL_SIZE, 4096),
    concurrency: positiveInt('concurrency', o.concurrency ?? 8, 1024),
    onProgress: o.onProgress,
  }
}

/** The Parquet file names of a run: `{stem}.parquet`, or `{stem}-00000-of-00012.parquet` ... */
export function shardNames(name: string, rows: number, shardRows: number): string[] {
  const n = Math.ceil(rows / shardRows)
  if (n === 1) return [`${name}.parquet`]
  const pad = (i: number) => String(i).padStart(5, '0')
  return Array.from({ length: n }, (_, i) => `${name}-${pad(i)}-of-${pad(n)}.parquet`)
}

/** Writes `vocab.txt` (one token per line, id = line number from 0). */
export function writeVocab(path: string): void {
  writeFileSync(path, buildVocabulary().join('\n') + '\n')
}

/**
 * Generates `rows` rows of `kind` for `split` into `out`: Parquet shards, `vocab.txt` and (unless
 * `export: false`) the training export `{stem}.images.npy` / `{stem}.frames.npy`, `{stem}.jsonl` and
 * `{stem}.manifest.json`. See docs/data.md for the layout.
 */
export async function generate(options: GenerateOptions): Promise<GenerateResult> {
  const o = resolveOptions(options)
  const started = performance.now()
  mkdirSync(o.out, { recursive: true })
  const perUnit = rowsPerUnit(o.kind)
  const units = Math.ceil(o.rows / perUnit)
  const names = shardNames(o.name, o.rows, o.shardRows)
  const schema = shardSchema(o.kind)
  const files: string[] = [...names, 'vocab.txt']

  const pixelsFile = o.kind === 'video' ? `${o.name}.frames.npy` : `${o.name}.images.npy`
  const pixelShape = o.kind === 'video' ? [o.rows, MAX_FRAMES, o.size, o.size, 3] : [o.rows, o.size, o.size, 3]
  const npy = o.export ? new NpyWriter(join(o.out, pixelsFile), pixelShape) : null
  const jsonlFile = `${o.name}.jsonl`
  const jsonl = o.export ? openSync(join(o.out, jsonlFile), 'w') : null

  let shard = -1
  let writer: ParquetWriter | null = null
  let pending: SceneRow[] = []
  let written = 0

  const flushGroup = async () => {
    if (pending.length === 0) return
    await writer!.write({ columnData: columnData(o.kind, pending), rowGroupSize: pending.length })
    if (jsonl !== null) writeSync(jsonl, pending.map(jsonLine).join(''))
    written += pending.length
    pending = []
    o.onProgress?.(written, o.rows)
  }
  const closeShard = async () => {
    if (writer === null) return
    await flushGroup()
    await writer.finish()
    const path = join(o.out, names[shard])
    renameSync(`${path}.tmp`, path)
    writer = null
  }

  try {
    let index = 0
    for await (const unit of orderedMap(units, o.concurrency, (u) =>
      generateUnit(o.split, o.kind, o.seed, u, o.export ? o.size : null),
    )) {
      for (const row of unit.rows) {
        if (index >= o.rows) break
        const s = Math.floor(index / o.shardRows)
        if (s !== shard) {
          await closeShard()
          shard = s
          const first = s * o.shardRows
          const meta = {
            format: FORMAT,
            split: o.split,
            kind: o.kind,
            seed: o.seed,
            rows: o.rows,
            shard: s,
            shards: names.length,
            first_row: first,
            shard_rows: Math.min(o.shardRows, o.rows - first),
          }
          writer = new ParquetWriter({
            writer: fileWriter(join(o.out, `${names[s]}.tmp`)),
            schema,
            createdBy: CREATED_BY,
            kvMetadata: [{ key: 'evflow.scenes', value: JSON.stringify(meta) }],
          })
        }
        pending.push(row)
        if (npy !== null) npy.writeRow(unit.pixels!)
        index++
        if (pending.length === o.rowGroupSize) await flushGroup()
      }
    }
    await closeShard()
  } finally {
    if (jsonl !== null) closeSync(jsonl)
  }
  npy?.close()

  writeVocab(join(o.out, 'vocab.txt'))
  if (o.export) {
    const manifest = {
      format: FORMAT,
      split: o.split,
      kind: o.kind,
      seed: o.seed,
      rows: o.rows,
      parquet: names,
      pixels: { file: pixelsFile, dtype: 'uint8', shape: pixelShape, layout: o.kind === 'video' ? 'NFHWC' : 'NHWC' },
      jsonl: jsonlFile,
      vocab: 'vocab.txt',
      resize: { size: o.size, fit: 'fill', colorspace: 'srgb', function: 'resizeForModel (scenes/pixels.ts)' },
    }
    writeFileSync(join(o.out, `${o.name}.manifest.json`), JSON.stringify(manifest, null, 2) + '\n')
    files.push(pixelsFile, jsonlFile, `${o.name}.manifest.json`)
  }
  return { rows: written, files, parquet: names, seconds: (performance.now() - started) / 1000 }
}
