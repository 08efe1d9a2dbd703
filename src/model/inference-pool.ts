/**
 * A pool of inference threads (piscina worker threads), each holding its own ONNX Runtime sessions. The
 * main thread only sends feeds and receives outputs, both as transferred ArrayBuffers, so its event loop
 * keeps turning (reading, decoding and writing go on, and `evflow worker` processes keep renewing their
 * job locks). Callers that must keep a tensor hand the pool a copy (see the model operators). The pool
 * counts the bytes it moves each way (`moved`), the measure of what crossing threads costs.
 */
import { existsSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { fileURLToPath } from 'node:url'
import { Piscina } from 'piscina'

import { InferenceError, PipelineConfigError } from '../errors.js'
import { buffersOf, type Feeds, type TensorData } from '../tensor/tensors.js'
import type { ExecutionProvider, RunResult, RunTask, SessionSpec, StepsResult, StepsTask, ThreadFailure, ThreadTask } from './inference-thread.js'
import type { ThreadStep } from './steps.js'

export type { ExecutionProvider, StepsResult } from './inference-thread.js'

/** Bytes of tensors moved between the main thread and the inference threads, each way, and tasks sent. */
export interface MovedBytes {
  toThreads: number
  fromThreads: number
  tasks: number
}

/** A failure of a `steps` task: an `InferenceError` that says which step failed. */
export class StepError extends InferenceError {
  constructor(
    graph: string,
    message: string,
    /** Index of the failed step in the task. */
    readonly step: number,
    fatal: boolean,
  ) {
    super(graph, message, { fatal })
  }
}

/**
 * A model whose graphs hold more than this many bytes of weights is large: each inference thread holding its
 * own copy of the weights would cost more memory than the threads gain (their ops are big enough for ONNX
 * Runtime's intra-op threads to share), so it runs one inference thread with every core as intra-op threads.
 */
export const LARGE_MODEL_BYTES = 256 * 1024 * 1024

export interface ThreadPlan {
  readonly inferenceThreads: number
  readonly intraOpThreads: number
  /** ONNX Runtime's CPU memory arena: off for a large model (it would keep its largest batch's activations). */
  readonly memoryArena: boolean
}

/**
 * The inference and intra-op threads for a model of `weightsBytes` on `cores` cores, where not set: a small
 * model gets one inference thread per core, 1 intra-op thread each (per-call overheads dominate small graphs,
 * and separate threads overlap them; measured best on the tiny model); a large one (`LARGE_MODEL_BYTES`)
 * gets one inference thread (one copy of its weights: each inference thread holds its own sessions, and
 * onnxruntime-node cannot share initializers between them) with `cores` intra-op threads, and no memory
 * arena. A value set is kept; the other then shares the cores (`cores / inferenceThreads` intra-op threads
 * for a large model, 1 for a small one). Measured on evlm-base (1.22 GB of graphs, docs/benchmarks.md):
 * 1 × 2 threads as fast as 2 × 1 within the noise of a shared machine, at 2.3 instead of 4.1 GB.
 */
export function threadPlan(
  weightsBytes: number,
  cores: number,
  set: { inferenceThreads?: number | undefined; intraOpThreads?: number | undefined; memoryArena?: boolean | undefined } = {},
): ThreadPlan {
  const large = weightsBytes > LARGE_MODEL_BYTES
  const inferenceThreads = set.inferenceThreads ?? (large ? (set.intraOpThreads === undefined ? 1 : Math.max(1, Math.floor(cores / set.intraOpThreads))) : cores)
  const intraOpThreads = set.intraOpThreads ?? (large ? Math.max(1, Math.floor(cores / inferenceThreads)) : 1)
  return { inferenceThreads, intraOpThreads, memoryArena: set.memoryArena ?? !large }
}

export interface InferencePoolOptions {
  /** Inference threads, each with its own sessions, each running one task at a time. Default: the number of cores. */
  inferenceThreads?: number
  /**
   * ONNX Runtime intra-op threads per session. Default 1 (measured best on 2 cores for the tiny model: 2
   * inference threads × 1 intra-op thread; `threadPlan` chooses both from a model's size).
   */
  intraOpThreads?: number
  /**
   * ONNX Runtime's CPU memory arena: faster allocation, but each session keeps the most memory a run ever took
   * (a large model's activations at its largest batch). Default true; `threadPlan` turns it off for a large model.
   */
  memoryArena?: boolean
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
  readonly memoryArena: boolean
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
  /** Bytes moved between threads so far. */
  readonly moved: MovedBytes = { toThreads: 0, fromThreads: 0, tasks: 0 }

  constructor(options: InferencePoolOptions = {}) {
    this.inferenceThreads = options.inferenceThreads ?? availableParallelism()
    this.intraOpThreads = options.intraOpThreads ?? 1
    this.memoryArena = options.memoryArena ?? true
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
    return { path, provider: this.provider, strictProvider: this.strictProvider, intraOpNumThreads: this.intraOpThreads, memoryArena: this.memoryArena }
  }

  private async submit<T extends { provider: ExecutionProvider; warning?: string; outputs: Record<string, TensorData> }>(label: string, task: ThreadTask, inputs: readonly TensorData[]): Promise<T> {
    if (this.destroyed) throw new InferenceError(label, 'the inference pool is closed')
    let result: T | ThreadFailure
    const transferList = buffersOf(inputs)
    this.moved.tasks += 1
    this.moved.toThreads += inputs.reduce((n, t) => n + t.data.byteLength, 0)
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
    if ('failed' in result) {
      if (result.step !== undefined) throw new StepError(result.graph, result.message, result.step, result.fatal ?? false)
      throw new InferenceError(result.graph, result.message, { fatal: result.fatal ?? false })
    }
    this.moved.fromThreads += Object.values(result.outputs).reduce((n, t) => n + t.data.byteLength, 0)
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
    const result = await this.submit<RunResult>(path, task, Object.values(feeds))
    return { outputs: result.outputs, ms: result.ms }
  }

  /**
   * Runs `steps` (see steps.ts) one after the other in one inference thread on `inputs`, whose buffers are
   * transferred (detached here), and returns the tensors named in `returns` (transferred back) with each
   * step's outcome. A failing step throws `StepError` (its index in `step`).
   */
  async steps(steps: readonly ThreadStep[], inputs: Feeds, returns: readonly string[]): Promise<StepsResult> {
    const session = { provider: this.provider, strictProvider: this.strictProvider, intraOpNumThreads: this.intraOpThreads, memoryArena: this.memoryArena }
    const task: StepsTask = { kind: 'steps', session, steps, inputs, returns }
    const first = steps[0]
    return this.submit<StepsResult>(first ? (first.kind === 'route' ? first.router : first.graph) : 'steps', task, Object.values(inputs))
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
