import { pipe } from 'rxjs'
import { z } from 'zod'

import { poolEmbeddings } from '../operators/pool-embeddings.js'
import { pipelineConfig, type PipelineDefinition } from './definition.js'
import type { Embedding } from '../src/records.js'
import { checkModel, decodeLimitsShape, modelDefaults, modelEngineShape, modelFlags, modelIdentity, modelNotices, openModel, visionStages } from './model-chain.js'

const embedConfig = pipelineConfig(
  {
    ...decodeLimitsShape,
    /** L2-normalise the embeddings. */
    normalize: z.boolean(),
  },
  modelEngineShape,
)

export const embedConfigSchema = embedConfig.schema

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
  outputKeys: embedConfig.outputKeys,
  flags: [...modelFlags, { flags: '--no-normalize', description: 'do not L2-normalise the embeddings', key: 'normalize' }],
  read: () => ({ requireImage: true }),
  identity: modelIdentity,
  check: (config) => checkModel(config),
  notices: modelNotices,
  stages: (config, context) => {
    const model = openModel(config)
    return pipe(visionStages(config, model, context), poolEmbeddings({ normalize: config.normalize, metrics: context.metrics }))
  },
  columns: () => [{ name: 'embedding', type: 'FLOAT_LIST', value: (r) => r.embedding }],
}
