/** The pipeline registry the CLI reads. */
import type { PipelineDefinition } from '../src/engine/pipeline.js'
import { scanPipeline } from './scan.js'

export { scanPipeline, scanDefaults, scanConfigSchema, type ScanConfig } from './scan.js'
export { runPipeline, runConfig, EVFLOW_VERSION, type RunOptions, type RunSummary, type ProgressSink, type ProgressState } from './run.js'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const pipelines: Readonly<Record<string, PipelineDefinition<any, any>>> = Object.freeze({
  scan: scanPipeline,
})
