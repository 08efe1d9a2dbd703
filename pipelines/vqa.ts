import { z } from 'zod'

import { pipelineConfig, type PipelineDefinition } from './definition.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import type { GeneratedText } from '../src/records.js'
import {
  batchingShape,
  decodeLimitsShape,
  generationDefaults,
  generationFlags,
  generationShape,
  modelDefaults,
  modelEngineShape,
  modelFlags,
  modelIdentity,
  textStages,
} from './model-chain.js'

const vqaConfig = pipelineConfig(
  {
    ...decodeLimitsShape,
    ...generationShape,
    /** Input column holding each row's question (used when `questions` is empty). */
    questionColumn: z.string().min(1),
    /** Fixed questions asked of every image (one vision pass serves them all). */
    questions: z.array(z.string().min(1)),
  },
  { ...modelEngineShape, ...batchingShape },
)

export const vqaConfigSchema = vqaConfig.schema

export type VqaConfig = z.infer<typeof vqaConfigSchema>

export const vqaDefaults: VqaConfig = Object.freeze({ ...modelDefaults(), ...generationDefaults, maxNewTokens: 8, questionColumn: 'question', questions: [] })

/**
 * `vqa`: answers a question about each image: the row's question column (default `question`, kept in the
 * output), or fixed `--question`s asked of every image, whose memory is computed once and shared by all
 * of them. A row without a question becomes a `missing-question` error row.
 * Output: `answer`; with several fixed questions, `questions` and `answers` (JSON lists, aligned).
 */
export const vqaPipeline: PipelineDefinition<VqaConfig, GeneratedText> = {
  name: 'vqa',
  summary: 'answer a question about every image (a question column, or fixed --question texts)',
  defaults: vqaDefaults,
  schema: vqaConfigSchema,
  outputKeys: vqaConfig.outputKeys,
  flags: [
    ...modelFlags,
    ...generationFlags,
    { flags: '--question-column <name>', description: 'input column with the question', key: 'questionColumn' },
    { flags: '--question <text>', description: 'ask this of every image (repeat for several; overrides the column)', key: 'questions', repeatable: true },
  ],
  read: (config) => ({ requireImage: true, ...(config.questions.length === 0 ? { keep: [config.questionColumn] } : {}) }),
  identity: modelIdentity,
  stages: (config, context) => {
    const fixed = config.questions
    return textStages(config, context, fixed.length > 0 ? () => fixed : (row) => {
      const value = row.kept[config.questionColumn]
      return typeof value === 'string' ? value : null
    })
  },
  columns: (config): OutputColumn<GeneratedText>[] =>
    config.questions.length > 1
      ? [
          { name: 'questions', type: 'JSON', value: (r) => r.generations.map((g) => g.prompt) },
          { name: 'answers', type: 'JSON', value: (r) => r.generations.map((g) => g.text) },
        ]
      : config.questions.length === 1
        ? [
            { name: 'question', type: 'STRING', value: (r) => r.generations[0].prompt },
            { name: 'answer', type: 'STRING', value: (r) => r.generations[0].text },
          ]
        : [{ name: 'answer', type: 'STRING', value: (r) => r.generations[0].text }],
}
