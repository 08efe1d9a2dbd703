/**
 * What the model pipelines (`caption`, `video-caption`, `vqa`, `embed`) share: their config (the settings
 * that decide the output apart from the engine settings), the CLI flags for it, and the chain decode →
 * batch → ViT → resampler → experts (→ cross-attention memory → text).
 */
import { availableParallelism } from 'node:os'
import { pipe, type OperatorFunction } from 'rxjs'
import { z } from 'zod'

import { batchRecords } from '../operators/batch-records.js'
import { crossAttend } from '../operators/cross-attend.js'
import { decodeText, type DecodeTextOptions } from '../operators/decode-text.js'
import { DEFAULT_MAX_PIXELS_IN_FLIGHT, decodeImages } from '../operators/decode-images.js'
import { extractVitFeatures } from '../operators/extract-vit-features.js'
import type { ShardRecord } from '../operators/read-shards.js'
import { resampleTokens } from '../operators/resample-tokens.js'
import { routeToExperts } from '../operators/route-to-experts.js'
import { bytes, int, mebibytes, type PipelineFlag, type StageContext } from './definition.js'
import { PipelineConfigError } from '../src/errors.js'
import { DEFAULT_IMAGE_DECODE } from '../src/image/decode.js'
import { decoderSpecOf, textConfidence } from '../src/model/generate.js'
import { readManifest } from '../src/model/manifest.js'
import { outOfVocabularyMessage, unknownWordsOf } from '../src/model/prompts.js'
import { bundledModelDir, modelFingerprint, VisionLanguageModel } from '../src/model/vision-language-model.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import { chainModelStages } from '../operators/chain-model-stages.js'
import { stepBytes, type ThreadStep } from '../src/model/steps.js'
import type { DecodedImage, ErrorRecord, GeneratedText, Generation, ShardNotice, VisualTokens } from '../src/records.js'

/** Decode limits: they decide which rows become error rows, so they decide the output. */
export const decodeLimitsShape = {
  /** Largest accepted `width × height`. */
  maxPixels: z.number().int().min(1),
  /** Largest accepted encoded size in bytes. */
  maxBytes: z.number().int().min(1),
  /** `auto` (small baseline JPEGs and plain PNGs take the fast decoder) or `sharp` (sharp for every image): the two differ slightly in pixels. */
  decoder: z.enum(['auto', 'sharp']),
}

/** The engine settings of every model pipeline: speed only. */
export const modelEngineShape = {
  /** Model package folder (manifest.json, ONNX graphs, tokenizer). Its content is in `identity`, not its path. */
  model: z.string().min(1),
  /** Images (or clips) per model batch. */
  batchSize: z.number().int().min(1).max(4096),
  /** Longest a partial batch waits for more rows, in ms. */
  maxWaitMs: z.number().min(0).max(60_000),
  /** Inference threads (each with its own ONNX Runtime sessions). Absent: chosen from the model's size (`threadPlan`). */
  inferenceThreads: z.number().int().min(1).max(256).optional(),
  /** ONNX Runtime intra-op threads per session. Absent: chosen from the model's size (`threadPlan`). */
  intraOpThreads: z.number().int().min(1).max(256).optional(),
  /** Execution provider. */
  provider: z.enum(['cpu', 'webgpu', 'cuda']),
  /** Fail instead of falling back to CPU when the provider cannot start. */
  strictProvider: z.boolean(),
  /** Images decoded at once. */
  concurrency: z.number().int().min(1).max(256),
  /** Most source pixels being decoded at once. */
  maxPixelsInFlight: z.number().int().min(1),
  /** Longest one image may take to decode, in ms (0: no limit); an image past it becomes a `timeout` error row. */
  decodeTimeoutMs: z.number().int().min(0),
}

export type ModelConfig = z.infer<z.ZodObject<typeof decodeLimitsShape & typeof modelEngineShape>>

export function modelDefaults(): ModelConfig {
  return {
    maxPixels: 64_000_000,
    maxBytes: 64 * 1024 * 1024,
    decoder: DEFAULT_IMAGE_DECODE.decoder,
    model: bundledModelDir(),
    batchSize: 32,
    // The model is the bottleneck: waiting for full batches costs nothing, and partial batches measured
    // 25% slower (batch 8 vs 32, docs/benchmarks.md). The last batch of a run is flushed at once.
    maxWaitMs: 250,
    provider: 'cpu',
    strictProvider: false,
    concurrency: 2 * availableParallelism(),
    maxPixelsInFlight: DEFAULT_MAX_PIXELS_IN_FLIGHT,
    decodeTimeoutMs: DEFAULT_IMAGE_DECODE.timeoutMs,
  }
}

export const modelFlags: readonly PipelineFlag[] = [
  { flags: '--model <dir>', description: 'model package folder', key: 'model', defaultText: 'the bundled evlm-tiny' },
  { flags: '--batch-size <n>', description: 'images per model batch', key: 'batchSize', parse: int },
  {
    flags: '--inference-threads <n>',
    description: 'inference threads, each with its own ONNX Runtime sessions',
    key: 'inferenceThreads',
    parse: int,
    defaultText: 'the number of cores; 1 for a model over 256 MiB of weights',
  },
  {
    flags: '--intra-op-threads <n>',
    description: 'ONNX Runtime intra-op threads per session',
    key: 'intraOpThreads',
    parse: int,
    defaultText: '1; the cores shared by the inference threads for a model over 256 MiB',
  },
  { flags: '--provider <name>', description: 'execution provider: cpu, webgpu or cuda', key: 'provider' },
  { flags: '--strict-provider', description: 'fail instead of falling back to cpu when the provider cannot start', key: 'strictProvider' },
  { flags: '--concurrency <n>', description: 'images decoded at once', key: 'concurrency', parse: int, defaultText: 'twice the number of cores' },
  { flags: '--max-pixels <n>', description: 'reject images with more pixels', key: 'maxPixels', parse: int },
  { flags: '--max-bytes <bytes>', description: 'reject images larger than this (bytes, or with a unit: 64MiB, 512KiB)', key: 'maxBytes', parse: bytes, formatDefault: mebibytes },
  { flags: '--max-pixels-in-flight <n>', description: 'most source pixels decoded at once', key: 'maxPixelsInFlight', parse: int },
  { flags: '--decode-timeout-ms <ms>', description: 'longest one image may take to decode; 0: no limit', key: 'decodeTimeoutMs', parse: int },
  { flags: '--decoder <name>', description: 'auto (small JPEGs and PNGs take the fast decoder) or sharp', key: 'decoder' },
]

/** What decides the generated text (the pipelines' part of `GenerationParams`). */
export const generationShape = {
  /** Most generated tokens per text. */
  maxNewTokens: z.number().int().min(1).max(4096),
  /** 1: greedy; more: beam search. */
  beams: z.number().int().min(1).max(64),
}

/** How the decoder batches sequences: speed only. */
export const batchingShape = {
  /** Sequences decoded at once per inference thread. */
  slots: z.number().int().min(1).max(4096),
  /** Continuous batching. */
  continuous: z.boolean(),
}

export type GenerationConfig = z.infer<z.ZodObject<typeof generationShape & typeof batchingShape>>

export const generationDefaults: GenerationConfig = { maxNewTokens: 32, beams: 1, slots: 32, continuous: true }

export const generationFlags: readonly PipelineFlag[] = [
  { flags: '--max-new-tokens <n>', description: 'most generated tokens per text', key: 'maxNewTokens', parse: int },
  { flags: '--beams <n>', description: 'beam search with n beams; 1 = greedy', key: 'beams', parse: int },
  { flags: '--slots <n>', description: 'sequences decoded at once per inference thread', key: 'slots', parse: int },
  { flags: '--no-continuous', description: 'static batches instead of continuous batching', key: 'continuous' },
]

/** The model's fingerprint (sha256 of its manifest): what of the model decides the output. */
export function modelIdentity(config: ModelConfig): Record<string, unknown> {
  return { model: modelFingerprint(config.model) }
}

/**
 * The identity of a text pipeline: the model's fingerprint and the result columns it writes (the columns
 * decide the output too: outputs written before `finish_reason` and the log-probabilities existed are redone).
 */
export function textIdentity(config: ModelConfig, columns: readonly OutputColumn<GeneratedText>[]): Record<string, unknown> {
  return { ...modelIdentity(config), columns: columns.map((c) => c.name) }
}

/** One model per config object: the planning checks load it, the stages then use the same loaded package. */
const models = new WeakMap<ModelConfig, VisionLanguageModel>()

/** The `VisionLanguageModel` of `config` (the same instance for the same config object). */
export function openModel(config: ModelConfig): VisionLanguageModel {
  let model = models.get(config)
  if (!model) {
    model = new VisionLanguageModel(config.model, {
      ...(config.inferenceThreads === undefined ? {} : { inferenceThreads: config.inferenceThreads }),
      ...(config.intraOpThreads === undefined ? {} : { intraOpThreads: config.intraOpThreads }),
      provider: config.provider,
      strictProvider: config.strictProvider,
    })
    models.set(config, model)
  }
  return model
}

/**
 * The planning check of a model pipeline: the package loaded now (manifest, every file's sha256, tokenizer,
 * prompts), so that a broken package stops the run before any output is written (`ModelManifestError`,
 * exit 2); no inference thread starts. `questions`: fixed questions, which must be in the vocabulary.
 */
export async function checkModel(config: ModelConfig, questions: readonly string[] = []): Promise<void> {
  const pkg = await openModel(config).load()
  const unknown = unknownWordsOf(questions, pkg.tokenizer)
  if (unknown.length > 0) throw new PipelineConfigError('questions', `${outOfVocabularyMessage(unknown, pkg.tokenizer)}; every row would be a question-out-of-vocabulary error row`)
}

/**
 * What to say about the model before its results are read: when its package declares that it was trained
 * only on synthetic data, one sentence saying so (and what on).
 */
export function modelNotices(config: ModelConfig): string[] {
  const { manifest, domain } = readManifest(config.model)
  if (!domain?.synthetic) return []
  return [`the model ${manifest.name} was trained only on synthetic data (${domain.trained_on}); on other images its outputs are not meaningful, whatever their status`]
}

/** The columns saying how each text ended and how sure the model was: `finish_reason`, `mean_logprob`, `min_logprob`. */
export function confidenceColumns(): OutputColumn<GeneratedText>[] {
  return [
    { name: 'finish_reason', type: 'STRING', value: (r) => finishReason(r.generations[0]) },
    { name: 'mean_logprob', type: 'DOUBLE', value: (r) => textConfidence(r.generations[0].logprobs)?.mean ?? null },
    { name: 'min_logprob', type: 'DOUBLE', value: (r) => textConfidence(r.generations[0].logprobs)?.min ?? null },
  ]
}

/** The same for several texts per row (`vqa` with several questions): JSON lists, aligned with the texts. */
export function confidenceListColumns(): OutputColumn<GeneratedText>[] {
  return [
    { name: 'finish_reasons', type: 'JSON', value: (r) => r.generations.map(finishReason) },
    { name: 'mean_logprobs', type: 'JSON', value: (r) => r.generations.map((g) => textConfidence(g.logprobs)?.mean ?? null) },
    { name: 'min_logprobs', type: 'JSON', value: (r) => r.generations.map((g) => textConfidence(g.logprobs)?.min ?? null) },
  ]
}

/** vLLM's names: `stop` (the model ended the text), `length` (the token limit cut it). */
function finishReason(generation: Generation): 'stop' | 'length' {
  return generation.finish === 'eos' ? 'stop' : 'length'
}

/** decode → batch: images decoded as the model's manifest says (size, resize, mean, std), in batches. */
type DecodedBatch = (DecodedImage | ErrorRecord | ShardNotice)[]

/**
 * The most bytes the model's tensors take for one row of `frames` frames in the chain's inference-thread
 * task (the largest step, `stepBytes`): a row's weight when batching by weight. `generation`: the text
 * stages too (cross-attention memory, one sample per row, a 16-token prompt for questions); without it the
 * vision stages only (`embed`).
 */
export function rowBytes(model: VisionLanguageModel, frames: number, generation?: GenerationConfig & { questions: boolean }): number {
  const { manifest } = model
  const dims = manifest.dims
  const kept = Math.min(frames, dims.max_frames)
  const steps: ThreadStep[] = [
    { kind: 'vit', stage: '', graph: '', norms: [{ frames: kept, mean: [0, 0, 0], std: [1, 1, 1] }] },
    { kind: 'resample', stage: '', graph: '' },
    { kind: 'route', stage: '', router: '', experts: '', topK: manifest.experts.top_k },
  ]
  if (generation) {
    steps.push({ kind: 'cross-attend', stage: '', graph: '', frames: [kept] })
    const prompt = new Array<number>(manifest.prompts.caption.length + (generation.questions ? 16 : 0)).fill(0)
    const params = { maxNewTokens: generation.maxNewTokens, minNewTokens: manifest.generation.min_new_tokens ?? 0, beams: generation.beams, lengthPenalty: 1 }
    steps.push({ kind: 'generate', stage: '', graph: '', samples: [{ memoryRow: 0, prompt }], params, batching: { slots: generation.slots, continuous: generation.continuous }, decoder: decoderSpecOf(manifest) })
  }
  return Math.max(...steps.map((step) => stepBytes(step, dims, [kept])))
}

/**
 * decode → batch, the batches cut by weight as well as by size (Beam's `max_batch_weight`): with the run's
 * byte budget, a batch holds at most budget / (inference threads + 2) bytes of the model's tensors, so that
 * the batches running and waiting and the rows being decoded fit in it (at base size, about 9 images per
 * batch with the default 256 MiB and one inference thread; on the tiny model `batchSize` decides).
 */
function decodeStages(config: ModelConfig, model: VisionLanguageModel, context: StageContext, generation?: GenerationConfig & { questions: boolean }): OperatorFunction<ShardRecord, DecodedBatch> {
  const { preprocessing } = model.manifest
  const { metrics } = context
  const weights = new Map<number, number>()
  const weigh = (record: DecodedImage | ErrorRecord | ShardNotice): number => {
    if (record.kind !== 'decoded-image') return 0
    let bytes = weights.get(record.frames)
    if (bytes === undefined) weights.set(record.frames, (bytes = rowBytes(model, record.frames, generation)))
    return bytes
  }
  return pipe(
    decodeImages<ShardRecord>({
      size: preprocessing.size,
      resize: preprocessing.resize,
      mean: preprocessing.mean,
      std: preprocessing.std,
      maxPixels: config.maxPixels,
      maxBytes: config.maxBytes,
      maxPixelsInFlight: config.maxPixelsInFlight,
      timeoutMs: config.decodeTimeoutMs,
      decoder: config.decoder,
      concurrency: config.concurrency,
      metrics,
    }),
    batchRecords<DecodedImage | ErrorRecord | ShardNotice>({
      maxSize: config.batchSize,
      maxWaitMs: config.maxWaitMs,
      metrics,
      ...(context.inFlight
        ? { maxWeight: context.inFlight.maxBytes / (model.inferenceThreads + 2), weigh }
        : {}),
    }),
  )
}

/** The vision operators: ViT features → resampled tokens → experts (refined `VisualTokens`). */
function visionOperators(model: VisionLanguageModel, context: StageContext) {
  const { metrics, inFlight } = context
  const shared = { model, metrics, ...(inFlight ? { inFlight } : {}) }
  return [extractVitFeatures<DecodedImage | ErrorRecord | ShardNotice>(shared), resampleTokens(shared), routeToExperts(shared)] as const
}

/**
 * decode → batch → ViT features → resampled tokens → experts: refined `VisualTokens` batches. The model
 * stages run as one inference-thread task per batch (`chainModelStages`): only the pixels go to the thread
 * and only the refined tokens come back.
 */
export function visionStages(
  config: ModelConfig,
  model: VisionLanguageModel,
  context: StageContext,
): OperatorFunction<ShardRecord, VisualTokens | ErrorRecord | ShardNotice> {
  return pipe(decodeStages(config, model, context), chainModelStages<DecodedBatch, VisualTokens | ErrorRecord | ShardNotice>(...visionOperators(model, context)))
}

/**
 * The whole text path: decode → batch → ViT features → resampled tokens → experts → cross-attention memory →
 * generated text (captions, or answers to `questions`). The five model stages run as one inference-thread
 * task per batch (`chainModelStages`): the pixels go to the thread, the generated tokens come back, and the
 * taps, visual tokens and cross-attention memory never leave it.
 */
export function textStages(
  config: ModelConfig & GenerationConfig,
  context: StageContext,
  questions?: DecodeTextOptions['questions'],
): OperatorFunction<ShardRecord, GeneratedText | ErrorRecord | ShardNotice> {
  const model = openModel(config)
  const { metrics, inFlight } = context
  const shared = { model, metrics, ...(inFlight ? { inFlight } : {}) }
  return pipe(
    decodeStages(config, model, context, { ...config, questions: questions !== undefined }),
    chainModelStages<DecodedBatch, GeneratedText | ErrorRecord | ShardNotice>(
      ...visionOperators(model, context),
      crossAttend(shared),
      decodeText({
        ...shared,
        ...(questions ? { questions } : {}),
        generation: { maxNewTokens: config.maxNewTokens, beams: config.beams },
        slots: config.slots,
        continuous: config.continuous,
      }),
    ),
  )
}
