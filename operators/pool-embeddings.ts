import type { OperatorFunction } from 'rxjs'

import type { RunMetrics } from '../src/engine/metrics.js'
import { isVisualTokens, type Embedding, type VisualTokens } from '../src/records.js'
import { meanPoolRows } from '../src/tensor/pool.js'
import { flatMapRecords } from './internal/map-records.js'

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
  return flatMapRecords(isVisualTokens, (batch: VisualTokens): Embedding[] => {
    stage?.in(batch.rows.length)
    const vectors = meanPoolRows(batch.visual_tokens, batch.rows.map((row) => row.frames), normalize)
    const out = batch.rows.map((row, i): Embedding => ({ kind: 'embedding', key: row.key, source: row.source, kept: row.kept, id: row.id, embedding: vectors[i] }))
    if (stage) {
      stage.batches += 1
      stage.out(out.length)
    }
    return out
  })
}
