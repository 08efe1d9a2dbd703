/**
 * A pool of inference threads (piscina worker threads), each holding its own ONNX Runtime sessions. The
 * main thread only sends feeds and receives outputs, both as transferred ArrayBuffers, so its event loop
 * keeps turning (reading, decoding and writing go on, and `evflow worker` processes keep renewing their
 * job locks). Callers that must keep a tensor hand the pool a copy (see the model operators).
 */
import { existsSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { Piscina } from 'piscina'

import { InferenceError, PipelineConfigError } from '../errors.js'
import { buffersOf, type Feeds, type TensorData } from '../tensor/tensors.js'
import type { BatchingOptions, DecoderSpec, GenerationParams, GenerationSample, MemoryTensors } from './generate.js'
import type { ExecutionProvider, GenerateResult, GenerateTask, RouteResult, RouteTask, RunResult, RunTask, SessionSpec, ThreadFailure, ThreadTask } from './inference-thread.js'

export type { ExecutionProvider } from './inference-thread.js'

export interface InferencePoolOptions {
  /** Inference threads, each with its own sessions, each running one task at a time. Default: the number of cores. */
  inferenceThreads?: number
  /**
   * ONNX Runtime intra-op threads per session. Default 1 (measured best on 2 cores: 2 inference threads × 1
   * intra-op thread).
   */
  intraOpThreads?: number
  /** `cpu` | `webgpu` | `cuda`. Default `cpu`. */
  provider?: ExecutionProvider
  /** Fail instead of falling back to CPU when the provider cannot start. Default false. */
  strictProvider?: boolean
  /** Called once per session that fell back to CPU, with the reason. Default: a warning on stderr. */
  onWarning?: (message: string) => void
}

/** The compiled inference thread: next to this file in dist/, or dist/src/model/inference-thread.js when running from sources. */
function threadFile(): string {
  const here = fileURLToPath(import.meta.url)
  const compiled = here.endsWith('.ts') ? here.replace(/\/src\/model\/inference-pool\.ts$/, '/dist/src/model/inference-thread.js') : here.replace(/inference-pool\.js$/, 'inference-thread.js')
  if (!existsSync(compiled)) throw new InferenceError('inference-thread', `inference thread code not found at ${compiled}; run npm run build`)
  return compiled
}

export class InferencePool {
  readonly inferenceThreads: number
  readonly intraOpThreads: number
  readonly provider: ExecutionProvider
  private readonly strictProvider: boolean
  private readonly pool: Piscina
  private readonly onWarning: (message: string) => void
  private destroyed = false
  private destroying: Promise<void> = Promise.resolve()
  /** Tasks sent to a thread and not yet answered. */
  private readonly inFlight = new Set<Promise<unknown>>()
  /** Warnings already reported (each once per pool, not once per thread and graph). */
  private readonly warned = new Set<string>()
  /** The provider sessions actually run on (the last one reported). */
  activeProvider: ExecutionProvider

  constructor(options: InferencePoolOptions = {}) {
    this.inferenceThreads = options.inferenceThreads ?? availableParallelism()
    this.intraOpThreads = options.intraOpThreads ?? 1
    this.provider = options.provider ?? 'cpu'
    this.strictProvider = options.strictProvider ?? false
    this.activeProvider = this.provider
    InferencePool.validate(options)
    this.onWarning = options.onWarning ?? ((message) => process.stderr.write(`evflow: warning: ${message}\n`))
    this.pool = new Piscina({
      filename: threadFile(),
      minThreads: this.inferenceThreads,
      maxThreads: this.inferenceThreads,
      idleTimeout: Number.POSITIVE_INFINITY,
      // Tasks queue on the main thread; each thread runs one at a time (ORT blocks its thread).
      concurrentTasksPerWorker: 1,
    })
  }

  private spec(path: string): SessionSpec {
    return { path, provider: this.provider, strictProvider: this.strictProvider, intraOpNumThreads: this.intraOpThreads }
  }

  private async submit<T extends { provider: ExecutionProvider; warning?: string }>(label: string, task: ThreadTask, transferList: ArrayBuffer[]): Promise<T> {
    if (this.destroyed) throw new InferenceError(label, 'the inference pool is closed')
    let result: T | ThreadFailure
    try {
      const running = this.pool.run(task, { transferList }) as Promise<T | ThreadFailure>
      this.inFlight.add(running)
      try {
        result = await running
      } finally {
        this.inFlight.delete(running)
      }
    } catch (cause) {
      throw new InferenceError(label, `inference thread failed: ${(cause as Error).message}`, { cause })
    }
    if ('failed' in result) throw new InferenceError(result.graph, result.message, { fatal: result.fatal ?? false })
    this.activeProvider = result.provider
    if (result.warning && !this.warned.has(result.warning)) {
      this.warned.add(result.warning)
      this.onWarning(result.warning)
    }
    return result
  }

  /** Throws `PipelineConfigError` naming the first bad option. */
  static validate(options: InferencePoolOptions): void {
    for (const [field, value] of [['inferenceThreads', options.inferenceThreads], ['intraOpThreads', options.intraOpThreads]] as const) {
      if (value === undefined) continue
      if (!Number.isInteger(value) || value < 1 || value > 256) throw new PipelineConfigError(field, `must be an integer in [1, 256], got ${value}`)
    }
    if (options.provider !== undefined && !['cpu', 'webgpu', 'cuda'].includes(options.provider)) throw new PipelineConfigError('provider', `must be cpu, webgpu or cuda, got ${options.provider}`)
  }

  /** Runs graph `path` on `feeds` in some inference thread; the feeds' buffers are transferred (detached here). */
  async run(path: string, feeds: Feeds, outputs?: readonly string[]): Promise<{ outputs: Record<string, TensorData>; ms: number }> {
    const task: RunTask = { kind: 'run', session: this.spec(path), feeds, ...(outputs ? { outputs } : {}) }
    const result = await this.submit<RunResult>(path, task, buffersOf(Object.values(feeds)))
    return { outputs: result.outputs, ms: result.ms }
  }

  /** Router then experts on `tokens [N, D]` in one task (one sparse dispatch); `tokens` is transferred. */
  async route(routerPath: string, expertsPath: string, tokens: TensorData, topK: number): Promise<RouteResult> {
    const task: RouteTask = { kind: 'route', router: this.spec(routerPath), experts: this.spec(expertsPath), tokens, topK }
    return this.submit<RouteResult>(routerPath, task, buffersOf([tokens]))
  }

  /** The whole generation loop of a batch in one task (see generate.ts); the memory's buffers are transferred. */
  async generate(
    decoderPath: string,
    memory: MemoryTensors,
    samples: readonly GenerationSample[],
    params: GenerationParams,
    batching: BatchingOptions,
    decoder: DecoderSpec,
  ): Promise<GenerateResult> {
    const task: GenerateTask = { kind: 'generate', session: this.spec(decoderPath), memory, samples, params, batching, decoder }
    return this.submit<GenerateResult>(decoderPath, task, buffersOf([memory.xattn_k, memory.xattn_v, memory.xattn_mask]))
  }

  /**
   * Stops the inference threads once the tasks already running have finished (their results are dropped):
   * terminating a thread inside ONNX Runtime's `run` aborts the whole process. Ending a thread frees its
   * sessions. New tasks are refused at once. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return this.destroying
    this.destroyed = true
    this.destroying = (async () => {
      await Promise.allSettled([...this.inFlight])
      await this.pool.destroy()
    })()
    return this.destroying
  }
}
