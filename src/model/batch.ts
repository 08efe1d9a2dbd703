/**
 * Building a model batch from decoded records: which records the vision tower can take (`admitImages`:
 * the model's image size, at most `max_frames` frames), and one contiguous float32
 * `pixel_values [N, 3, H, W]` tensor normalised straight from each record's uint8 HWC pixels
 * (`stackPixelValues`: no per-record float copy). Clips contribute one row per frame, so the vision graphs
 * see frames flattened into the batch, as the model package expects.
 */
import { ShapeMismatchError } from '../errors.js'
import { writePixelValues } from '../image/decode.js'
import { toErrorRecord, type DecodedImage, type ErrorRecord } from '../records.js'
import { sampleFrames } from '../tensor/frames.js'
import { float32, type TensorData } from '../tensor/tensors.js'

export interface PixelBatch {
  /** `[N, 3, H, W]`, N = the records' frames summed. */
  readonly pixel_values: TensorData
  /** Frames of each record, in order (1 for an image). */
  readonly frames: readonly number[]
}

export function stackPixelValues(records: readonly DecodedImage[]): PixelBatch {
  if (records.length === 0) throw new ShapeMismatchError('pixel_values', ['N>0', 3, 'H', 'W'], [0])
  const { width, height } = records[0]
  const plane = 3 * width * height
  const total = records.reduce((n, r) => n + r.frames, 0)
  const out = new Float32Array(total * plane)
  let offset = 0
  for (const r of records) {
    if (r.width !== width || r.height !== height) throw new ShapeMismatchError('pixel_values', [3, height, width], [3, r.height, r.width])
    writePixelValues(r.pixels, r.width, r.height, r.frames, r.mean, r.std, out, offset)
    offset += r.frames * plane
  }
  return { pixel_values: float32([total, 3, height, width], out), frames: records.map((r) => r.frames) }
}

export interface AdmitImagesOptions {
  /** The model's `dims.image_size`: records decoded at another size are refused (`stage-failed`). */
  readonly imageSize: number
  /** The model's `dims.max_frames`. */
  readonly maxFrames: number
  /** A longer clip: `sample` keeps `maxFrames` evenly spaced frames (first and last included); `error` refuses it (`too-many-frames`). */
  readonly tooManyFrames: 'sample' | 'error'
  /** The operator named in error rows. */
  readonly stage: string
}

/**
 * The records the vision tower can take, in order (clips longer than `maxFrames` sampled down to it), and
 * error rows for the others. Sampling needs first and last frames, so with `maxFrames` < 2 a longer clip
 * is always refused.
 */
export function admitImages(records: readonly DecodedImage[], options: AdmitImagesOptions): { admitted: DecodedImage[]; refused: ErrorRecord[] } {
  const { imageSize, maxFrames, stage } = options
  const admitted: DecodedImage[] = []
  const refused: ErrorRecord[] = []
  for (const image of records) {
    if (image.width !== imageSize || image.height !== imageSize) {
      refused.push(toErrorRecord(image, stage, 'stage-failed', `decoded at ${image.width}x${image.height}; the model takes ${imageSize}x${imageSize} (decodeImages({ size: ${imageSize} }))`))
    } else if (image.frames > maxFrames && (options.tooManyFrames === 'error' || maxFrames < 2)) {
      refused.push(toErrorRecord(image, stage, 'too-many-frames', `a clip of ${image.frames} frames; the model takes at most ${maxFrames}`))
    } else if (image.frames > maxFrames) {
      admitted.push({ ...image, frames: maxFrames, pixels: sampleFrames(image.pixels, image.frames, image.width * image.height * 3, maxFrames) })
    } else {
      admitted.push(image)
    }
  }
  return { admitted, refused }
}
