/**
 * What the model benchmarks share: the model package, a shard of synthetic scenes re-encoded as 256×256
 * JPEGs (the "5,000-row shard of 256×256 JPEGs", with content the model knows, so captions have
 * their natural lengths), pre-decoding, and the "limit": the model's graphs run back to back in the worker
 * pool on pre-decoded tensors, nothing else.
 */
import { existsSync, mkdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { lastValueFrom, toArray } from 'rxjs'
import sharp from 'sharp'

import { decodeImages } from '../../operators/decode-images.js'
import { readShards } from '../../operators/read-shards.js'
import { decoderSpecOf, type BatchingOptions, type GenerationParams } from '../../src/model/generate.js'
import type { ThreadStep } from '../../src/model/steps.js'
import { packPixels, type PixelNorm } from '../../src/tensor/pixels.js'
import { loadModelPackage, type ModelPackage } from '../../src/model/package.js'
import { InferencePool } from '../../src/model/inference-pool.js'
import type { TensorData } from '../../src/tensor/tensors.js'
import type { DecodedImage } from '../../src/records.js'
import { renderImage } from '../../scenes/render.js'
import { sceneOf } from '../../scenes/generate.js'
import type { ImageScene } from '../../scenes/scene.js'
import { imageShardBuffer, writeBuffer } from '../../test/helpers/shards.js'
import type { BenchInputs, ShardInput } from './inputs.js'
import { pool as promisePool } from './stats.js'

export const MODEL_DIR = process.env.EVFLOW_BENCH_MODEL ?? fileURLToPath(new URL('../../../fixtures/models/evlm-tiny/', import.meta.url))
export const HAVE_MODEL = existsSync(join(MODEL_DIR, 'manifest.json'))
export const SCENE_SIDE = 256
/** First seed of the test split: benchmark scenes are never training scenes. */
const TEST_SEED = 3_000_000

const sceneShards = new Map<number, Promise<ShardInput>>()
/** Distinct scenes rendered per run; bigger shards cycle through them (the memory case needs rows, not variety). */
export const DISTINCT_SCENES = 5_000
let rendered: Promise<Uint8Array[]> | undefined

/** The first `DISTINCT_SCENES` test scenes as 256×256 JPEGs (quality 85), rendered once per run. */
function renderScenes(): Promise<Uint8Array[]> {
  rendered ??= (async () => {
    const images: Uint8Array[] = []
    await promisePool(Array.from({ length: DISTINCT_SCENES }, (_, i) => i), 8, async (u) => {
      const { scene } = sceneOf('caption', TEST_SEED, u)
      const png = await renderImage(scene as ImageScene)
      images[u] = await sharp(png).resize(SCENE_SIDE, SCENE_SIDE, { fit: 'fill' }).jpeg({ quality: 85 }).toBuffer()
    })
    return images
  })()
  return rendered
}

/** A one-shard folder of `rows` synthetic test scenes as 256×256 JPEGs, cycling through the distinct ones. */
export function sceneShard(inputs: BenchInputs, rows: number, log: (m: string) => void): Promise<ShardInput> {
  let pending = sceneShards.get(rows)
  if (!pending) {
    pending = (async () => {
      const started = performance.now()
      const dir = join(inputs.dir, `scenes-${rows}`)
      mkdirSync(dir, { recursive: true })
      const file = join(dir, 'scenes.parquet')
      const images = await renderScenes()
      writeBuffer(file, imageShardBuffer(Array.from({ length: rows }, (_, u) => ({ id: `bench-${u}`, image: images[u % images.length] })), 500))
      const fileBytes = statSync(file).size
      log(`generated ${rows} scene rows (${(fileBytes / 1e6).toFixed(1)} MB) in ${((performance.now() - started) / 1000).toFixed(1)} s`)
      return { dir, file, rows, fileBytes }
    })()
    sceneShards.set(rows, pending)
  }
  return pending
}

/** Decodes a shard's images at the model's size, in row order (the limit's pre-decoded input). */
export async function predecode(file: string, pkg: ModelPackage): Promise<{ images: DecodedImage[]; seconds: number }> {
  const pre = pkg.manifest.preprocessing
  const started = performance.now()
  const records = await lastValueFrom(
    readShards(file).pipe(decodeImages({ size: pre.size, resize: pre.resize, mean: pre.mean, std: pre.std, ordered: true }), toArray()),
  )
  const images = records.filter((r): r is DecodedImage => r.kind === 'decoded-image')
  return { images, seconds: (performance.now() - started) / 1000 }
}

export function loadBenchModel(): Promise<ModelPackage> {
  return loadModelPackage(MODEL_DIR)
}

export interface LimitRun {
  readonly images: number
  readonly seconds: number
  readonly imagesPerS: number
  readonly tokens: number
  readonly tokensPerS: number
  /** Thread-side milliseconds per stage. */
  readonly computeMs: Record<'vit' | 'resampler' | 'experts' | 'xattn_kv' | 'decoder', number>
  /** Bytes moved between the main thread and the inference threads (both ways), per image. */
  readonly bytesMovedPerImage: number
  /** Most bytes of tensors one task held in its thread. */
  readonly taskPeakBytes: number
  /** Seconds of the warm-up (opening every session in every thread, and one small batch): not in `seconds`. */
  readonly warmupS: number
}

export interface LimitOptions {
  readonly batch: number
  readonly workers: number
  readonly threads?: number
  /** ONNX Runtime's CPU memory arena. Default true. */
  readonly memoryArena?: boolean
  readonly maxNewTokens?: number
  readonly minNewTokens?: number
  readonly slots?: number
  readonly continuous?: boolean
}

/** The thread steps of the whole caption path for a batch of `images` rows of one frame each. */
export function captionSteps(pkg: ModelPackage, images: number, norms: readonly PixelNorm[], params: GenerationParams, batching: BatchingOptions): ThreadStep[] {
  const m = pkg.manifest
  const samples = Array.from({ length: images }, (_, i) => ({ memoryRow: i, prompt: [m.special_tokens.bos] }))
  return [
    { kind: 'vit', stage: 'vit', graph: pkg.graphPath('vit'), norms },
    { kind: 'resample', stage: 'resampler', graph: pkg.graphPath('resampler') },
    { kind: 'route', stage: 'experts', router: pkg.graphPath('router'), experts: pkg.graphPath('experts'), topK: m.dims.top_k },
    { kind: 'cross-attend', stage: 'xattn_kv', graph: pkg.graphPath('xattn_kv'), frames: new Array<number>(images).fill(1) },
    { kind: 'generate', stage: 'decoder', graph: pkg.graphPath('decoder'), samples, params, batching, decoder: decoderSpecOf(m) },
  ]
}

/**
 * The limit: every graph of the caption path (vit → resampler → router + experts → xattn_kv → decoder
 * generation loop) as one inference-thread task per batch (what `evflow caption` sends), batch after batch in
 * a pool of `workers` inference threads, `workers + 1` batches in flight, on pixels decoded and packed before
 * the clock starts: the graphs alone, without reading, decoding, batching or writing.
 */
export async function runLimit(pkg: ModelPackage, images: readonly DecodedImage[], options: LimitOptions): Promise<LimitRun> {
  const m = pkg.manifest
  const pool = new InferencePool({ inferenceThreads: options.workers, intraOpThreads: options.threads ?? 1, memoryArena: options.memoryArena ?? true })
  try {
    const batches: { pixels: TensorData; norms: PixelNorm[] }[] = []
    for (let i = 0; i < images.length; i += options.batch) batches.push(packPixels(images.slice(i, i + options.batch)))
    const computeMs = { vit: 0, resampler: 0, experts: 0, xattn_kv: 0, decoder: 0 }
    let tokens = 0
    let taskPeakBytes = 0
    const params: GenerationParams = {
      maxNewTokens: options.maxNewTokens ?? m.generation.max_new_tokens,
      minNewTokens: options.minNewTokens ?? m.generation.min_new_tokens ?? 0,
      beams: 1,
      lengthPenalty: 1,
    }
    const batching: BatchingOptions = { slots: options.slots ?? 32, continuous: options.continuous ?? true }
    async function chain(batch: { pixels: TensorData; norms: PixelNorm[] }, count = false): Promise<void> {
      // a copy crosses (the batch is reused by the next repetition)
      const pixels = { ...batch.pixels, data: batch.pixels.data.slice() }
      const result = await pool.steps(captionSteps(pkg, batch.pixels.dims[0], batch.norms, params, batching), { pixels }, [])
      if (!count) return
      for (const outcome of result.outcomes) computeMs[outcome.stage as keyof typeof computeMs] += outcome.ms
      tokens += result.outcomes[result.outcomes.length - 1].stats?.tokens ?? 0
      taskPeakBytes = Math.max(taskPeakBytes, result.peakBytes)
    }
    // warm-up: one session per graph per worker
    const warming = performance.now()
    await Promise.all(Array.from({ length: options.workers }, () => chain(packPixels(images.slice(0, 2)))))
    const warmupS = (performance.now() - warming) / 1000
    const moved = { ...pool.moved }
    const started = performance.now()
    await promisePool(batches, options.workers + 1, (batch) => chain(batch, true))
    const seconds = (performance.now() - started) / 1000
    const bytesMoved = pool.moved.toThreads - moved.toThreads + pool.moved.fromThreads - moved.fromThreads
    return { images: images.length, seconds, imagesPerS: images.length / seconds, tokens, tokensPerS: tokens / seconds, computeMs, bytesMovedPerImage: bytesMoved / images.length, taskPeakBytes, warmupS }
  } finally {
    await pool.destroy()
  }
}
