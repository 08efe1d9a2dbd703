/**
 * decodeText: CrossMemory → one GeneratedText per row (1 → B), one Generation per question (one for a
 * caption), PyTorch's greedy tokens for the reference scenes; rows without a question, or whose prompt
 * leaves no room, become error rows; a row's text does not depend on its batch, slots or continuous batching.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import * as ort from 'onnxruntime-node'
import { from, of } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { decodeText } from '../../operators/decode-text.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { VisionLanguageModel } from '../../src/model/vision-language-model.js'
import type { CrossMemory, DecodedImage, ErrorRecord, GeneratedText } from '../../src/records.js'
import { HAVE_MODEL, MODEL_DIR, collect, crossMemory, decodedScenes, ids, manifestJson, modelOperatorChecklist, modelsOfFile, noticeWithoutModel } from '../helpers/model.js'

noticeWithoutModel('test/operators/decode-text')

interface GreedySample { id: string; task: 'caption' | 'vqa'; question?: string; expected_ids: number[]; expected_text: string }

describe.skipIf(!HAVE_MODEL)('decodeText', () => {
  const models = modelsOfFile()
  const manifest = HAVE_MODEL ? manifestJson() : undefined
  const greedy = HAVE_MODEL ? (JSON.parse(readFileSync(join(MODEL_DIR, 'reference', 'greedy.json'), 'utf8')) as { max_new_tokens: number; samples: GreedySample[] }) : undefined
  const eos = manifest?.special_tokens.eos
  const expected = (task: 'caption' | 'vqa') => greedy!.samples.filter((s) => s.task === task)
  const withoutEos = (tokens: number[]) => (tokens.at(-1) === eos ? tokens.slice(0, -1) : tokens)
  let images: DecodedImage[]
  let memory: CrossMemory[]
  beforeAll(async () => {
    images = await decodedScenes(5)
    const model = new VisionLanguageModel(MODEL_DIR, { inferenceThreads: 1 })
    memory = await crossMemory(model, [images.slice(0, 3), images.slice(3, 5)])
    await model.closed()
  })

  modelOperatorChecklist<CrossMemory>(
    {
      name: 'decodeText',
      graph: 'decoder',
      operator: (model) => decodeText({ model, generation: { maxNewTokens: 4 } }),
      batches: async () => memory,
      rows: (batch) => batch.rows,
      outputs: (batch) => ({ kind: 'generated-text', count: batch.rows.length }),
    },
    models,
  )

  it('one: PyTorch\'s greedy captions of the reference scenes, ending at the end token', async () => {
    const model = models.open()
    const metrics = new RunMetrics()
    const out = (await collect(of(memory[0]).pipe(decodeText({ model, metrics, generation: { maxNewTokens: greedy!.max_new_tokens } })))) as GeneratedText[]
    const want = expected('caption')
    expect(ids(out)).toEqual(want.map((s) => s.id))
    expect(out.map((r) => r.generations)).toEqual(
      want.map((s) => [{ prompt: null, text: s.expected_text, tokens: withoutEos(s.expected_ids), finish: 'eos', logprobs: s.expected_ids.map(() => expect.any(Number)) }]),
    )
    const extra = metrics.snapshot().find((s) => s.stage === 'decodeText')!.extra
    // every generated token counts, the end tokens included
    expect(extra.tokens).toBe(want.reduce((n, s) => n + s.expected_ids.length, 0))
  })

  it('answers questions with the VQA prompt: PyTorch\'s greedy answers', async () => {
    const model = models.open()
    const want = expected('vqa')
    const question = new Map(want.map((s) => [s.id, s.question!]))
    const out = (await collect(of(memory[0]).pipe(decodeText({ model, questions: (row) => question.get(String(row.id)), generation: { maxNewTokens: greedy!.max_new_tokens } })))) as GeneratedText[]
    expect(out.map((r) => r.generations)).toEqual(
      want.map((s) => [{ prompt: s.question, text: s.expected_text, tokens: withoutEos(s.expected_ids), finish: 'eos', logprobs: s.expected_ids.map(() => expect.any(Number)) }]),
    )
  })

  it('gives each chosen token its log-probability: the decoder\'s log-softmax when the whole text is fed at once (one prefill, no cache: an independent path)', async () => {
    const model = models.open()
    const out = (await collect(of(memory[0]).pipe(decodeText({ model, generation: { maxNewTokens: 6 } })))) as GeneratedText[]
    const session = await ort.InferenceSession.create(join(MODEL_DIR, 'decoder.onnx'), { intraOpNumThreads: 1 })
    const { n_layer, n_head, head_dim } = manifest!.dims
    const { bos } = manifest!.special_tokens
    const rowOf = (t: { dims: readonly number[]; data: unknown }, b: number) => {
      const per = t.dims.slice(1).reduce((a, d) => a * d, 1)
      return new ort.Tensor('float32', (t.data as Float32Array).slice(b * per, (b + 1) * per), [1, ...t.dims.slice(1)])
    }
    const i64 = (values: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), [1, values.length])
    const empty = new ort.Tensor('float32', new Float32Array(0), [n_layer, 1, n_head, 0, head_dim])
    let compared = 0
    for (const [b, row] of out.entries()) {
      const g = row.generations[0]
      const chosen = g.finish === 'eos' ? [...g.tokens, eos!] : [...g.tokens]
      expect(g.logprobs).toHaveLength(chosen.length)
      const input = [bos, ...chosen.slice(0, -1)]
      const result = await session.run({
        input_ids: i64(input),
        position_ids: i64(input.map((_, i) => i)),
        attention_mask: i64(input.map(() => 1)),
        past_k: empty,
        past_v: empty,
        xattn_k: rowOf(memory[0].xattn_k, b),
        xattn_v: rowOf(memory[0].xattn_v, b),
        xattn_mask: rowOf(memory[0].xattn_mask, b),
      })
      const logits = result.logits.data as Float32Array
      const V = result.logits.dims[2]
      chosen.forEach((token, i) => {
        const position = Array.from(logits.subarray(i * V, (i + 1) * V))
        const max = Math.max(...position)
        const expectedLogprob = position[token] - max - Math.log(position.reduce((n, v) => n + Math.exp(v - max), 0))
        expect(Math.abs(g.logprobs[i] - expectedLogprob)).toBeLessThan(1e-4)
        compared++
      })
    }
    expect(compared).toBeGreaterThan(out.length)
    await session.release()
  })

  it('refuses a question with words the vocabulary cannot represent (question-out-of-vocabulary), naming them; the others are answered', async () => {
    const model = models.open()
    const asked = new Map<unknown, string | string[]>([[images[0].id, 'what is in the image?'], [images[1].id, 'what color is the cross?'], [images[2].id, ['how many circles are there?', 'is there a zebra or a cat?']]])
    const out = await collect(of(memory[0]).pipe(decodeText({ model, questions: (row) => asked.get(row.id) })))
    expect(out.map((r) => [r.kind, (r as ErrorRecord).code ?? null, (r as { id: unknown }).id])).toEqual([
      ['error', 'question-out-of-vocabulary', images[0].id],
      ['error', 'question-out-of-vocabulary', images[2].id],
      ['generated-text', null, images[1].id],
    ])
    expect((out[0] as ErrorRecord).message).toBe('the question has words the model\'s vocabulary (65 tokens) cannot represent: "image"')
    expect((out[1] as ErrorRecord).message).toBe('the question has words the model\'s vocabulary (65 tokens) cannot represent: "zebra", "or", "cat"')
  })

  it('asks several questions of one row from its one memory: one generation each, in order, as if asked alone', async () => {
    const model = models.open()
    const [a, b] = ['what color is the cross?', 'how many diamonds are there?']
    const [both] = (await collect(of(memory[0]).pipe(decodeText({ model, questions: () => [a, b] })))) as GeneratedText[]
    const [onlyB] = (await collect(of(memory[0]).pipe(decodeText({ model, questions: () => b })))) as GeneratedText[]
    expect(both.generations.map((g) => g.prompt)).toEqual([a, b])
    expect(both.generations[1]).toEqual(onlyB.generations[0])
  })

  it('turns a row without a question (none, null, blank) into a missing-question row; the others are answered', async () => {
    const model = models.open()
    const asked = new Map<unknown, string | null | string[]>([[images[0].id, '   '], [images[1].id, 'what color is the cross?'], [images[2].id, []]])
    const metrics = new RunMetrics()
    const out = await collect(of(memory[0]).pipe(decodeText({ model, metrics, questions: (row) => asked.get(row.id) })))
    expect(out.map((r) => [r.kind, (r as ErrorRecord).code ?? null, (r as { id: unknown }).id])).toEqual([
      ['error', 'missing-question', images[0].id],
      ['error', 'missing-question', images[2].id],
      ['generated-text', null, images[1].id],
    ])
    expect((out[0] as ErrorRecord).message).toBe('the row has no question')
    expect(metrics.snapshot().find((s) => s.stage === 'decodeText')!.errors).toBe(2)
  })

  it('refuses a question whose prompt leaves no room in the decoder\'s positions (stage-failed)', async () => {
    const model = models.open()
    const long = new Array<string>(manifest!.dims.max_text_len).fill('circle').join(' ')
    const [refused] = (await collect(of(memory[1]).pipe(decodeText({ model, questions: (row) => (row.id === images[3].id ? long : 'is there a star?') })))) as ErrorRecord[]
    expect([refused.code, refused.id, refused.message]).toEqual(['stage-failed', images[3].id, `a prompt of ${manifest!.dims.max_text_len + 2} tokens leaves no room in the decoder's ${manifest!.dims.max_text_len} positions`])
  })

  it('stops after maxNewTokens (finish length)', async () => {
    const model = models.open()
    const out = (await collect(of(memory[0]).pipe(decodeText({ model, generation: { maxNewTokens: 2 } })))) as GeneratedText[]
    expect(out.map((r) => [r.generations[0].tokens, r.generations[0].finish])).toEqual(expected('caption').map((s) => [s.expected_ids.slice(0, 2), 'length']))
  })

  it('gives the same texts whatever the slots and continuous batching (speed settings)', async () => {
    const model = models.open()
    const texts = async (options: { slots?: number; continuous?: boolean }) =>
      ((await collect(from(memory).pipe(decodeText({ model, ...options })))) as GeneratedText[]).map((r) => r.generations[0].text)
    const reference = await texts({})
    expect(reference).toHaveLength(5)
    expect(await texts({ slots: 1 })).toEqual(reference)
    expect(await texts({ slots: 2, continuous: false })).toEqual(reference)
  })

  it('gives log-probabilities that agree across slots to the documented bound (1e-5), not bit for bit (left padding reorders the float sums)', async () => {
    const model = models.open()
    const logprobs = async (options: { slots?: number; continuous?: boolean }) =>
      ((await collect(from(memory).pipe(decodeText({ model, ...options })))) as GeneratedText[]).map((r) => r.generations[0].logprobs)
    const reference = await logprobs({})
    for (const other of [await logprobs({ slots: 1 }), await logprobs({ slots: 2 })]) {
      expect(other.map((l) => l.length)).toEqual(reference.map((l) => l.length))
      other.forEach((l, i) => l.forEach((v, j) => expect(Math.abs(v - reference[i][j])).toBeLessThan(1e-5)))
    }
  })

  it('beam search (3 beams) finds the reference captions too: the greedy ones are the most probable here', async () => {
    const model = models.open()
    const out = (await collect(of(memory[0]).pipe(decodeText({ model, generation: { beams: 3, maxNewTokens: greedy!.max_new_tokens } })))) as GeneratedText[]
    expect(out.map((r) => r.generations[0].text)).toEqual(expected('caption').map((s) => s.expected_text))
  })

  it('leaves the input record intact (the memory is copied to the inference thread)', async () => {
    const model = models.open()
    const before = Float32Array.from(memory[1].xattn_k.data as Float32Array)
    await collect(of(memory[1]).pipe(decodeText({ model, generation: { maxNewTokens: 2 } })))
    expect(Array.from(memory[1].xattn_k.data as Float32Array)).toEqual(Array.from(before))
  })

  it('refuses bad generation settings before any I/O, naming the field', () => {
    const model = models.open()
    expect(() => decodeText({ model, generation: { maxNewTokens: 0 } })).toThrow('maxNewTokens: must be an integer >= 1, got 0')
    expect(() => decodeText({ model, generation: { beams: 1.5 } })).toThrow('beams: must be an integer >= 1, got 1.5')
    expect(() => decodeText({ model, slots: 0 })).toThrow('slots: must be an integer >= 1, got 0')
  })
})
