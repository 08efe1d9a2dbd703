/** The pipeline registry the CLI reads. */
import type { PipelineDefinition } from '../src/engine/pipeline.js'
import { scanPipeline } from './scan.js'

export { scanPipeline, scanDefaults, scanConfigSchema, type ScanConfig } from './scan.js'

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const pipelines: Readonly<Record<string, PipelineDefinition<any, any>>> = Object.freeze({
  scan: scanPipeline,
})
