/**
 * Frames of clips, as pure functions: sampling a clip's uint8 HWC frames down to the model's `max_frames`,
 * and packing a batch's per-frame rows (clips flattened into N) into per-clip rows padded to the longest
 * clip, with the mask of real frames (what `xattn_kv.onnx` takes).
 */
import { ShapeMismatchError } from '../errors.js'

/**
 * The indices of `keep` evenly spaced frames out of `frames` (first and last included when `keep` ≥ 2;
 * `round` of the ideal position). `1 ≤ keep ≤ frames`.
 */
export function evenlySpacedFrames(frames: number, keep: number): number[] {
  if (!Number.isInteger(keep) || !Number.isInteger(frames) || keep < 1 || keep > frames) throw new ShapeMismatchError('frames', [`1..${frames}`], [keep])
  if (keep === 1) return [0]
  return Array.from({ length: keep }, (_, i) => Math.round((i * (frames - 1)) / (keep - 1)))
}

/**
 * `keep` evenly spaced frames of a clip's pixels (`[F, ...frame]`, `frameSize` values per frame, e.g.
 * H·W·3 for uint8 HWC): a new array `[keep, ...frame]`.
 */
export function sampleFrames(pixels: Uint8Array, frames: number, frameSize: number, keep: number): Uint8Array {
  if (pixels.length !== frames * frameSize) throw new ShapeMismatchError('pixels', [frames, frameSize], [pixels.length])
  const out = new Uint8Array(keep * frameSize)
  evenlySpacedFrames(frames, keep).forEach((from, i) => out.set(pixels.subarray(from * frameSize, (from + 1) * frameSize), i * frameSize))
  return out
}

/**
 * Per-frame rows `[N, ...row]` (`per` values each; N = Σ `frames`, the rows of each clip consecutive, in
 * clip order) → per-clip rows `[B, F, ...row]`, F = the most frames of a clip, shorter clips padded with
 * zeros after their frames. Always a new array.
 */
export function packFrames(data: Float32Array, frames: readonly number[], per: number): { data: Float32Array; frames: number } {
  const total = frames.reduce((n, f) => n + f, 0)
  if (data.length !== total * per) throw new ShapeMismatchError('frames', [total, per], [data.length])
  const width = Math.max(...frames)
  const packed = new Float32Array(frames.length * width * per)
  let offset = 0
  frames.forEach((count, b) => {
    packed.set(data.subarray(offset * per, (offset + count) * per), b * width * per)
    offset += count
  })
  return { data: packed, frames: width }
}

/** `frame_mask [B, width]`: 1 for each clip's frames, 0 for the padding after them. */
export function frameMask(frames: readonly number[], width: number): number[] {
  const mask = new Array<number>(frames.length * width).fill(0)
  frames.forEach((count, b) => mask.fill(1, b * width, b * width + count))
  return mask
}
