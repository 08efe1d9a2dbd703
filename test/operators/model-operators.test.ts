/**
 * The five model operators chained, on the committed reference model (fixtures/models/evlm-tiny;
 * EVFLOW_PARITY_MODEL=dir for another package): from Parquet rows the chain reproduces PyTorch's greedy
 * tokens (reference/greedy.json), captions do not depend on batch size, slots, continuous batching or the
 * number of inference threads, and error rows pass around every model stage. Each operator's own
 * specification (the STYLE.md checklist and its particular cases) is in its spec file beside this one.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { lastValueFrom, of, toArray, type Observable } from 'rxjs'
import { afterAll, describe, expect, it } from 'vitest'

import { batchRecords } from '../../operators/batch-records.js'
import { crossAttend } from '../../operators/cross-attend.js'
import { decodeImages } from '../../operators/decode-images.js'
import { decodeText } from '../../operators/decode-text.js'
import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { readShards } from '../../operators/read-shards.js'
import { resampleTokens } from '../../operators/resample-tokens.js'
import { routeToExperts } from '../../operators/route-to-experts.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import { planShards } from '../../src/parquet/shards.js'
import type { BatchRow, DecodedImage, ErrorRecord, GeneratedText, ShardNotice } from '../../src/records.js'
import { imageRow, shardInfo } from '../helpers/records.js'

const DIR = process.env.EVFLOW_PARITY_MODEL ?? fileURLToPath(new URL('../../fixtures/models/evlm-tiny/', import.meta.url))
const HAVE = existsSync(join(DIR, 'manifest.json'))
if (!HAVE) console.warn(`NOTICE: test/operators/model-operators: no model package at ${DIR}: SKIPPING the model operator tests`)
const SCENES = fileURLToPath(new URL('../../fixtures/scenes/', import.meta.url))

const models: VisionLanguageModel[] = []
const open = (threads = 2) => {
  const model = new VisionLanguageModel(DIR, { inferenceThreads: threads })
  models.push(model)
  return model
}
afterAll(async () => {
  for (const model of models) await model.closed()
})

type Out = GeneratedText | ErrorRecord | ShardNotice

/** Reads `file` (first `limit` rows) and runs the whole model chain. */
async function run(file: string, options: { limit: number; batch: number; threads?: number; slots?: number; continuous?: boolean; questions?: (row: BatchRow) => string | undefined; maxNewTokens?: number; model?: VisionLanguageModel }): Promise<Out[]> {
  const model = options.model ?? open(options.threads ?? 2)
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
        ...(options.questions ? { questions: options.questions } : {}),
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
    const asked = new Map(greedy!.samples.filter((s) => s.task === 'vqa').map((s) => [s.id, s.question]))
    const questions = await run('test.parquet', { limit: 8, batch: 8, maxNewTokens: greedy!.max_new_tokens, questions: (row) => asked.get(String(row.id)) })
    const byId = (out: Out[]) => new Map(out.filter((r): r is GeneratedText => r.kind === 'generated-text').map((r) => [r.id, r.generations[0]]))
    const cap = byId(captions)
    const vqa = byId(questions)
    expect(greedy!.samples.map((s) => (s.task === 'caption' ? cap : vqa).get(s.id)?.tokens)).toEqual(greedy!.samples.map((s) => withoutEos(s.expected_ids)))
    expect(greedy!.samples.filter((s) => s.task === 'vqa').map((s) => vqa.get(s.id)?.prompt)).toEqual(greedy!.samples.filter((s) => s.task === 'vqa').map((s) => s.question))
  })

  it('reproduce PyTorch\'s greedy tokens for a video clip (frames flattened into the batch)', async () => {
    const captions = await run('video.parquet', { limit: 2, batch: 2, maxNewTokens: greedy!.max_new_tokens })
    const question = greedy!.video.samples.find((s) => s.task === 'vqa')?.question
    const answers = await run('video.parquet', { limit: 2, batch: 2, maxNewTokens: greedy!.max_new_tokens, questions: () => question })
    const pick = (out: Out[]) => out.find((r): r is GeneratedText => r.kind === 'generated-text' && r.id === greedy!.video.id)!.generations[0]
    expect(greedy!.video.samples.map((s) => (s.task === 'caption' ? pick(captions) : pick(answers)).tokens)).toEqual(greedy!.video.samples.map((s) => withoutEos(s.expected_ids)))
  })

  it('give identical captions at batch sizes 1, 7 and 32, continuous batching on and off, 1 and 2 inference threads', async () => {
    const reference = texts(await run('test.parquet', { limit: 40, batch: 32, threads: 2 }))
    expect(Object.keys(reference)).toHaveLength(40)
    for (const variant of [
      { batch: 1, threads: 1 },
      { batch: 7, threads: 2, slots: 3 },
      { batch: 7, threads: 2, slots: 3, continuous: false },
      { batch: 32, threads: 1, slots: 5, continuous: false },
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
})

async function firstImage(): Promise<Uint8Array> {
  const plan = await planShards([join(SCENES, 'test.parquet')], { limit: 1 })
  const [row] = await lastValueFrom(readShards(plan, { limit: 1 }).pipe(toArray()))
  return (row as { image: Uint8Array }).image
}
