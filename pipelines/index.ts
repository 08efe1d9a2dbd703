/** The pipeline registry the CLI reads. */
import type { PipelineDefinition } from './definition.js'
import { captionPipeline, videoCaptionPipeline } from './caption.js'
import { embedPipeline } from './embed.js'
import { scanPipeline } from './scan.js'
import { vqaPipeline } from './vqa.js'

export { scanPipeline, scanDefaults, scanConfigSchema, type ScanConfig } from './scan.js'
export { captionPipeline, videoCaptionPipeline, captionDefaults, captionConfigSchema, type CaptionConfig } from './caption.js'
export { vqaPipeline, vqaDefaults, vqaConfigSchema, type VqaConfig } from './vqa.js'
export { embedPipeline, embedDefaults, embedConfigSchema, type EmbedConfig } from './embed.js'
export { visionStages, textStages, openModel, modelDefaults, type ModelConfig, type GenerationConfig } from './model-chain.js'
export { runPipeline, runConfig, EVFLOW_VERSION, type RunOptions, type RunSummary, type ProgressSink, type ProgressState } from './run.js'
export { checkPlan, checkOutputPath, type CheckPlanOptions } from './check-plan.js'
export { confidenceColumns, confidenceListColumns } from './model-chain.js'
export { configHash, flagHelp, outputSettings, pipelineConfig, stableJson, type PipelineDefinition, type PipelineFlag, type StageContext } from './definition.js'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const pipelines: Readonly<Record<string, PipelineDefinition<any, any>>> = Object.freeze({
  scan: scanPipeline,
  caption: captionPipeline,
  'video-caption': videoCaptionPipeline,
  vqa: vqaPipeline,
  embed: embedPipeline,
})
