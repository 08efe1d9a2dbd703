import { mergeMap, type OperatorFunction } from 'rxjs'

import type { RunMetrics } from '../src/engine/metrics.js'
import type { Embedding, VisualTokens } from '../src/records.js'

export interface PoolEmbeddingsOptions {
  /** L2-normalise each embedding (cosine similarity = dot product). Default true. */
  normalize?: boolean
  metrics?: RunMetrics
}

/**
 * One embedding per row from its visual tokens (refined by the experts, or not): the mean over the row's
 * frames, taps and queries, `[D]` float32, L2-normalised by default. For retrieval and near-duplicate
 * search in ETL jobs.
 *
 * In → out: `VisualTokens` → one `Embedding` per row (1 → B); everything else passes through. Pure
 * computation on the main thread (microseconds per row); no errors of its own.
 *
 * @example
 * refined$.pipe(poolEmbeddings())
 */
export function poolEmbeddings<T extends { kind: string }>(options: PoolEmbeddingsOptions = {}): OperatorFunction<T, Exclude<T, VisualTokens> | Embedding> {
  const normalize = options.normalize ?? true
  const stage = options.metrics?.stage('poolEmbeddings')
  return mergeMap((record: T): (Exclude<T, VisualTokens> | Embedding)[] => {
    if (record.kind !== 'visual-tokens') return [record as Exclude<T, VisualTokens>]
    const batch = record as unknown as VisualTokens
    const dims = batch.visual_tokens.dims
    const d = dims[dims.length - 1]
    const perFrame = batch.visual_tokens.data.length / d / dims[0]
    const data = batch.visual_tokens.data as Float32Array
    let frame = 0
    stage?.in(batch.rows.length)
    const out = batch.rows.map((row): Embedding => {
      const sum = new Float64Array(d)
      const count = row.frames * perFrame
      const start = frame * perFrame * d
      for (let t = 0; t < count; t++) for (let c = 0; c < d; c++) sum[c] += data[start + t * d + c]
      frame += row.frames
      const embedding = new Float32Array(d)
      let norm = 0
      for (let c = 0; c < d; c++) norm += (sum[c] / count) ** 2
      const scale = normalize && norm > 0 ? 1 / Math.sqrt(norm) : 1
      for (let c = 0; c < d; c++) embedding[c] = (sum[c] / count) * scale
      return { kind: 'embedding', key: row.key, source: row.source, kept: row.kept, id: row.id, embedding }
    })
    if (stage) {
      stage.batches += 1
      stage.out(out.length)
    }
    return out
  })
}
