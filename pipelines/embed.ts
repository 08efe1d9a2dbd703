import { pipe } from 'rxjs'
import { z } from 'zod'

import { poolEmbeddings } from '../operators/pool-embeddings.js'
import type { PipelineDefinition } from './definition.js'
import type { Embedding, ErrorRecord, ShardNotice, VisualTokens } from '../src/records.js'
import { MODEL_PERFORMANCE_KEYS, modelConfigShape, modelDefaults, modelFlags, modelIdentity, openModel, visionStages } from './model-chain.js'

export const embedConfigSchema = z.strictObject({
  ...modelConfigShape,
  /** L2-normalise the embeddings. */
  normalize: z.boolean(),
})

export type EmbedConfig = z.infer<typeof embedConfigSchema>

export const embedDefaults: EmbedConfig = Object.freeze({ ...modelDefaults(), normalize: true })

/**
 * `embed`: one vector per image (or clip): its visual tokens after the experts, averaged over frames, taps
 * and queries and L2-normalised (`embedding`, list<float>), for retrieval and near-duplicate search.
 * No text decoding.
 */
export const embedPipeline: PipelineDefinition<EmbedConfig, Embedding> = {
  name: 'embed',
  summary: 'write one embedding per image (pooled visual tokens, list<float>) for retrieval and dedup',
  defaults: embedDefaults,
  schema: embedConfigSchema,
  flags: [...modelFlags, { flags: '--no-normalize', description: 'do not L2-normalise the embeddings', key: 'normalize' }],
  performanceKeys: MODEL_PERFORMANCE_KEYS,
  read: () => ({ requireImage: true }),
  identity: modelIdentity,
  stages: (config, context) => {
    const model = openModel(config)
    return pipe(visionStages(config, model, context), poolEmbeddings<VisualTokens | ErrorRecord | ShardNotice>({ normalize: config.normalize, metrics: context.metrics }))
  },
  columns: () => [{ name: 'embedding', type: 'FLOAT_LIST', value: (r) => r.embedding }],
}
