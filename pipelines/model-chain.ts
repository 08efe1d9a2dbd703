/**
 * What the model pipelines (`caption`, `video-caption`, `vqa`, `embed`) share: the config of the model and
 * its runtime, the CLI flags for it, and the chain decode → batch → ViT → resampler → experts.
 */
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join } from 'node:path'
import { pipe, type OperatorFunction } from 'rxjs'
import { z } from 'zod'

import { batchRecords } from '../operators/batch-records.js'
import { crossAttend } from '../operators/cross-attend.js'
import { decodeText, type DecodeTextOptions } from '../operators/decode-text.js'
import { DEFAULT_MAX_PIXELS_IN_FLIGHT, decodeImages } from '../operators/decode-images.js'
import { extractVitFeatures } from '../operators/extract-vit-features.js'
import { resampleTokens } from '../operators/resample-tokens.js'
import { routeToExperts } from '../operators/route-to-experts.js'
import type { SourceRecord, StageContext, PipelineFlag } from './definition.js'
import { ModelManifestError } from '../src/errors.js'
import { DEFAULT_IMAGE_DECODE, type ResizeMode } from '../src/image/decode.js'
import { bundledModelDir, modelFingerprint, VisionLanguageModel } from '../src/model/vision-language-model.js'
import type { CrossMemory, DecodedImage, ErrorRecord, GeneratedText, ShardNotice, VisualTokens, VitFeatures } from '../src/records.js'

export const modelConfigShape = {
  /** Model package folder (manifest.json, ONNX graphs, tokenizer). */
  model: z.string().min(1),
  /** Images (or clips) per model batch. */
  batchSize: z.number().int().min(1).max(4096),
  /** Longest a partial batch waits for more rows, in ms. */
  maxWaitMs: z.number().min(0).max(60_000),
  /** Inference worker threads. */
  workers: z.number().int().min(1).max(256),
  /** ONNX Runtime intra-op threads per session. */
  threads: z.number().int().min(1).max(256),
  /** Execution provider. */
  provider: z.enum(['cpu', 'webgpu', 'cuda']),
  /** Fail instead of falling back to CPU when the provider cannot start. */
  strictProvider: z.boolean(),
  /** Images decoded at once. */
  concurrency: z.number().int().min(1).max(256),
  /** Largest accepted `width × height`. */
  maxPixels: z.number().int().min(1),
  /** Largest accepted encoded size in bytes. */
  maxBytes: z.number().int().min(1),
  /** Most source pixels being decoded at once. */
  maxPixelsInFlight: z.number().int().min(1),
  /** Longest one image may take to decode, in ms (0: no limit). */
  decodeTimeoutMs: z.number().int().min(0),
  /** `auto` (small baseline JPEGs and plain PNGs take the fast decoder) or `sharp` (sharp for every image). */
  decoder: z.enum(['auto', 'sharp']),
}

export type ModelConfig = z.infer<z.ZodObject<typeof modelConfigShape>>

export function modelDefaults(): ModelConfig {
  return {
    model: bundledModelDir(),
    batchSize: 32,
    // The model is the bottleneck: waiting for full batches costs nothing, and partial batches measured
    // 25% slower (batch 8 vs 32, docs/benchmarks.md). The last batch of a run is flushed at once.
    maxWaitMs: 250,
    workers: availableParallelism(),
    threads: 1,
    provider: 'cpu',
    strictProvider: false,
    concurrency: 2 * availableParallelism(),
    maxPixels: 64_000_000,
    maxBytes: 64 * 1024 * 1024,
    maxPixelsInFlight: DEFAULT_MAX_PIXELS_IN_FLIGHT,
    decodeTimeoutMs: DEFAULT_IMAGE_DECODE.timeoutMs,
    decoder: DEFAULT_IMAGE_DECODE.decoder,
  }
}

/** Config keys that change speed, not output. The model's path is one: its content is in `identity`. */
export const MODEL_PERFORMANCE_KEYS = ['model', 'batchSize', 'maxWaitMs', 'workers', 'threads', 'provider', 'strictProvider', 'concurrency', 'maxPixelsInFlight', 'decodeTimeoutMs', 'slots', 'continuous'] as const

export const int = (text: string): number => Number.parseInt(text, 10)

export const modelFlags: readonly PipelineFlag[] = [
  { flags: '--model <dir>', description: 'model package folder (default: the bundled evlm-tiny)', key: 'model' },
  { flags: '--batch-size <n>', description: 'images per model batch (default 32)', key: 'batchSize', parse: int },
  { flags: '--workers <n>', description: 'inference worker threads (default: the number of cores)', key: 'workers', parse: int },
  { flags: '--threads <n>', description: 'ONNX Runtime threads per worker (default 1)', key: 'threads', parse: int },
  { flags: '--provider <name>', description: 'execution provider: cpu, webgpu or cuda (default cpu)', key: 'provider' },
  { flags: '--strict-provider', description: 'fail instead of falling back to cpu when the provider cannot start', key: 'strictProvider' },
  { flags: '--concurrency <n>', description: 'images decoded at once (default: twice the cores)', key: 'concurrency', parse: int },
  { flags: '--max-pixels <n>', description: 'reject images with more pixels (default 64000000)', key: 'maxPixels', parse: int },
  { flags: '--max-bytes <n>', description: 'reject images larger than this (default 64 MiB)', key: 'maxBytes', parse: int },
  { flags: '--max-pixels-in-flight <n>', description: 'most source pixels decoded at once (default 100000000)', key: 'maxPixelsInFlight', parse: int },
  { flags: '--decode-timeout-ms <ms>', description: 'longest one image may take to decode; 0: no limit (default 10000)', key: 'decodeTimeoutMs', parse: int },
  { flags: '--decoder <name>', description: 'auto (small JPEGs and PNGs take the fast decoder) or sharp (default auto)', key: 'decoder' },
]

export const generationShape = {
  /** Most generated tokens per text. */
  maxNewTokens: z.number().int().min(1).max(4096),
  /** 1: greedy; more: beam search. */
  beams: z.number().int().min(1).max(64),
  /** Sequences decoded at once per worker. */
  slots: z.number().int().min(1).max(4096),
  /** Continuous batching. */
  continuous: z.boolean(),
}

export const generationDefaults = { maxNewTokens: 32, beams: 1, slots: 32, continuous: true }

export const generationFlags: readonly PipelineFlag[] = [
  { flags: '--max-new-tokens <n>', description: 'most generated tokens per text (default 32)', key: 'maxNewTokens', parse: int },
  { flags: '--beams <n>', description: 'beam search with n beams; 1 = greedy (default 1)', key: 'beams', parse: int },
  { flags: '--slots <n>', description: 'sequences decoded at once per worker (default 32)', key: 'slots', parse: int },
  { flags: '--no-continuous', description: 'static batches instead of continuous batching', key: 'continuous' },
]

interface Preprocessing {
  size: number
  resize: ResizeMode
  mean: [number, number, number]
  std: [number, number, number]
}

/** The model's preprocessing, read from its manifest (fully validated later, when the model loads). */
function preprocessing(dir: string): Preprocessing {
  let manifest: { preprocessing?: Preprocessing }
  try {
    manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as typeof manifest
  } catch (cause) {
    throw new ModelManifestError('dir', `cannot read ${join(dir, 'manifest.json')} (pass --model DIR, a model package folder)`, { cause })
  }
  if (!manifest.preprocessing) throw new ModelManifestError('preprocessing', 'missing')
  return manifest.preprocessing
}

export function modelIdentity(config: ModelConfig): Record<string, unknown> {
  return { model: modelFingerprint(config.model) }
}

export function openModel(config: ModelConfig): VisionLanguageModel {
  return new VisionLanguageModel(config.model, {
    workers: config.workers,
    threads: config.threads,
    provider: config.provider,
    strictProvider: config.strictProvider,
  })
}

/** decode → batch → ViT features → resampled tokens → experts: refined `VisualTokens` batches. */
export function visionStages(
  config: ModelConfig,
  model: VisionLanguageModel,
  context: StageContext,
): OperatorFunction<SourceRecord, VisualTokens | ErrorRecord | ShardNotice> {
  const pre = preprocessing(config.model)
  const { metrics } = context
  return pipe(
    decodeImages({
      size: pre.size,
      resize: pre.resize,
      mean: pre.mean,
      std: pre.std,
      maxPixels: config.maxPixels,
      maxBytes: config.maxBytes,
      maxPixelsInFlight: config.maxPixelsInFlight,
      timeoutMs: config.decodeTimeoutMs,
      decoder: config.decoder,
      concurrency: config.concurrency,
      metrics,
    }),
    batchRecords({ maxSize: config.batchSize, maxWaitMs: config.maxWaitMs, metrics }),
    extractVitFeatures<DecodedImage | ErrorRecord | ShardNotice>({ model, metrics }),
    resampleTokens<VitFeatures | ErrorRecord | ShardNotice>({ model, metrics }),
    routeToExperts<VisualTokens | ErrorRecord | ShardNotice>({ model, metrics }),
  ) as OperatorFunction<SourceRecord, VisualTokens | ErrorRecord | ShardNotice>
}

/** The whole text path: `visionStages` → cross-attention memory → generated text (captions, or answers to `questions`). */
export function textStages(
  config: ModelConfig & z.infer<z.ZodObject<typeof generationShape>>,
  context: StageContext,
  questions?: DecodeTextOptions['questions'],
): OperatorFunction<SourceRecord, GeneratedText | ErrorRecord | ShardNotice> {
  const model = openModel(config)
  const { metrics } = context
  return pipe(
    visionStages(config, model, context),
    crossAttend<VisualTokens | ErrorRecord | ShardNotice>({ model, metrics }),
    decodeText<CrossMemory | ErrorRecord | ShardNotice>({
      model,
      metrics,
      ...(questions ? { questions } : {}),
      maxNewTokens: config.maxNewTokens,
      beams: config.beams,
      slots: config.slots,
      continuous: config.continuous,
    }),
  )
}
