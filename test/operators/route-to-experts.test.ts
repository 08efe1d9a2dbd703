/**
 * routeToExperts: unrefined VisualTokens → refined VisualTokens, 1 → 1 per batch, one sparse dispatch: each
 * token goes to its top-k experts by router logit (equal logits: the lower expert id first), with no capacity
 * limit, so a token's result never depends on the rest of its batch. Refined tokens pass through.
 */
import { from, of } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { routeToExperts } from '../../operators/route-to-experts.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { routeTokens } from '../../src/model/experts.js'
import type { DecodedImage, VisualTokens } from '../../src/records.js'
import { HAVE_MODEL, batchRows, collect, decodedScenes, ids, manifestJson, maxAbsDiff, modelOperatorChecklist, modelsOfFile, noticeWithoutModel, referenceTensor, visualTokens } from '../helpers/model.js'

noticeWithoutModel('test/operators/route-to-experts')

describe('routeTokens: the routing rule routeToExperts applies', () => {
  it('takes each token\'s top-k logits, equal logits going to the lower expert id; weights are the softmax over the k', () => {
    // token 0: experts 1 and 3 tie for first, 2 is third; token 1: all four equal
    const logits = Float32Array.from([0, 2, 1, 2, 5, 5, 5, 5])
    const routing = routeTokens(logits, 2, 4, 2)
    expect(Array.from(routing.experts)).toEqual([1, 3, 0, 1])
    expect(Array.from(routing.weights)).toEqual([0.5, 0.5, 0.5, 0.5])
    // per expert, the (token, choice) slots routed to it, as token * k + j
    expect(routing.groups.map((g) => Array.from(g))).toEqual([[2], [0, 3], [], [1]])
  })

  it('weights a clear winner more: softmax over the chosen logits only', () => {
    const routing = routeTokens(Float32Array.from([Math.log(3), 0, -50]), 1, 3, 2)
    expect(Array.from(routing.experts)).toEqual([0, 1])
    expect(routing.weights[0]).toBeCloseTo(0.75, 6)
    expect(routing.weights[1]).toBeCloseTo(0.25, 6)
  })
})

describe.skipIf(!HAVE_MODEL)('routeToExperts', () => {
  const models = modelsOfFile()
  const manifest = HAVE_MODEL ? manifestJson() : undefined
  let images: DecodedImage[]
  beforeAll(async () => {
    images = await decodedScenes(5)
  })
  const unrefined = (model: Parameters<typeof visualTokens>[0]) => visualTokens(model, [images.slice(0, 3), images.slice(3, 5)], false)

  modelOperatorChecklist<VisualTokens>(
    {
      name: 'routeToExperts',
      graph: 'router',
      operator: (model) => routeToExperts({ model }),
      batches: unrefined,
      rows: (batch) => batch.rows,
      outputs: () => ({ kind: 'visual-tokens', count: 1 }),
    },
    models,
  )

  it('one: routes PyTorch\'s reference tokens as PyTorch\'s router logits say (per-expert loads), shape kept, refined', async () => {
    const model = models.open()
    const tokens = referenceTensor('resampler', 'visual_tokens')
    const batch: VisualTokens = { kind: 'visual-tokens', rows: batchRows([1, 1]), visual_tokens: tokens, refined: false }
    const metrics = new RunMetrics()
    const [refined] = (await collect(of(batch).pipe(routeToExperts({ model, metrics })))) as VisualTokens[]
    expect([refined.kind, refined.refined, refined.rows, refined.visual_tokens.dims]).toEqual(['visual-tokens', true, batch.rows, tokens.dims])
    // independent top-k of PyTorch's logits: descending, equal logits by lower id
    const logits = referenceTensor('router', 'router_logits')
    const [n, e] = logits.dims
    const k = manifest!.experts.top_k
    const load = new Array<number>(e).fill(0)
    for (let t = 0; t < n; t++) {
      const row = Array.from((logits.data as Float32Array).subarray(t * e, (t + 1) * e))
      for (const expert of row.map((_, i) => i).sort((a, b) => row[b] - row[a] || a - b).slice(0, k)) load[expert] += 1
    }
    const extra = metrics.snapshot().find((s) => s.stage === 'routeToExperts')!.extra
    expect(Array.from({ length: e }, (_, i) => extra[`expert_${i}`] ?? 0)).toEqual(load)
    expect(load.reduce((a, b) => a + b, 0)).toBe(n * k)
  })

  it('gives a row the same refined tokens alone and in a batch (no capacity limit)', async () => {
    const model = models.open()
    const [batch] = await unrefined(models.open())
    const per = batch.visual_tokens.data.length / 3
    const alone: VisualTokens = { ...batch, rows: batch.rows.slice(1, 2), visual_tokens: { ...batch.visual_tokens, dims: [1, ...batch.visual_tokens.dims.slice(1)], data: (batch.visual_tokens.data as Float32Array).slice(per, 2 * per) } }
    const [together, single] = (await collect(from([batch, alone]).pipe(routeToExperts({ model })))) as VisualTokens[]
    expect(maxAbsDiff((together.visual_tokens.data as Float32Array).subarray(per, 2 * per), single.visual_tokens.data as Float32Array)).toBeLessThan(1e-5)
  })

  it('leaves the input record intact and passes refined tokens through unchanged', async () => {
    const model = models.open()
    const [batch] = await unrefined(models.open())
    const before = Float32Array.from(batch.visual_tokens.data as Float32Array)
    const [refined] = (await collect(of(batch).pipe(routeToExperts({ model })))) as VisualTokens[]
    expect(Array.from(batch.visual_tokens.data as Float32Array)).toEqual(Array.from(before))
    const again = await collect(of(refined).pipe(routeToExperts({ model })))
    expect(again).toEqual([refined])
    expect(again[0]).toBe(refined)
  })

  it('many: one refined record per batch, in input order', async () => {
    const model = models.open()
    const out = (await collect(from(await unrefined(models.open())).pipe(routeToExperts({ model })))) as VisualTokens[]
    expect(out.map((r) => [ids(r.rows), r.refined])).toEqual([[ids(images.slice(0, 3)), true], [ids(images.slice(3, 5)), true]])
  })
})
