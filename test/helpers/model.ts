/**
 * The committed reference model (fixtures/models/evlm-tiny; EVFLOW_PARITY_MODEL=dir for another package)
 * and real inputs for each model operator, made by running the operators before it on decoded scenes, plus
 * the checklist every model operator passes (STYLE.md, after rxjs's spec checklist).
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EMPTY, Subject, concat, from, lastValueFrom, of, throwError, toArray, type Observable } from 'rxjs'
import { afterAll, expect, it } from 'vitest'

import { crossAttend } from '../../operators/cross-attend.js'
import { decodeImages } from '../../operators/decode-images.js'
import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { readShards } from '../../operators/read-shards.js'
import { resampleTokens } from '../../operators/resample-tokens.js'
import { routeToExperts } from '../../operators/route-to-experts.js'
import { VisionLanguageModel, type VisionLanguageModelOptions } from '../../src/model/vision-language-model.js'
import { planShards } from '../../src/parquet/shards.js'
import type { BatchRow, CrossMemory, DecodedImage, ErrorRecord, ImageRow, ShardNotice, TensorData, VisualTokens, VitFeatures } from '../../src/records.js'
import { ROOT } from './cli.js'
import { shardInfo } from './records.js'

export const MODEL_DIR = process.env.EVFLOW_PARITY_MODEL ?? join(ROOT, 'fixtures', 'models', 'evlm-tiny')
export const HAVE_MODEL = existsSync(join(MODEL_DIR, 'manifest.json'))
export const SCENES = join(ROOT, 'fixtures', 'scenes')
/** A valid ONNX graph whose inputs no evflow graph has (`x`, `scale`): every run of it fails its feed check. */
export const WRONG_GRAPH = join(ROOT, 'fixtures', 'onnx', 'tiny-linear.onnx')
/** Not a graph at all: no session can be created from it. */
export const NOT_A_GRAPH = join(SCENES, 'vocab.txt')

/** Prints the skip notice of a test file that needs the model package. */
export function noticeWithoutModel(file: string): void {
  if (!HAVE_MODEL) console.warn(`NOTICE: ${file}: no model package at ${MODEL_DIR}: SKIPPING its model tests`)
}

/** The model's manifest as JSON (for the facts the tests check against). */
export function manifestJson(): { dims: Record<string, number>; special_tokens: Record<string, number>; experts: { top_k: number; n_experts: number } } {
  return JSON.parse(readFileSync(join(MODEL_DIR, 'manifest.json'), 'utf8'))
}

/** A model whose graph `broken` is `file` instead (the rest of the package as it is). */
export class ModelWithGraph extends VisionLanguageModel {
  constructor(
    private readonly broken: string,
    private readonly file: string,
    options: VisionLanguageModelOptions = {},
  ) {
    super(MODEL_DIR, options)
  }

  override graph(name: string): string {
    return name === this.broken ? this.file : super.graph(name)
  }
}

/** Models opened by a test file (one inference thread each by default), waited for after its tests. */
export function modelsOfFile(): { open: (options?: VisionLanguageModelOptions) => VisionLanguageModel; broken: (graph: string, file: string) => VisionLanguageModel } {
  const models: VisionLanguageModel[] = []
  afterAll(async () => {
    for (const model of models) await model.closed()
  })
  return {
    open: (options = {}) => {
      const model = new VisionLanguageModel(MODEL_DIR, { inferenceThreads: 1, ...options })
      models.push(model)
      return model
    },
    broken: (graph, file) => {
      const model = new ModelWithGraph(graph, file, { inferenceThreads: 1 })
      models.push(model)
      return model
    },
  }
}

export function collect<T>(source: Observable<T>): Promise<T[]> {
  return lastValueFrom(source.pipe(toArray()), { defaultValue: [] as T[] })
}

/** The first `limit` rows of a scenes shard, decoded at the model's 64 px, in row order. */
export async function decodedScenes(limit: number, file = 'test.parquet'): Promise<DecodedImage[]> {
  const plan = await planShards([join(SCENES, file)], { limit, keep: ['question'] })
  const out = await collect(readShards(plan, { limit, keep: ['question'] }).pipe(decodeImages({ size: 64, ordered: true })))
  return out.filter((r): r is DecodedImage => r.kind === 'decoded-image')
}

/** Runs the operators up to `stage` on each batch of `batches` (arrays of decoded images): one record per batch. */
export async function vitFeatures(model: VisionLanguageModel, batches: readonly (readonly DecodedImage[])[]): Promise<VitFeatures[]> {
  return (await collect(from(batches).pipe(extractVitFeatures<DecodedImage>({ model })))) as VitFeatures[]
}

export async function visualTokens(model: VisionLanguageModel, batches: readonly (readonly DecodedImage[])[], refined = true): Promise<VisualTokens[]> {
  const tokens = from(batches).pipe(extractVitFeatures<DecodedImage>({ model }), resampleTokens({ model }))
  return (await collect(refined ? tokens.pipe(routeToExperts({ model })) : tokens)) as VisualTokens[]
}

export async function crossMemory(model: VisionLanguageModel, batches: readonly (readonly DecodedImage[])[]): Promise<CrossMemory[]> {
  return (await collect(from(await visualTokens(model, batches)).pipe(crossAttend({ model })))) as CrossMemory[]
}

/** A clip of `frames` frames made of decoded images (frame i = images[i % images.length]). */
export function clip(images: readonly DecodedImage[], frames: number, id = `clip-${frames}`): DecodedImage {
  const plane = images[0].pixels.length
  const pixels = new Uint8Array(frames * plane)
  for (let f = 0; f < frames; f++) pixels.set(images[f % images.length].pixels, f * plane)
  return { ...images[0], id, key: { ...images[0].key, row: 1000 + frames }, frames, pixels }
}

/** An error row and a shard notice, the records every model operator must pass around untouched. */
export function bystanders(): [ErrorRecord, ShardNotice] {
  const source = shardInfo('bystanders', 1)
  const error: ErrorRecord = { kind: 'error', key: { shard: source.name, rowGroup: 0, row: 0 }, source, kept: {}, id: 'broken', code: 'corrupt', stage: 'decodeImages', message: 'corrupt: test' }
  return [error, { kind: 'shard-notice', source: shardInfo('empty', 0) }]
}

/** A tensor of the reference data PyTorch wrote next to the graphs (`reference/<graph>.json` names them). */
export function referenceTensor(graph: string, name: string): TensorData {
  const index = JSON.parse(readFileSync(join(MODEL_DIR, 'reference', `${graph}.json`), 'utf8')) as { inputs: RefEntry[]; outputs: RefEntry[] }
  const entry = [...index.inputs, ...index.outputs].find((e) => e.name === name)
  if (!entry) throw new Error(`reference/${graph}.json has no tensor ${name}`)
  const bytes = readFileSync(join(MODEL_DIR, entry.file))
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
  return { dtype: entry.dtype, dims: entry.dims, data: entry.dtype === 'int64' ? new BigInt64Array(buffer) : new Float32Array(buffer) }
}

interface RefEntry {
  name: string
  dtype: 'float32' | 'int64'
  dims: number[]
  file: string
}

/** Batch rows `row-0 …` of one shard with the given frame counts. */
export function batchRows(frames: readonly number[]): BatchRow[] {
  const source = shardInfo('rows', frames.length)
  return frames.map((f, row) => ({ kind: 'batch-row', key: { shard: source.name, rowGroup: 0, row }, source, kept: {}, id: `row-${row}`, frames: f }))
}

/** The largest |a - b| over two float tensors of the same size. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length)
  let worst = 0
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]))
  return worst
}

/** The manifest's parity tolerance between ONNX Runtime and PyTorch. */
export const TOLERANCE = 1e-4

export const ids = (rows: readonly { id: unknown }[]): unknown[] => rows.map((r) => r.id)

/** What a model operator's spec gives the shared checklist. */
export interface ChecklistSubject<B> {
  /** The operator's name (its error rows' `stage`, its metrics). */
  readonly name: string
  /** The graph its run uses (the checklist breaks it). */
  readonly graph: string
  readonly operator: (model: VisionLanguageModel) => (source: Observable<B | ErrorRecord | ShardNotice>) => Observable<unknown>
  /** Two batches for the operator, made with `model`; the first has at least two rows. */
  readonly batches: (model: VisionLanguageModel) => Promise<readonly B[]>
  /** The rows of a batch. */
  readonly rows: (batch: B) => readonly { id: unknown; key: unknown }[]
  /** The kind of the records a batch becomes, and how many (1 for a batch record, one per row after `decodeText`). */
  readonly outputs: (batch: B) => { kind: string; count: number }
}

/**
 * The cases every model operator passes (STYLE.md): empty input, other records passed around untouched,
 * upstream error, the stage throws (rows become error rows; a model that cannot run errors the stream),
 * early unsubscribe; each releases the inference pool. Call inside the operator's `describe`.
 */
export function modelOperatorChecklist<B>(subject: ChecklistSubject<B>, models: ReturnType<typeof modelsOfFile>): void {
  const { name, graph, operator } = subject

  it('empty input: completes with nothing and starts no inference pool', async () => {
    const model = models.open()
    expect(await collect(EMPTY.pipe(operator(model)))).toEqual([])
    expect(model.active).toBe(false)
  })

  it('lets other records (an error row, a shard notice) pass around it untouched, in place', async () => {
    const model = models.open()
    const [batch] = await subject.batches(models.open())
    const [error, notice] = bystanders()
    const out = (await collect(of<(B | ErrorRecord | ShardNotice)[]>(error, batch, notice).pipe(operator(model)))) as { kind: string }[]
    const { kind, count } = subject.outputs(batch)
    expect(out.map((r) => r.kind)).toEqual(['error', ...new Array<string>(count).fill(kind), 'shard-notice'])
    expect(out[0]).toBe(error)
    expect(out[out.length - 1]).toBe(notice)
    await model.closed()
    expect(model.active).toBe(false)
  })

  it('upstream error: forwarded at once (batches in flight are dropped), and the inference pool is released', async () => {
    const model = models.open()
    const [batch] = await subject.batches(models.open())
    const seen: unknown[] = []
    const failing = concat(of(batch), throwError(() => new Error('boom')))
    const error = await new Promise<unknown>((resolve) => failing.pipe(operator(model)).subscribe({ next: (r) => seen.push(r), error: resolve }))
    expect(error).toEqual(new Error('boom'))
    expect(seen).toEqual([])
    await model.closed()
    expect(model.active).toBe(false)
  })

  it('the stage throws: each row of the batch becomes a stage-failed error row naming the graph; later batches go on', async () => {
    const [first, second] = await subject.batches(models.open())
    const model = models.broken(graph, WRONG_GRAPH)
    const out = (await collect(of(first, second).pipe(operator(model)))) as ErrorRecord[]
    const rows = [...subject.rows(first), ...subject.rows(second)]
    expect(out.map((r) => [r.kind, r.code, r.stage, r.id])).toEqual(rows.map((row) => ['error', 'stage-failed', name, row.id]))
    expect(out.map((r) => r.key)).toEqual(rows.map((row) => row.key))
    expect(out[0].message).toContain('tiny-linear.onnx')
    await model.closed()
    expect(model.active).toBe(false)
  })

  it('a graph no session can be made of: the stream errors (the model cannot run) and the pool is released', async () => {
    const [first] = await subject.batches(models.open())
    const model = models.broken(graph, NOT_A_GRAPH)
    await expect(collect(of(first).pipe(operator(model)))).rejects.toThrow(/cannot create a session/)
    await model.closed()
    expect(model.active).toBe(false)
  })

  it('early unsubscribe: the inference pool and its sessions are released', async () => {
    const model = models.open()
    const [batch] = await subject.batches(models.open())
    const input = new Subject<B>()
    const subscription = input.pipe(operator(model)).subscribe()
    input.next(batch)
    for (let i = 0; i < 200 && !model.active; i++) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(model.active).toBe(true)
    subscription.unsubscribe()
    await model.closed()
    expect(model.active).toBe(false)
  })
}

export type { BatchRow, ImageRow }
