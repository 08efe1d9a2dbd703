/**
 * The in-flight byte budget on a model run (counted, not timed): every row in flight is charged what it
 * holds and every model batch reserves the bytes of the tensors its inference-thread task holds, against one
 * budget. A run whose batches' tensors exceed the budget when run side by side stays within it (the batches
 * then run one at a time), gives the same outputs, and no task holds more than it reserved.
 */
import { concatMap, from, lastValueFrom, tap, toArray, type Observable } from 'rxjs'
import { describe, expect, it } from 'vitest'

import { batchRecords } from '../../operators/batch-records.js'
import { crossAttend } from '../../operators/cross-attend.js'
import { decodeText } from '../../operators/decode-text.js'
import { extractVitFeatures } from '../../operators/extract-vit-features.js'
import { chainModelStages } from '../../operators/chain-model-stages.js'
import { resampleTokens } from '../../operators/resample-tokens.js'
import { routeToExperts } from '../../operators/route-to-experts.js'
import { InFlight } from '../../src/engine/in-flight.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import type { DecodedImage, ErrorRecord, GeneratedText, ShardNotice } from '../../src/records.js'
import { HAVE_MODEL, decodedScenes, modelsOfFile, noticeWithoutModel } from '../helpers/model.js'

noticeWithoutModel('test/engine/byte-budget')

const ROWS = 48
const BATCH = 8

describe.skipIf(!HAVE_MODEL)('the in-flight byte budget on a model run', () => {
  const models = modelsOfFile()

  let images: DecodedImage[] | undefined

  /**
   * Captions ROWS decoded scenes with `inFlight` shared by the source (each row acquired before it is emitted,
   * as `readShards` does), the model stages and the end (each row released). The rows are decoded beforehand,
   * so batches are ready faster than the model takes them.
   */
  async function captions(inFlight: InFlight, chained: boolean) {
    images ??= await decodedScenes(ROWS)
    const model = models.open({ inferenceThreads: 2 })
    const metrics = new RunMetrics()
    const options = { model, metrics, inFlight }
    const stages = [extractVitFeatures<DecodedImage | ErrorRecord | ShardNotice>(options), resampleTokens(options), routeToExperts(options), crossAttend(options), decodeText({ ...options, generation: { maxNewTokens: 8 } })] as const
    const read = from(images).pipe(
      concatMap(async (image) => {
        await inFlight.acquire(image.key, image.pixels.byteLength)
        return image
      }),
      batchRecords<DecodedImage | ErrorRecord | ShardNotice>({ maxSize: BATCH, maxWaitMs: 50 }),
    )
    type Out = GeneratedText | ErrorRecord | ShardNotice
    const modelled: Observable<Out> = chained
      ? read.pipe(chainModelStages<(DecodedImage | ErrorRecord | ShardNotice)[], Out>(...stages))
      : (read.pipe(stages[0], stages[1], stages[2], stages[3], stages[4]) as Observable<Out>)
    const out = await lastValueFrom(
      modelled.pipe(
        // the sink: a row leaves the pipeline
        tap((record) => {
          if ('key' in record) inFlight.release(record.key)
        }),
        toArray(),
      ),
    )
    const texts = Object.fromEntries(out.filter((r): r is GeneratedText => r.kind === 'generated-text').map((r) => [r.key.row, r.generations[0].text]))
    return { texts, stages: Object.fromEntries(metrics.snapshot().map((s) => [s.stage, s.extra])) }
  }

  it('keeps a chained run within a budget its batches exceed side by side; same captions; no task holds more than it reserved', async () => {
    const free = new InFlight()
    const unbounded = await captions(free, true)
    expect(Object.keys(unbounded.texts)).toHaveLength(ROWS)
    const reserved = unbounded.stages.extractVitFeatures.task_reserved_bytes
    expect(unbounded.stages.extractVitFeatures.task_peak_bytes).toBeLessThanOrEqual(reserved)
    // with two inference threads, batches ran side by side: more than 1.5 batches' bytes at once
    const budget = Math.floor(1.5 * reserved)
    expect(free.peakReserved).toBeGreaterThan(budget)

    const bounded = new InFlight({ maxBytes: budget })
    const within = await captions(bounded, true)
    expect(within.texts).toEqual(unbounded.texts)
    expect(bounded.peakBytes).toBeLessThanOrEqual(budget)
    expect(bounded.peakReserved).toBeLessThanOrEqual(reserved)
    expect(within.stages.extractVitFeatures.task_peak_bytes).toBeLessThanOrEqual(within.stages.extractVitFeatures.task_reserved_bytes)
    expect(bounded.inFlightBytes).toBe(0)
    expect(bounded.inFlightRecords).toBe(0)
  })

  it('piped operators: each stage reserves its batch and re-charges the rows with the tensors they carry; the budget holds the run below an unbounded one', async () => {
    const free = new InFlight()
    const unbounded = await captions(free, false)
    const perStage = ['extractVitFeatures', 'resampleTokens', 'routeToExperts', 'crossAttend', 'decodeText'].map((s) => unbounded.stages[s].task_reserved_bytes)
    for (const bytes of perStage) expect(bytes).toBeGreaterThan(0)
    const budget = Math.max(...perStage)
    const bounded = new InFlight({ maxBytes: budget })
    const within = await captions(bounded, false)
    expect(within.texts).toEqual(unbounded.texts)
    // piped, rows admitted before the budget filled still grow as their tensors move on (no bound of
    // budget + one batch per stage, which the chained run has): the budget slows the reader and the stages
    expect(free.peakBytes).toBeGreaterThan(bounded.peakBytes)
    expect(free.peakReserved).toBeGreaterThan(bounded.peakReserved)
    expect(bounded.inFlightBytes).toBe(0)
  })
})
