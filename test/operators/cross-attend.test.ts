/**
 * crossAttend: VisualTokens (`[N, L, Q, D]`, clips' frames flattened) → CrossMemory (`xattn_k / xattn_v
 * [B, n_layer, H, M, dh]`, `xattn_mask [B, M]`, M = F·Q with F the batch's most frames), 1 → 1 per batch.
 * Clips of different lengths are padded to the longest with zero tokens and a frame mask; padding frames are
 * masked out of attention (-1e9).
 */
import { from, of } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { crossAttend } from '../../operators/cross-attend.js'
import { frameMask, packFrames } from '../../src/tensor/frames.js'
import type { CrossMemory, DecodedImage, VisualTokens } from '../../src/records.js'
import { HAVE_MODEL, TOLERANCE, batchRows, clip, collect, decodedScenes, ids, manifestJson, maxAbsDiff, modelOperatorChecklist, modelsOfFile, noticeWithoutModel, referenceTensor, visualTokens } from '../helpers/model.js'

noticeWithoutModel('test/operators/cross-attend')

describe('packFrames and frameMask: the layout crossAttend feeds xattn_kv', () => {
  it('packs per-frame rows into per-clip rows padded with zeros to the longest clip, and masks the padding', () => {
    // three clips of 2, 1 and 3 frames, one value per frame (frame f of clip c = 10c + f)
    const rows = Float32Array.from([0, 1, 10, 20, 21, 22])
    expect(packFrames(rows, [2, 1, 3], 1)).toEqual({ data: Float32Array.from([0, 1, 0, 10, 0, 0, 20, 21, 22]), frames: 3 })
    expect(frameMask([2, 1, 3], 3)).toEqual([1, 1, 0, 1, 0, 0, 1, 1, 1])
  })

  it('copies even when nothing needs padding, and refuses data that does not match the frames', () => {
    const rows = Float32Array.from([1, 2, 3, 4])
    const packed = packFrames(rows, [1, 1], 2)
    expect(packed).toEqual({ data: Float32Array.from([1, 2, 3, 4]), frames: 1 })
    expect(packed.data.buffer).not.toBe(rows.buffer)
    expect(() => packFrames(rows, [1, 2], 2)).toThrow('frames: expected shape [3, 2], got [4]')
  })
})

describe.skipIf(!HAVE_MODEL)('crossAttend', () => {
  const models = modelsOfFile()
  const dims = HAVE_MODEL ? manifestJson().dims : {}
  let images: DecodedImage[]
  beforeAll(async () => {
    images = await decodedScenes(5)
  })
  const tokens = (model: Parameters<typeof visualTokens>[0]) => visualTokens(model, [images.slice(0, 3), images.slice(3, 5)])

  modelOperatorChecklist<VisualTokens>(
    {
      name: 'crossAttend',
      graph: 'xattn_kv',
      operator: (model) => crossAttend({ model }),
      batches: tokens,
      rows: (batch) => batch.rows,
      outputs: () => ({ kind: 'cross-memory', count: 1 }),
    },
    models,
  )

  it('clips of different lengths: PyTorch\'s memory for a 2-frame clip batched with an image (padded to 2 frames)', async () => {
    const model = models.open()
    // the reference input is already packed [B=2, F=2, L, Q, D], the image's second frame zeros: unpack it
    const packed = referenceTensor('xattn_kv', 'visual_tokens')
    const per = dims.n_taps * dims.n_query * dims.d_visual
    const flat = new Float32Array(3 * per)
    flat.set((packed.data as Float32Array).subarray(0, 3 * per))
    const batch: VisualTokens = { kind: 'visual-tokens', rows: batchRows([2, 1]), visual_tokens: { dtype: 'float32', dims: [3, dims.n_taps, dims.n_query, dims.d_visual], data: flat }, refined: true }
    const [memory] = (await collect(of(batch).pipe(crossAttend({ model })))) as CrossMemory[]
    expect(memory.rows).toEqual(batch.rows)
    const m = 2 * dims.n_query
    expect(memory.xattn_k.dims).toEqual([2, dims.n_layer, dims.n_head, m, dims.head_dim])
    expect(memory.xattn_mask.dims).toEqual([2, m])
    for (const name of ['xattn_k', 'xattn_v', 'xattn_mask'] as const) {
      expect(maxAbsDiff(memory[name].data as Float32Array, referenceTensor('xattn_kv', name).data as Float32Array), name).toBeLessThanOrEqual(TOLERANCE)
    }
    const mask = Array.from(memory.xattn_mask.data as Float32Array)
    expect(mask.slice(0, m).every((v) => v === 0)).toBe(true)
    expect(mask.slice(m, m + dims.n_query).every((v) => v === 0)).toBe(true)
    expect(mask.slice(m + dims.n_query).every((v) => v === -1e9)).toBe(true)
  })

  it('gives a short clip the same memory alone and padded beside a longer clip (padding frames masked)', async () => {
    const model = models.open()
    const [short, long] = [clip(images, 2, 'short'), clip(images.slice(2), 4, 'long')]
    const [together, alone] = await visualTokens(model, [[short, long], [short]])
    const [both, single] = (await collect(from([together, alone]).pipe(crossAttend({ model })))) as CrossMemory[]
    const [, nl, h, m, dh] = both.xattn_k.dims
    expect([m, single.xattn_k.dims[3]]).toEqual([4 * dims.n_query, 2 * dims.n_query])
    // the short clip's first 2·Q memory positions, per layer and head
    const valid = (memory: CrossMemory, width: number) => {
      const out: number[] = []
      const k = memory.xattn_k.data as Float32Array
      for (let x = 0; x < nl * h; x++) out.push(...k.subarray(x * width * dh, (x * width + 2 * dims.n_query) * dh))
      return out
    }
    expect(maxAbsDiff(valid(both, m), valid(single, 2 * dims.n_query))).toBeLessThan(1e-5)
    const mask = Array.from((both.xattn_mask.data as Float32Array).subarray(0, m), (v) => v + 0) // -0 → 0
    expect(mask).toEqual([...new Array<number>(2 * dims.n_query).fill(0), ...new Array<number>(2 * dims.n_query).fill(-1e9)])
  })

  it('leaves the input record intact (packing writes a new array)', async () => {
    const model = models.open()
    const [batch] = await tokens(models.open())
    const before = Float32Array.from(batch.visual_tokens.data as Float32Array)
    await collect(of(batch).pipe(crossAttend({ model })))
    expect(Array.from(batch.visual_tokens.data as Float32Array)).toEqual(Array.from(before))
  })

  it('many: one CrossMemory per batch, in input order, M = Q for images', async () => {
    const model = models.open()
    const out = (await collect(from(await tokens(models.open())).pipe(crossAttend({ model })))) as CrossMemory[]
    expect(out.map((r) => [ids(r.rows), r.xattn_k.dims[0], r.xattn_mask.dims[1]])).toEqual([
      [ids(images.slice(0, 3)), 3, dims.n_query],
      [ids(images.slice(3, 5)), 2, dims.n_query],
    ])
  })
})
