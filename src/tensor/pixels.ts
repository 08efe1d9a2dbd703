/**
 * Pixels into model inputs, as pure functions: decoded uint8 RGB HWC frames are normalised into float32 CHW
 * `pixel_values` (`(v / 255 - mean[c]) / std[c]`), straight into a batch tensor; and a batch's frames are
 * packed into one uint8 tensor, the 4× smaller form in which they cross to an inference thread (which
 * normalises them there, see src/model/steps.ts).
 */
import { ShapeMismatchError } from '../errors.js'
import { tensor, type TensorData } from './tensors.js'

/**
 * Normalises `frames` HWC uint8 RGB images of `width × height` into CHW float32 at `out[offset...]`:
 * `(v / 255 - mean[c]) / std[c]`, one lookup per value. This is where pixels become `pixel_values`: the
 * caller writes straight into a batch tensor, so there is no per-image float copy.
 */
export function writePixelValues(
  hwc: Uint8Array,
  width: number,
  height: number,
  frames: number,
  mean: readonly number[],
  std: readonly number[],
  out: Float32Array,
  offset = 0,
): void {
  const plane = width * height
  if (hwc.length !== frames * plane * 3) throw new RangeError(`expected ${frames * plane * 3} pixel bytes, got ${hwc.length}`)
  if (offset + frames * plane * 3 > out.length) throw new RangeError('pixel_values target too small')
  const table = new Float32Array(3 * 256)
  for (let c = 0; c < 3; c++) for (let v = 0; v < 256; v++) table[c * 256 + v] = (v / 255 - mean[c]) / std[c]
  for (let f = 0; f < frames; f++) {
    const src = f * plane * 3
    const dst = offset + f * plane * 3
    for (let i = 0; i < plane; i++) {
      const s = src + i * 3
      out[dst + i] = table[hwc[s]]
      out[dst + plane + i] = table[256 + hwc[s + 1]]
      out[dst + 2 * plane + i] = table[512 + hwc[s + 2]]
    }
  }
}

/** `pixel_values` of one decoded record: `[F, 3, H, W]` float32 (`[3, H, W]` for an image). */
export function pixelValues(record: {
  readonly pixels: Uint8Array
  readonly width: number
  readonly height: number
  readonly frames: number
  readonly mean: readonly number[]
  readonly std: readonly number[]
}): Float32Array {
  const out = new Float32Array(record.pixels.length)
  writePixelValues(record.pixels, record.width, record.height, record.frames, record.mean, record.std, out)
  return out
}

/** How the frames of one record are normalised: its frame count and per-channel mean and std. */
export interface PixelNorm {
  readonly frames: number
  readonly mean: readonly number[]
  readonly std: readonly number[]
}

/**
 * The uint8 HWC frames of `records` (all `width × height`) packed into one tensor `pixels [N, H, W, 3]`, N =
 * their frames summed, with each record's normalisation. Throws `ShapeMismatchError` on a record of another size.
 */
export function packPixels(records: readonly (PixelNorm & { readonly pixels: Uint8Array; readonly width: number; readonly height: number })[]): { pixels: TensorData; norms: PixelNorm[] } {
  if (records.length === 0) throw new ShapeMismatchError('pixels', ['N>0', 'H', 'W', 3], [0])
  const { width, height } = records[0]
  const frameBytes = width * height * 3
  const total = records.reduce((n, r) => n + r.frames, 0)
  const out = new Uint8Array(total * frameBytes)
  let offset = 0
  for (const r of records) {
    if (r.width !== width || r.height !== height) throw new ShapeMismatchError('pixels', [height, width, 3], [r.height, r.width, 3])
    if (r.pixels.length !== r.frames * frameBytes) throw new ShapeMismatchError('pixels', [r.frames, height, width, 3], [r.pixels.length])
    out.set(r.pixels, offset)
    offset += r.pixels.length
  }
  return { pixels: tensor('uint8', [total, height, width, 3], out), norms: records.map((r) => ({ frames: r.frames, mean: r.mean, std: r.std })) }
}

/** `pixel_values [N, 3, H, W]` float32 from packed `pixels [N, H, W, 3]` uint8 and each record's normalisation. */
export function normalizePixels(pixels: TensorData, norms: readonly PixelNorm[]): TensorData {
  const [n, height, width] = pixels.dims
  const data = pixels.data
  if (!(data instanceof Uint8Array) || pixels.dims.length !== 4 || pixels.dims[3] !== 3) throw new ShapeMismatchError('pixels (uint8)', ['N', 'H', 'W', 3], [...pixels.dims])
  const frames = norms.reduce((sum, r) => sum + r.frames, 0)
  if (frames !== n) throw new ShapeMismatchError('pixels', [frames, height, width, 3], [...pixels.dims])
  const frameBytes = width * height * 3
  const out = new Float32Array(n * frameBytes)
  let frame = 0
  for (const r of norms) {
    writePixelValues(data.subarray(frame * frameBytes, (frame + r.frames) * frameBytes), width, height, r.frames, r.mean, r.std, out, frame * frameBytes)
    frame += r.frames
  }
  return tensor('float32', [n, 3, height, width], out)
}
