/**
 * resampleTokens: VitFeatures (`taps [N, L, P, Dv]`) → VisualTokens (`visual_tokens [N, L, Q, D]`, not
 * refined), 1 → 1 per batch; the input record is left intact (a copy crosses to the inference thread).
 */
import { from, of } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { resampleTokens } from '../../operators/resample-tokens.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import type { DecodedImage, VisualTokens, VitFeatures } from '../../src/records.js'
import { HAVE_MODEL, TOLERANCE, batchRows, collect, decodedScenes, ids, manifestJson, maxAbsDiff, modelOperatorChecklist, modelsOfFile, noticeWithoutModel, referenceTensor, vitFeatures } from '../helpers/model.js'

noticeWithoutModel('test/operators/resample-tokens')

describe.skipIf(!HAVE_MODEL)('resampleTokens', () => {
  const models = modelsOfFile()
  const dims = HAVE_MODEL ? manifestJson().dims : {}
  let images: DecodedImage[]
  beforeAll(async () => {
    images = await decodedScenes(5)
  })
  const features = (model: Parameters<typeof vitFeatures>[0]) => vitFeatures(model, [images.slice(0, 3), images.slice(3, 5)])

  modelOperatorChecklist<VitFeatures>(
    {
      name: 'resampleTokens',
      graph: 'resampler',
      operator: (model) => resampleTokens({ model }),
      batches: features,
      rows: (batch) => batch.rows,
      outputs: () => ({ kind: 'visual-tokens', count: 1 }),
    },
    models,
  )

  it('one: PyTorch\'s visual tokens for the reference taps, within the parity tolerance', async () => {
    const model = models.open()
    const taps = referenceTensor('resampler', 'taps')
    const batch: VitFeatures = { kind: 'vit-features', rows: batchRows([1, 1]), taps }
    const metrics = new RunMetrics()
    const [tokens] = (await collect(of(batch).pipe(resampleTokens({ model, metrics })))) as VisualTokens[]
    const expected = referenceTensor('resampler', 'visual_tokens')
    expect([tokens.kind, tokens.refined, tokens.rows]).toEqual(['visual-tokens', false, batch.rows])
    expect(tokens.visual_tokens.dims).toEqual([2, dims.n_taps, dims.n_query, dims.d_visual])
    expect(maxAbsDiff(tokens.visual_tokens.data as Float32Array, expected.data as Float32Array)).toBeLessThanOrEqual(TOLERANCE)
    const stage = metrics.snapshot().find((s) => s.stage === 'resampleTokens')!
    expect([stage.recordsIn, stage.recordsOut, stage.batches, stage.errors]).toEqual([2, 2, 1, 0])
  })

  it('leaves the input record intact (its taps are copied, not transferred)', async () => {
    const model = models.open()
    const [batch] = await features(models.open())
    const before = Float32Array.from(batch.taps.data as Float32Array)
    await collect(of(batch).pipe(resampleTokens({ model })))
    expect(batch.taps.data.length).toBe(before.length)
    expect(Array.from(batch.taps.data as Float32Array)).toEqual(Array.from(before))
  })

  it('many: one VisualTokens per batch, in input order, each with its batch\'s rows', async () => {
    const model = models.open()
    const batches = await features(models.open())
    const out = (await collect(from(batches).pipe(resampleTokens({ model })))) as VisualTokens[]
    expect(out.map((r) => ids(r.rows))).toEqual([ids(images.slice(0, 3)), ids(images.slice(3, 5))])
    expect(out.map((r) => r.visual_tokens.dims[0])).toEqual([3, 2])
  })
})
