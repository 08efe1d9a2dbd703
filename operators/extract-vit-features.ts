import type { OperatorFunction } from 'rxjs'

import { admitImages } from '../src/model/batch.js'
import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { packPixels } from '../src/tensor/pixels.js'
import { batchRow, isDecodedImage, type DecodedImage, type ErrorRecord, type VitFeatures } from '../src/records.js'
import type { Feeds } from '../src/tensor/tensors.js'
import { modelStage, type ModelStageOptions, type StagePlan } from './internal/model-stage.js'
import { splitBatches } from './internal/split-batches.js'

export interface ExtractVitFeaturesOptions extends ModelStageOptions {
  /** The model (shared by the model operators of a pipeline). */
  model: VisionLanguageModel
  /**
   * A clip with more frames than the model's `max_frames`: `sample` keeps `max_frames` evenly spaced frames
   * (first and last included); `error` makes it a `too-many-frames` error row. Default `sample`.
   */
  tooManyFrames?: 'sample' | 'error'
}

const isImageBatch = (record: unknown): record is readonly DecodedImage[] => Array.isArray(record)

/**
 * Runs the vision tower (`vit.onnx`) on batches of decoded images and clips: their uint8 HWC pixels are
 * normalised into one float32 `pixel_values [N, 3, H, W]` (clips' frames flattened into N) → `taps
 * [N, L, P, Dv]`, the outputs of the tapped ViT blocks (the hierarchical features). The pixels cross to the
 * inference thread as uint8 (4× fewer bytes than float32) and are normalised there.
 *
 * In → out: a batch from `batchRecords` (or a single `DecodedImage`, as a batch of one) → one
 * `VitFeatures`; the batch's other members (error rows, shard notices) pass on first, untouched.
 * Clips longer than the model's `max_frames` keep that many evenly spaced frames (or, with
 * `tooManyFrames: 'error'`, become `too-many-frames` error rows). Chains with the model operators after it
 * (`chainModelStages`): the taps then stay in the inference thread.
 * Errors: a row decoded at the wrong size becomes an error row; a failing run turns the batch's rows into
 * error rows (`stage-failed`).
 *
 * @example
 * decoded$.pipe(batchRecords({ maxSize: 32 }), extractVitFeatures({ model }))
 */
export function extractVitFeatures<T extends { kind: string }>(
  options: ExtractVitFeaturesOptions,
): OperatorFunction<T | readonly T[], Exclude<T, DecodedImage> | VitFeatures | ErrorRecord> {
  const { model } = options
  const name = 'extractVitFeatures'
  return modelStage(
    {
      name,
      model,
      accepts: isImageBatch,
      rows: (images: readonly DecodedImage[]) => images,
      outputs: ['taps'],
      start: (images: readonly DecodedImage[]): { plan: StagePlan<VitFeatures>; inputs: Feeds } => {
        const { dims } = model.manifest
        const { admitted, refused } = admitImages(images, { imageSize: dims.image_size, maxFrames: dims.max_frames, tooManyFrames: options.tooManyFrames ?? 'sample', stage: name })
        if (admitted.length === 0) return { plan: { refused, rows: [], build: () => [] }, inputs: {} }
        // The frames are packed into one new uint8 tensor, which is transferred to the inference thread.
        const { pixels, norms } = packPixels(admitted)
        const rows = admitted.map(batchRow)
        const build = (_: unknown, tensors: Feeds): VitFeatures[] => [{ kind: 'vit-features', rows, taps: tensors.taps }]
        return { plan: { step: { kind: 'vit', stage: name, graph: model.graph('vit'), norms }, refused, rows, build }, inputs: { pixels } }
      },
      count: (outcome, metrics) => metrics.add('compute_ms', outcome.ms),
    },
    options,
    splitBatches<T, DecodedImage>(isDecodedImage),
  )
}
