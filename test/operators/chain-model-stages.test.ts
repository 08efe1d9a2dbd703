/**
 * chainModelStages: consecutive model operators run as one inference-thread task per batch. Its records are
 * those of the same operators piped one after the other — byte-identical tensors and texts, the same error
 * rows (refused rows, rows failed by a graph in the middle of the chain, records passed around) — while only
 * the pixels go to the thread and only the last stage's outputs come back.
 */
import { from, of, type Observable, type OperatorFunction } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { crossAttend } from '../../operators/cross-attend.js'
import { decodeText } from '../../operators/decode-text.js'
import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { chainModelStages } from '../../operators/chain-model-stages.js'
import { resampleTokens } from '../../operators/resample-tokens.js'
import { routeToExperts } from '../../operators/route-to-experts.js'
import { poolEmbeddings } from '../../operators/pool-embeddings.js'
import { PipelineConfigError } from '../../src/errors.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import type { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import type { DecodedImage, ErrorRecord, ShardNotice } from '../../src/records.js'
import { HAVE_MODEL, NOT_A_GRAPH, WRONG_GRAPH, bystanders, clip, collect, decodedScenes, modelsOfFile, noticeWithoutModel } from '../helpers/model.js'

noticeWithoutModel('test/operators/chain-model-stages')

type Input = DecodedImage | ErrorRecord | ShardNotice
type Operators = OperatorFunction<any, any>[] // eslint-disable-line @typescript-eslint/no-explicit-any

/** The five model operators on `model`, each with its own metrics under `metrics`. */
function fiveStages(model: VisionLanguageModel, metrics?: RunMetrics, questions?: (row: { id: unknown }) => string | null): Operators {
  const options = { model, ...(metrics ? { metrics } : {}) }
  return [
    extractVitFeatures<Input>(options),
    resampleTokens(options),
    routeToExperts(options),
    crossAttend(options),
    decodeText({ ...options, generation: { maxNewTokens: 6 }, ...(questions ? { questions } : {}) }),
  ] as Operators
}

/** The operators piped one after the other. */
function piped(operators: Operators): OperatorFunction<Input | Input[], { kind: string }> {
  return (source: Observable<Input | Input[]>) => operators.reduce((stream: Observable<unknown>, op) => stream.pipe(op), source) as Observable<{ kind: string }>
}

/** Records sorted by kind and row, tensors as plain arrays (for deep equality). */
function canonical(records: readonly unknown[]): unknown[] {
  const rowOf = (r: { key?: { row: number }; rows?: { key: { row: number } }[] }) => r.key?.row ?? r.rows?.[0]?.key.row ?? -1
  return [...records]
    .sort((a, b) => String((a as { kind: string }).kind).localeCompare(String((b as { kind: string }).kind)) || rowOf(a as never) - rowOf(b as never))
    .map((r) => JSON.parse(JSON.stringify(r, (_k, v: unknown) => (ArrayBuffer.isView(v) ? Array.from(v as unknown as ArrayLike<number>, Number) : typeof v === 'bigint' ? String(v) : v))))
}

describe.skipIf(!HAVE_MODEL)('chainModelStages', () => {
  const models = modelsOfFile()
  let images: DecodedImage[]
  beforeAll(async () => {
    images = await decodedScenes(7)
  })

  /** Two batches: images, a clip and a row decoded at the wrong size among them; an error row and a notice around. */
  const inputs = (): (Input | Input[])[] => {
    const [error, notice] = bystanders()
    const wrongSize: DecodedImage = { ...images[6], id: 'wrong-size', key: { ...images[6].key, row: 900 }, width: 32, height: 32, pixels: new Uint8Array(32 * 32 * 3) }
    return [error, [images[0], wrongSize, clip(images.slice(1, 4), 3), images[1]], notice, [images[4], images[5]]]
  }

  it('gives exactly the records of the operators piped one after the other: captions, refused rows and records passed around', async () => {
    const chained = await collect(from(inputs()).pipe(chainModelStages(...fiveStages(models.open()))))
    const separate = await collect(from(inputs()).pipe(piped(fiveStages(models.open()))))
    expect(chained.map((r) => (r as { kind: string }).kind).sort()).toEqual(['error', 'error', ...new Array<string>(5).fill('generated-text'), 'shard-notice'])
    expect(canonical(chained)).toEqual(canonical(separate))
    const refused = chained.find((r) => (r as ErrorRecord).id === 'wrong-size') as ErrorRecord
    expect([refused.stage, refused.code]).toEqual(['extractVitFeatures', 'stage-failed'])
  })

  it('vision stages alone: the refined tokens are bit for bit those of the piped operators, and so are the embeddings', async () => {
    const vision = (model: VisionLanguageModel) => fiveStages(model).slice(0, 3)
    const tokens = await collect(from(inputs()).pipe(chainModelStages(...vision(models.open()))))
    const separateTokens = await collect(from(inputs()).pipe(piped(vision(models.open()))))
    expect(tokens.filter((r) => (r as { kind: string }).kind === 'visual-tokens')).toHaveLength(2)
    expect(canonical(tokens)).toEqual(canonical(separateTokens))
    const chained = await collect(from(inputs()).pipe(chainModelStages<Input | Input[], { kind: string }>(...vision(models.open())), poolEmbeddings()))
    const separate = await collect(from(inputs()).pipe(piped(vision(models.open())), poolEmbeddings()))
    expect(canonical(chained)).toEqual(canonical(separate))
    expect(chained.filter((r) => (r as { kind: string }).kind === 'embedding')).toHaveLength(5)
  })

  it('VQA: rows without a question become missing-question rows from decodeText, as when piped', async () => {
    const questions = (row: { id: unknown }) => (String(row.id).endsWith('1') ? null : 'what is on the left?')
    const chained = await collect(from(inputs()).pipe(chainModelStages(...fiveStages(models.open(), undefined, questions))))
    const separate = await collect(from(inputs()).pipe(piped(fiveStages(models.open(), undefined, questions))))
    expect(canonical(chained)).toEqual(canonical(separate))
    expect(chained.some((r) => (r as ErrorRecord).code === 'missing-question')).toBe(true)
  })

  it('a graph failing in the middle of the chain fails each batch\'s rows at that stage, as when piped; refused rows keep their reason', async () => {
    const chained = await collect(from(inputs()).pipe(chainModelStages(...fiveStages(models.broken('xattn_kv', WRONG_GRAPH)))))
    const separate = await collect(from(inputs()).pipe(piped(fiveStages(models.broken('xattn_kv', WRONG_GRAPH)))))
    expect(canonical(chained)).toEqual(canonical(separate))
    const failed = chained.filter((r) => (r as ErrorRecord).code === 'stage-failed' && (r as ErrorRecord).stage === 'crossAttend')
    expect(failed).toHaveLength(5)
    expect((failed[0] as ErrorRecord).message).toMatch(/tiny-linear\.onnx/)
  })

  it('a graph no session can be made of errors the stream, and releases the model', async () => {
    const model = models.broken('decoder', NOT_A_GRAPH)
    const error = await collect(from(inputs()).pipe(chainModelStages(...fiveStages(model)))).then(() => undefined, (e: unknown) => e)
    expect(String(error)).toMatch(/cannot create a session/)
    await model.closed()
    expect(model.active).toBe(false)
  })

  it('moves only the pixels (uint8) to the thread and the last stage\'s outputs back; counts each stage as piped operators do', async () => {
    const model = models.open()
    const metrics = new RunMetrics()
    const batch = images.slice(0, 4)
    const pixels = batch.reduce((n, image) => n + image.pixels.byteLength, 0)
    const out = await collect(of(batch).pipe(chainModelStages(...fiveStages(model, metrics))))
    expect(out).toHaveLength(4)
    const stages = Object.fromEntries(metrics.snapshot().map((s) => [s.stage, s]))
    expect(stages.extractVitFeatures.extra.bytes_to_thread).toBe(pixels)
    expect(stages.extractVitFeatures.extra.bytes_from_thread).toBe(0) // the texts come back as token ids, no tensor
    for (const name of ['extractVitFeatures', 'resampleTokens', 'routeToExperts', 'crossAttend', 'decodeText']) {
      expect([stages[name].recordsIn, stages[name].recordsOut, stages[name].batches]).toEqual([4, 4, 1])
      expect(stages[name].extra.compute_ms).toBeGreaterThan(0)
    }
    expect(stages.decodeText.extra.tokens).toBeGreaterThan(0)
    // the same batch through the piped operators moves every stage's tensors out and back
    const separate = new RunMetrics()
    await collect(of(batch).pipe(piped(fiveStages(models.open(), separate))))
    const moved = separate.snapshot().reduce((n, s) => n + (s.extra.bytes_to_thread ?? 0) + (s.extra.bytes_from_thread ?? 0), 0)
    expect(moved).toBeGreaterThan(10 * pixels)
  })

  it('refuses what it cannot chain: no operator, a plain operator, a first-only stage after another', () => {
    const model = models.open()
    expect(() => chainModelStages()).toThrow(PipelineConfigError)
    expect(() => chainModelStages(extractVitFeatures({ model }), poolEmbeddings() as never)).toThrow(/operator 2 is not a model operator/)
    expect(() => chainModelStages(resampleTokens({ model }), extractVitFeatures({ model }))).toThrow(/extractVitFeatures can only be first/)
  })
})
