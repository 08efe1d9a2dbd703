/**
 * Pooling a batch's visual tokens into one embedding per row: a pure function.
 */
import { ShapeMismatchError } from '../errors.js'
import type { TensorData } from '../records.js'

/**
 * The mean of each row's tokens: `tokens [N, ..., D]` float32 with N = Σ `frames` (each row's frames
 * consecutive, in row order), averaged over the row's frames and every middle axis (taps, queries): one
 * `[D]` float32 per row, summed in float64. `normalize`: scaled to L2 norm 1 (a zero mean stays zero).
 */
export function meanPoolRows(tokens: TensorData, frames: readonly number[], normalize: boolean): Float32Array[] {
  const { dims } = tokens
  const d = dims[dims.length - 1]
  const n = dims[0]
  if (frames.reduce((a, f) => a + f, 0) !== n) throw new ShapeMismatchError('visual_tokens', [frames.reduce((a, f) => a + f, 0), '...', d], [...dims])
  const data = tokens.data as Float32Array
  const perFrame = data.length / d / n
  let frame = 0
  return frames.map((count) => {
    const sum = new Float64Array(d)
    const vectors = count * perFrame
    const start = frame * perFrame * d
    for (let t = 0; t < vectors; t++) for (let c = 0; c < d; c++) sum[c] += data[start + t * d + c]
    frame += count
    let norm = 0
    for (let c = 0; c < d; c++) norm += (sum[c] / vectors) ** 2
    const scale = normalize && norm > 0 ? 1 / Math.sqrt(norm) : 1
    const embedding = new Float32Array(d)
    for (let c = 0; c < d; c++) embedding[c] = (sum[c] / vectors) * scale
    return embedding
  })
}
