/**
 * Building a model batch from decoded records: one contiguous `pixel_values [N, 3, H, W]` float32 tensor,
 * normalised straight from each record's uint8 pixels (no per-record float copy). Clips contribute one
 * row per frame, so the vision graphs see frames flattened into the batch, as the model package expects.
 */
import { ShapeMismatchError } from '../errors.js'
import { writePixelValues } from '../image/decode.js'
import type { DecodedImage } from '../records.js'
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
