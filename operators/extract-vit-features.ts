import type { OperatorFunction } from 'rxjs'

import { stackPixelValues } from '../src/model/batch.js'
import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { batchRow, toErrorRecord, type DecodedImage, type ErrorRecord, type VitFeatures } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface ExtractVitFeaturesOptions extends ModelStageOptions {
  /** The model (shared by the model operators of a pipeline). */
  model: VisionLanguageModel
  /**
   * A clip with more frames than the model's `max_frames`: `sample` keeps `max_frames` evenly spaced frames
   * (first and last included); `error` makes it a `too-many-frames` error row. Default `sample`.
   */
  tooManyFrames?: 'sample' | 'error'
}

/** `image` with `keep` evenly spaced frames (first and last included). */
function sampleFrames(image: DecodedImage, keep: number): DecodedImage {
  const plane = image.width * image.height * 3
  const pixels = new Uint8Array(keep * plane)
  for (let i = 0; i < keep; i++) {
    const from = Math.round((i * (image.frames - 1)) / (keep - 1))
    pixels.set(image.pixels.subarray(from * plane, (from + 1) * plane), i * plane)
  }
  return { ...image, frames: keep, pixels }
}

type Input = readonly { kind: string }[] | DecodedImage

const isInput = (record: { kind?: string } | readonly unknown[]): record is Input =>
  Array.isArray(record) || (record as { kind?: string }).kind === 'decoded-image'

/**
 * Runs the vision tower (`vit.onnx`) on batches of decoded images and clips: `pixel_values [N, 3, H, W]`
 * (clips' frames flattened into N) → `taps [N, L, P, Dv]`, the outputs of the tapped ViT blocks (the
 * hierarchical features).
 *
 * In → out: a batch from `batchRecords` (or a single `DecodedImage`, as a batch of one) → one
 * `VitFeatures`; the batch's other members (error rows, shard notices) pass on first, untouched.
 * Clips longer than the model's `max_frames` keep that many evenly spaced frames (or, with
 * `tooManyFrames: 'error'`, become `too-many-frames` error rows).
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
  const stage = 'extractVitFeatures'
  const members = (input: Input): readonly { kind: string }[] => (Array.isArray(input) ? input : [input as DecodedImage])
  return modelStage<Input>(
    stage,
    model,
    (record) => isInput(record as Input),
    (input) => members(input).filter((r): r is DecodedImage => r.kind === 'decoded-image'),
    async (input, metrics) => {
      const { dims } = model.manifest
      const out: unknown[] = []
      const images: DecodedImage[] = []
      for (const member of members(input)) {
        if (member.kind !== 'decoded-image') {
          out.push(member)
          continue
        }
        const image = member as DecodedImage
        if (image.width !== dims.image_size || image.height !== dims.image_size) {
          out.push(toErrorRecord(image, stage, 'stage-failed', `decoded at ${image.width}x${image.height}; the model takes ${dims.image_size}x${dims.image_size} (decodeImages({ size: ${dims.image_size} }))`))
        } else if (image.frames > dims.max_frames && (options.tooManyFrames === 'error' || dims.max_frames < 2)) {
          out.push(toErrorRecord(image, stage, 'too-many-frames', `a clip of ${image.frames} frames; the model takes at most ${dims.max_frames}`))
        } else if (image.frames > dims.max_frames) {
          images.push(sampleFrames(image, dims.max_frames))
          continue
        } else {
          images.push(image)
          continue
        }
        if (metrics) metrics.errors += 1
      }
      if (images.length > 0) {
        const { pixel_values } = stackPixelValues(images)
        const { outputs, ms } = await model.pool().run(model.graph('vit'), { pixel_values })
        metrics?.add('compute_ms', ms)
        const features: VitFeatures = { kind: 'vit-features', rows: images.map(batchRow), taps: outputs.taps }
        out.push(features)
      }
      return out
    },
    options,
  ) as OperatorFunction<T | readonly T[], Exclude<T, DecodedImage> | VitFeatures | ErrorRecord>
}
