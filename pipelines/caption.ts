import type { z } from 'zod'

import { pipelineConfig, type PipelineDefinition } from './definition.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import type { Caption } from '../src/records.js'
import {
  batchingShape,
  checkModel,
  confidenceColumns,
  decodeLimitsShape,
  generationDefaults,
  generationFlags,
  generationShape,
  modelDefaults,
  modelEngineShape,
  modelFlags,
  modelNotices,
  textIdentity,
  textStages,
} from './model-chain.js'

const captionConfig = pipelineConfig({ ...decodeLimitsShape, ...generationShape }, { ...modelEngineShape, ...batchingShape })

export const captionConfigSchema = captionConfig.schema

export type CaptionConfig = z.infer<typeof captionConfigSchema>

export const captionDefaults: CaptionConfig = Object.freeze({ ...modelDefaults(), ...generationDefaults })

/** `caption`, then how it ended and how sure the model was (`finish_reason`, `mean_logprob`, `min_logprob`). */
const captionColumns = (): OutputColumn<Caption>[] => [{ name: 'caption', type: 'STRING', value: (r) => r.generations[0].text }, ...confidenceColumns()]

function captionDefinition(name: string, summary: string): PipelineDefinition<CaptionConfig, Caption> {
  return {
    name,
    summary,
    defaults: captionDefaults,
    schema: captionConfigSchema,
    outputKeys: captionConfig.outputKeys,
    flags: [...modelFlags, ...generationFlags],
    read: () => ({ requireImage: true }),
    identity: (config) => textIdentity(config, captionColumns()),
    check: (config) => checkModel(config),
    notices: modelNotices,
    stages: (config, context) => textStages(config, context),
    columns: captionColumns,
  }
}

/**
 * `caption`: one caption per image (or clip) with the model (default: the bundled evlm-tiny): decode →
 * batch → ViT taps → resampler → experts → cross-attention memory → greedy (or beam) decoding. Output:
 * `caption`, `finish_reason` (`stop` | `length`), `mean_logprob` and `min_logprob` (the caption's tokens'
 * log-probabilities, the end token included when the model ended it).
 */
export const captionPipeline = captionDefinition('caption', 'caption every image (or clip) with a vision-language model')

/**
 * `video-caption`: the same chain on a frames column (`list<binary>`, one encoded image per frame): the
 * frames of a clip run through the vision stages in one batch and the decoder attends to all of them.
 */
export const videoCaptionPipeline = captionDefinition('video-caption', 'caption every clip of a frames column (list<binary>) with a vision-language model')
