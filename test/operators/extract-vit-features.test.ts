/**
 * extractVitFeatures: batches of decoded images and clips → one VitFeatures per batch (`taps [N, L, P, Dv]`,
 * clips' frames flattened into N), the batch's other members passed on first; rows the model cannot take
 * become error rows; clips longer than `max_frames` are sampled down (or refused).
 */
import { from, of } from 'rxjs'
import { beforeAll, describe, expect, it } from 'vitest'

import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import type { DecodedImage, ErrorRecord, ShardNotice, VitFeatures } from '../../src/records.js'
import { HAVE_MODEL, WRONG_GRAPH, bystanders, clip, collect, decodedScenes, ids, manifestJson, modelOperatorChecklist, modelsOfFile, noticeWithoutModel } from '../helpers/model.js'

noticeWithoutModel('test/operators/extract-vit-features')

describe.skipIf(!HAVE_MODEL)('extractVitFeatures', () => {
  const models = modelsOfFile()
  let images: DecodedImage[]
  const dims = HAVE_MODEL ? manifestJson().dims : {}
  beforeAll(async () => {
    images = await decodedScenes(5)
  })

  modelOperatorChecklist<readonly DecodedImage[]>(
    {
      name: 'extractVitFeatures',
      graph: 'vit',
      operator: (model) => extractVitFeatures<DecodedImage | ErrorRecord | ShardNotice>({ model }),
      batches: async () => [images.slice(0, 3), images.slice(3, 5)],
      rows: (batch) => batch,
      outputs: () => ({ kind: 'vit-features', count: 1 }),
    },
    models,
  )

  it('one batch: one VitFeatures with the rows in batch order and taps [N, L, P, Dv]', async () => {
    const model = models.open()
    const metrics = new RunMetrics()
    const [features] = (await collect(of(images.slice(0, 3)).pipe(extractVitFeatures({ model, metrics })))) as VitFeatures[]
    expect(features.kind).toBe('vit-features')
    expect(ids(features.rows)).toEqual(ids(images.slice(0, 3)))
    expect(features.rows.map((r) => [r.kind, r.frames])).toEqual([['batch-row', 1], ['batch-row', 1], ['batch-row', 1]])
    expect(features.taps.dtype).toBe('float32')
    expect(features.taps.dims).toEqual([3, dims.n_taps, dims.n_patches, dims.vit_dim])
    const stage = metrics.snapshot().find((s) => s.stage === 'extractVitFeatures')!
    expect([stage.recordsIn, stage.recordsOut, stage.batches, stage.errors]).toEqual([3, 3, 1, 0])
  })

  it('many: one record per batch, in input order; a single DecodedImage is a batch of one', async () => {
    const model = models.open()
    const out = (await collect(from<(DecodedImage | readonly DecodedImage[])[]>([images.slice(0, 2), images[2], images.slice(3, 5)]).pipe(extractVitFeatures({ model })))) as VitFeatures[]
    expect(out.map((r) => ids(r.rows))).toEqual([ids(images.slice(0, 2)), [images[2].id], ids(images.slice(3, 5))])
    expect(out.map((r) => r.taps.dims[0])).toEqual([2, 1, 2])
  })

  it('gives a row the same taps alone and in a batch (rows are computed independently)', async () => {
    const model = models.open()
    const [batched] = (await collect(of(images.slice(0, 3)).pipe(extractVitFeatures({ model })))) as VitFeatures[]
    const [alone] = (await collect(of([images[1]]).pipe(extractVitFeatures({ model })))) as VitFeatures[]
    const per = alone.taps.data.length
    const row1 = Array.from((batched.taps.data as Float32Array).subarray(per, 2 * per))
    Array.from(alone.taps.data as Float32Array).forEach((v, i) => expect(row1[i]).toBeCloseTo(v, 4))
  })

  it('flattens a clip\'s frames into N, in row order', async () => {
    const model = models.open()
    const three = clip(images, 3)
    const [features] = (await collect(of([images[0], three, images[1]]).pipe(extractVitFeatures({ model })))) as VitFeatures[]
    expect(features.rows.map((r) => r.frames)).toEqual([1, 3, 1])
    expect(features.taps.dims[0]).toBe(5)
  })

  it('passes a batch\'s error rows and shard notices on before its features', async () => {
    const model = models.open()
    const [error, notice] = bystanders()
    const out = await collect(of([error, images[0], notice, images[1]]).pipe(extractVitFeatures<DecodedImage | ErrorRecord | typeof notice>({ model })))
    expect(out.map((r) => r.kind)).toEqual(['error', 'shard-notice', 'vit-features'])
    expect(out[0]).toBe(error)
    expect(out[1]).toBe(notice)
  })

  it('keeps a batch\'s error rows and shard notices when the batch\'s run fails', async () => {
    const model = models.broken('vit', WRONG_GRAPH)
    const [error, notice] = bystanders()
    const out = (await collect(of([error, images[0], notice, images[1]]).pipe(extractVitFeatures<DecodedImage | ErrorRecord | typeof notice>({ model })))) as ErrorRecord[]
    expect(out.map((r) => [r.kind, r.code ?? null, r.id ?? null])).toEqual([
      ['error', 'corrupt', 'broken'],
      ['shard-notice', null, null],
      ['error', 'stage-failed', images[0].id],
      ['error', 'stage-failed', images[1].id],
    ])
  })

  it('refuses a row decoded at another size (stage-failed, naming decodeImages({ size })); the rest of the batch runs', async () => {
    const model = models.open()
    const small: DecodedImage = { ...images[1], width: 32, height: 32, pixels: images[1].pixels.subarray(0, 32 * 32 * 3) }
    const metrics = new RunMetrics()
    const out = await collect(of([images[0], small, images[2]]).pipe(extractVitFeatures({ model, metrics })))
    const [refused, features] = out as [ErrorRecord, VitFeatures]
    expect([refused.kind, refused.code, refused.id]).toEqual(['error', 'stage-failed', images[1].id])
    expect(refused.message).toBe(`decoded at 32x32; the model takes ${dims.image_size}x${dims.image_size} (decodeImages({ size: ${dims.image_size} }))`)
    expect(ids(features.rows)).toEqual([images[0].id, images[2].id])
    expect(metrics.snapshot().find((s) => s.stage === 'extractVitFeatures')!.errors).toBe(1)
  })

  it('samples a clip longer than max_frames down to max_frames frames, first and last kept; or refuses it (tooManyFrames: error)', async () => {
    const model = models.open()
    const long = clip(images, dims.max_frames + 4)
    const [features] = (await collect(of([long]).pipe(extractVitFeatures({ model })))) as VitFeatures[]
    expect(features.rows[0].frames).toBe(dims.max_frames)
    expect(features.taps.dims[0]).toBe(dims.max_frames)
    const [refused] = (await collect(of([long]).pipe(extractVitFeatures({ model, tooManyFrames: 'error' })))) as ErrorRecord[]
    expect([refused.code, refused.message]).toEqual(['too-many-frames', `a clip of ${dims.max_frames + 4} frames; the model takes at most ${dims.max_frames}`])
  })

  it('refuses a bad concurrency before any I/O', () => {
    const model = models.open()
    expect(() => extractVitFeatures({ model, concurrency: 0 })).toThrow('concurrency: must be a positive integer, got 0')
  })
})
