import { z } from 'zod'

import { PipelineConfigError } from '../src/errors.js'
import { pipelineConfig, type PipelineDefinition, type ShardSchema } from './definition.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import type { GeneratedText } from '../src/records.js'
import {
  batchingShape,
  checkModel,
  confidenceColumns,
  confidenceListColumns,
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

/** The result columns: by where the questions come from (see the pipeline's doc). */
function vqaColumns(config: VqaConfig): OutputColumn<GeneratedText>[] {
  if (config.questions.length > 1) {
    return [
      { name: 'questions', type: 'JSON', value: (r) => r.generations.map((g) => g.prompt) },
      { name: 'answers', type: 'JSON', value: (r) => r.generations.map((g) => g.text) },
      ...confidenceListColumns(),
    ]
  }
  const answer: OutputColumn<GeneratedText> = { name: 'answer', type: 'STRING', value: (r) => r.generations[0].text }
  if (config.questions.length === 1) return [{ name: 'question', type: 'STRING', value: (r) => r.generations[0].prompt }, answer, ...confidenceColumns()]
  return [answer, ...confidenceColumns()]
}

/** Planning: the question column in every input (unless fixed questions replace it); the model and the fixed questions' words. */
async function checkVqa(config: VqaConfig, shards: readonly ShardSchema[]): Promise<void> {
  const blank = config.questions.findIndex((q) => q.trim() === '')
  if (blank >= 0) throw new PipelineConfigError(`questions.${blank}`, 'is blank: every row would be a missing-question error row')
  if (config.questions.length === 0) {
    for (const shard of shards) {
      if (shard.columns.some((c) => c.name === config.questionColumn)) continue
      throw new PipelineConfigError(
        'questionColumn',
        `${shard.path} has no question column '${config.questionColumn}' (its columns: ${shard.columns.map((c) => c.name).join(', ') || 'none'}): ` +
          `name it with --question-column, or ask every image the same questions with --question TEXT`,
      )
    }
  }
  await checkModel(config, config.questions)
}

/**
 * `vqa`: answers a question about each image: the row's question column (default `question`, kept in the
 * output), or fixed `--question`s asked of every image, whose memory is computed once and shared by all
 * of them. Every input must have the question column (checked while planning, exit 2); a row whose cell
 * is empty becomes a `missing-question` error row, one whose question has words the model's vocabulary
 * cannot represent a `question-out-of-vocabulary` one (fixed questions with such words stop the run at
 * planning). Output: `answer`, `finish_reason`, `mean_logprob`, `min_logprob`; with one fixed question also
 * `question`; with several, `questions`, `answers`, `finish_reasons`, `mean_logprobs`, `min_logprobs`
 * (JSON lists, aligned).
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
  identity: (config) => textIdentity(config, vqaColumns(config)),
  check: checkVqa,
  notices: modelNotices,
  stages: (config, context) => {
    const fixed = config.questions
    return textStages(config, context, fixed.length > 0 ? () => fixed : (row) => {
      const value = row.kept[config.questionColumn]
      return typeof value === 'string' ? value : null
    })
  },
  columns: vqaColumns,
}
