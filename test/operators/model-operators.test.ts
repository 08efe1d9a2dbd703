/**
 * The model operators on the committed reference model (fixtures/models/evlm-tiny; EVFLOW_PARITY_MODEL=dir
 * for another package): the whole chain from Parquet rows reproduces PyTorch's greedy tokens
 * (reference/greedy.json), captions do not depend on batch size, continuous batching or workers, error
 * rows pass around the model stages, and every operator follows the STYLE.md checklist (empty, one, many,
 * upstream error, the stage throws, early unsubscribe releases the sessions).
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EMPTY, Subject, concat, lastValueFrom, of, throwError, toArray, type Observable } from 'rxjs'
import { afterAll, describe, expect, it } from 'vitest'

import { batchRecords } from '../../operators/batch-records.js'
import { crossAttend } from '../../operators/cross-attend.js'
import { decodeImages } from '../../operators/decode-images.js'
import { decodeText } from '../../operators/decode-text.js'
import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { poolEmbeddings } from '../../operators/pool-embeddings.js'
import { readShards } from '../../operators/read-shards.js'
import { resampleTokens } from '../../operators/resample-tokens.js'
import { routeToExperts } from '../../operators/route-to-experts.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import { planShards } from '../../src/parquet/shards.js'
import type { DecodedImage, ErrorRecord, GeneratedText, ShardNotice } from '../../src/records.js'
import { imageRow, shardInfo } from '../helpers/records.js'

const DIR = process.env.EVFLOW_PARITY_MODEL ?? fileURLToPath(new URL('../../fixtures/models/evlm-tiny/', import.meta.url))
const HAVE = existsSync(join(DIR, 'manifest.json'))
if (!HAVE) console.warn(`NOTICE: test/operators/model-operators: no model package at ${DIR}: SKIPPING the model operator tests`)
const SCENES = fileURLToPath(new URL('../../fixtures/scenes/', import.meta.url))

const models: VisionLanguageModel[] = []
const open = (workers = 2) => {
  const model = new VisionLanguageModel(DIR, { inferenceThreads: workers })
  models.push(model)
  return model
}
afterAll(async () => {
  for (const model of models) await model.closed()
})

type Out = GeneratedText | ErrorRecord | ShardNotice

/** Reads `file` (first `limit` rows) and runs the whole model chain. */
async function run(file: string, options: { limit: number; batch: number; workers?: number; slots?: number; continuous?: boolean; questions?: boolean; maxNewTokens?: number; model?: VisionLanguageModel }): Promise<Out[]> {
  const model = options.model ?? open(options.workers ?? 2)
  const plan = await planShards([join(SCENES, file)], { limit: options.limit, keep: ['question'] })
  const metrics = new RunMetrics()
  return lastValueFrom(
    readShards(plan, { limit: options.limit, keep: ['question'] }).pipe(
      decodeImages({ size: 64, ordered: true }),
      batchRecords({ maxSize: options.batch, maxWaitMs: 1000 }),
      extractVitFeatures<DecodedImage | ErrorRecord | ShardNotice>({ model, metrics }),
      resampleTokens({ model, metrics }),
      routeToExperts({ model, metrics }),
      crossAttend({ model, metrics }),
      decodeText({
        model,
        metrics,
        slots: options.slots ?? 32,
        continuous: options.continuous ?? true,
        ...(options.maxNewTokens ? { generation: { maxNewTokens: options.maxNewTokens } } : {}),
        ...(options.questions ? { questions: (row) => row.kept.question as string } : {}),
      }),
      toArray(),
    ) as Observable<Out[]>,
  )
}

const texts = (out: Out[]) => Object.fromEntries(out.filter((r): r is GeneratedText => r.kind === 'generated-text').map((r) => [String(r.id), r.generations.map((g) => g.text).join(' | ')]))

interface GreedySample { id?: string; task: string; question?: string; expected_ids: number[] }
interface Greedy { max_new_tokens: number; samples: GreedySample[]; video: { id: string; samples: GreedySample[] } }

describe.skipIf(!HAVE)('model operators on the reference model', () => {
  const greedy = HAVE ? (JSON.parse(readFileSync(join(DIR, 'reference', 'greedy.json'), 'utf8')) as Greedy) : undefined
  const eos = HAVE ? (JSON.parse(readFileSync(join(DIR, 'manifest.json'), 'utf8')) as { special_tokens: { eos: number } }).special_tokens.eos : 2
  const withoutEos = (ids: number[]) => (ids[ids.length - 1] === eos ? ids.slice(0, -1) : ids)

  it('reproduce PyTorch\'s greedy tokens from the Parquet rows (image captions and VQA, decode → ViT → … → decoder)', async () => {
    const captions = await run('test.parquet', { limit: 8, batch: 8, maxNewTokens: greedy!.max_new_tokens })
    const questions = await run('test.parquet', { limit: 8, batch: 8, maxNewTokens: greedy!.max_new_tokens, questions: true })
    const byId = (out: Out[]) => new Map(out.filter((r): r is GeneratedText => r.kind === 'generated-text').map((r) => [r.id, r.generations[0]]))
    const cap = byId(captions)
    const vqa = byId(questions)
    let checked = 0
    for (const sample of greedy!.samples) {
      const got = sample.task === 'caption' ? cap.get(sample.id) : vqa.get(sample.id)
      if (!got || (sample.task === 'vqa' && got.prompt !== sample.question)) continue
      expect(got.tokens, `${sample.id} ${sample.task}`).toEqual(withoutEos(sample.expected_ids))
      checked += 1
    }
    expect(checked).toBeGreaterThanOrEqual(3)
  })

  it('reproduce PyTorch\'s greedy tokens for a video clip (frames flattened into the batch)', async () => {
    const captions = await run('video.parquet', { limit: 2, batch: 2, maxNewTokens: greedy!.max_new_tokens })
    const answers = await run('video.parquet', { limit: 2, batch: 2, maxNewTokens: greedy!.max_new_tokens, questions: true })
    const pick = (out: Out[]) => out.find((r): r is GeneratedText => r.kind === 'generated-text' && r.id === greedy!.video.id)!.generations[0]
    for (const sample of greedy!.video.samples) {
      const got = sample.task === 'caption' ? pick(captions) : pick(answers)
      if (sample.task === 'vqa' && got.prompt !== sample.question) continue
      expect(got.tokens, sample.task).toEqual(withoutEos(sample.expected_ids))
    }
  })

  it('give identical captions at batch sizes 1, 7 and 32, continuous batching on and off, 1 and 2 workers', async () => {
    const reference = texts(await run('test.parquet', { limit: 40, batch: 32, workers: 2 }))
    expect(Object.keys(reference)).toHaveLength(40)
    for (const variant of [
      { batch: 1, workers: 1 },
      { batch: 7, workers: 2, slots: 3 },
      { batch: 7, workers: 2, slots: 3, continuous: false },
      { batch: 32, workers: 1, slots: 5, continuous: false },
    ]) {
      expect(texts(await run('test.parquet', { limit: 40, ...variant })), JSON.stringify(variant)).toEqual(reference)
    }
  })

  it('let error rows pass around every model stage, and turn rows without a question into missing-question rows', async () => {
    const model = open(1)
    const source = shardInfo('s', 4)
    const good = await firstImage()
    const rows = [imageRow(0, good, source), imageRow(1, new Uint8Array([1, 2, 3]), source), imageRow(2, good, source), imageRow(3, null, source)]
    const withQuestion = (q: string | null) => (r: ReturnType<typeof imageRow>) => ({ ...r, kept: { question: q } })
    const input = [withQuestion('what color is the star?')(rows[0]), withQuestion('what color is the star?')(rows[1]), withQuestion(null)(rows[2]), withQuestion('x')(rows[3])]
    const out = await lastValueFrom(
      of(...input).pipe(
        decodeImages({ size: 64, ordered: true }),
        batchRecords({ maxSize: 4, maxWaitMs: 1000 }),
        extractVitFeatures({ model }),
        resampleTokens({ model }),
        routeToExperts({ model }),
        crossAttend({ model }),
        decodeText({ model, questions: (row) => row.kept.question as string | null }),
        toArray(),
      ),
    )
    const byRow = new Map(out.map((r) => [(r as { key: { row: number } }).key.row, r]))
    expect(out).toHaveLength(4)
    expect(byRow.get(0)!.kind).toBe('generated-text')
    expect((byRow.get(1) as ErrorRecord).code).toBe('unsupported-format')
    expect((byRow.get(2) as ErrorRecord).code).toBe('missing-question')
    expect((byRow.get(3) as ErrorRecord).code).toBe('missing')
    expect(model.active).toBe(false)
  })

  describe('STYLE checklist', () => {
    const chain = (model: VisionLanguageModel) => [
      extractVitFeatures({ model }),
      resampleTokens({ model }),
      routeToExperts({ model }),
      crossAttend({ model }),
      decodeText({ model, generation: { maxNewTokens: 4 } }),
    ] as const

    it('empty input: completes with nothing and starts no worker', async () => {
      const model = open(1)
      const [a, b, c, d, e] = chain(model)
      expect(await lastValueFrom(EMPTY.pipe(a, b, c, d, e, toArray()))).toEqual([])
      expect(model.active).toBe(false)
    })

    it('one and many: one output row per input row, embeddings too', async () => {
      const model = open(1)
      const image = await firstImage()
      const decoded = await lastValueFrom(of(...Array.from({ length: 5 }, (_, i) => imageRow(i, image))).pipe(decodeImages({ size: 64, ordered: true }), toArray()))
      const [a, b, c, d, e] = chain(model)
      const one = await lastValueFrom(of(decoded[0]).pipe(a, b, c, d, e, toArray()))
      expect(one.map((r) => r.kind)).toEqual(['generated-text'])
      const [a2, b2, c2] = chain(model)
      const embeddings = await lastValueFrom(of(decoded).pipe(a2, b2, c2, poolEmbeddings(), toArray()))
      expect(embeddings).toHaveLength(5)
      const first = (embeddings[0] as { embedding: Float32Array }).embedding
      expect(Math.hypot(...first)).toBeCloseTo(1, 5)
      for (const e of embeddings) expect(Array.from((e as { embedding: Float32Array }).embedding)).toEqual(Array.from(first))
    })

    it('a clip longer than max_frames keeps max_frames evenly spaced frames, or becomes a too-many-frames row', async () => {
      const model = open(1)
      const image = await firstImage()
      const [one] = (await lastValueFrom(of(imageRow(0, image)).pipe(decodeImages({ size: 64 }), toArray()))) as unknown as DecodedImage[]
      await model.load()
      const f = model.manifest.dims.max_frames + 4
      const pixels = new Uint8Array(f * one.pixels.length)
      for (let i = 0; i < f; i++) pixels.set(one.pixels, i * one.pixels.length)
      const clip: DecodedImage = { ...one, frames: f, pixels }
      const sampled = (await lastValueFrom(of([clip]).pipe(extractVitFeatures({ model }), toArray()))) as { kind: string; rows?: { frames: number }[] }[]
      expect(sampled.map((r) => [r.kind, r.rows?.[0].frames])).toEqual([['vit-features', model.manifest.dims.max_frames]])
      const refused = (await lastValueFrom(of([clip]).pipe(extractVitFeatures({ model, tooManyFrames: 'error' }), toArray()))) as unknown as ErrorRecord[]
      expect(refused.map((r) => r.code)).toEqual(['too-many-frames'])
    })

    it('upstream error: forwarded, and the sessions are released', async () => {
      const model = open(1)
      const image = await firstImage()
      const decoded = await lastValueFrom(of(imageRow(0, image)).pipe(decodeImages({ size: 64 }), toArray()))
      const [a, b, c, d, e] = chain(model)
      await expect(lastValueFrom(concat(of(decoded), throwError(() => new Error('boom'))).pipe(a, b, c, d, e, toArray()))).rejects.toThrow('boom')
      await model.closed()
      expect(model.active).toBe(false)
    })

    it('the stage throws: every row of the batch becomes a stage-failed error row; a graph that cannot load stops the stream', async () => {
      const model = open(1)
      await model.load()
      const image = await firstImage()
      const decoded = await lastValueFrom(of(imageRow(0, image), imageRow(1, image)).pipe(decodeImages({ size: 64, ordered: true }), toArray()))
      const original = model.package
      const swap = (file: string) => Object.defineProperty(model, 'pkg', { value: { ...original, graphPath: (g: string) => (g === 'resampler' ? file : original.graphPath(g)) } })
      swap(fileURLToPath(new URL('../../fixtures/onnx/tiny-linear.onnx', import.meta.url))) // a valid graph with other inputs
      const out = await lastValueFrom(of(decoded).pipe(extractVitFeatures({ model }), resampleTokens({ model }), toArray()))
      expect(out.map((r) => [(r as ErrorRecord).kind, (r as ErrorRecord).code, (r as ErrorRecord).stage])).toEqual([
        ['error', 'stage-failed', 'resampleTokens'],
        ['error', 'stage-failed', 'resampleTokens'],
      ])
      expect((out[0] as ErrorRecord).message).toMatch(/unknown input taps/)
      swap(join(SCENES, 'vocab.txt')) // not a graph: no session can be created
      await expect(lastValueFrom(of(decoded).pipe(extractVitFeatures({ model }), resampleTokens({ model }), toArray()))).rejects.toThrow(/cannot create a session/)
      await model.closed()
      expect(model.active).toBe(false)
    })

    it('early unsubscribe: the worker pool and its sessions are released', async () => {
      const model = open(1)
      const image = await firstImage()
      const decoded = await lastValueFrom(of(imageRow(0, image)).pipe(decodeImages({ size: 64 }), toArray()))
      const input = new Subject<(DecodedImage | ErrorRecord)[]>()
      const [a, b, c, d, e] = chain(model)
      const seen: unknown[] = []
      const subscription = input.pipe(a, b, c, d, e).subscribe((r) => seen.push(r))
      input.next(decoded)
      for (let i = 0; i < 200 && !model.active; i++) await new Promise((resolve) => setTimeout(resolve, 25))
      expect(model.active).toBe(true)
      subscription.unsubscribe()
      await model.closed()
      expect(model.active).toBe(false)
    })
  })
})

async function firstImage(): Promise<Uint8Array> {
  const plan = await planShards([join(SCENES, 'test.parquet')], { limit: 1 })
  const [row] = await lastValueFrom(readShards(plan, { limit: 1 }).pipe(toArray()))
  return (row as { image: Uint8Array }).image
}
