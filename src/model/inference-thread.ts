/**
 * An inference thread (a piscina worker thread). It holds one ONNX Runtime session per graph, created on
 * first use and kept for the thread's life (destroying the pool ends the thread), and runs the tasks
 * `InferencePool` sends: `run` (one graph), `route` (router + experts, one sparse dispatch) and `generate`
 * (a batch's whole generation loop). Tensors arrive and leave as transferred ArrayBuffers. onnxruntime-node
 * blocks its thread during `run`, which is why this is not the main thread.
 */
import type * as ort from 'onnxruntime-node'
import { move, transferableSymbol, valueSymbol } from 'piscina'

import { dispatchToExperts } from './experts.js'
import { generate, type BatchingOptions, type DecoderSpec, type GenerationParams, type GenerationSample, type GenerationStats, type GeneratedSequence, type MemoryTensors } from './generate.js'
import { buffersOf, describeTensor, type Feeds, type TensorData } from '../tensor/tensors.js'

export type ExecutionProvider = 'cpu' | 'webgpu' | 'cuda'

export interface SessionSpec {
  /** Absolute path of the .onnx file. */
  readonly path: string
  readonly provider: ExecutionProvider
  readonly strictProvider: boolean
  readonly intraOpNumThreads: number
}

export interface RunTask {
  readonly kind: 'run'
  readonly session: SessionSpec
  readonly feeds: Feeds
  /** Outputs to fetch; default all. */
  readonly outputs?: readonly string[]
}

/** Router + experts on `tokens [N, D]`: one sparse dispatch (see experts.ts). */
export interface RouteTask {
  readonly kind: 'route'
  readonly router: SessionSpec
  readonly experts: SessionSpec
  readonly tokens: TensorData
  readonly topK: number
}

export interface RouteResult {
  readonly refined: TensorData
  readonly load: number[]
  readonly provider: ExecutionProvider
  readonly warning?: string
  readonly ms: number
}

/** The whole generation loop of a batch (see generate.ts): one message per batch, not per token. */
export interface GenerateTask {
  readonly kind: 'generate'
  /** The decoder graph's session. */
  readonly session: SessionSpec
  readonly memory: MemoryTensors
  readonly samples: readonly GenerationSample[]
  readonly params: GenerationParams
  readonly batching: BatchingOptions
  readonly decoder: DecoderSpec
}

export interface GenerateResult {
  readonly sequences: GeneratedSequence[]
  readonly stats: GenerationStats
  readonly provider: ExecutionProvider
  readonly warning?: string
  readonly ms: number
}

export type ThreadTask = RunTask | RouteTask | GenerateTask

export interface RunResult {
  readonly outputs: Record<string, TensorData>
  /** The provider the session runs on (differs from the requested one after a fallback). */
  readonly provider: ExecutionProvider
  /** Why the requested provider was not used, once per session. */
  readonly warning?: string
  readonly ms: number
}

/** A failure inside the thread, with what the main thread needs to build an `InferenceError`. */
export interface ThreadFailure {
  readonly failed: true
  readonly graph: string
  readonly message: string
  /** No session could be created: nothing of this graph can run. */
  readonly fatal?: boolean
}

interface OpenSession {
  readonly session: ort.InferenceSession
  readonly provider: ExecutionProvider
  warning?: string
}

const sessions = new Map<string, Promise<OpenSession>>()

let runtime: Promise<typeof ort> | undefined

/** onnxruntime-node cannot be loaded at all (its message is kept whole). */
class RuntimeMissing extends Error {}

/**
 * onnxruntime-node, loaded on first use. Its native binding ships in the npm package for Linux, macOS and
 * Windows (x64, arm64); when it is missing or cannot load (another platform, a broken install), every
 * session fails with this one explanation instead of the loader's error.
 */
function onnxRuntime(): Promise<typeof ort> {
  runtime ??= import('onnxruntime-node').catch((cause: unknown) => {
    runtime = undefined
    throw new RuntimeMissing(
      `ONNX Runtime cannot load its native binding (${firstLine(cause).slice(0, 200)}): onnxruntime-node is missing or was installed for another platform; ` +
        `reinstall it (npm install; offline or CPU-only: ONNXRUNTIME_NODE_INSTALL=skip npm install)`,
    )
  })
  return runtime
}

function keyOf(spec: SessionSpec): string {
  return `${spec.path}|${spec.provider}|${spec.intraOpNumThreads}`
}

async function openSession(spec: SessionSpec): Promise<OpenSession> {
  const ort = await onnxRuntime()
  const options = (provider: ExecutionProvider): ort.InferenceSession.SessionOptions => ({
    executionProviders: [provider],
    // A provider that cannot start is reported by the exception (and the fallback warning), not by ORT's log.
    logSeverityLevel: provider === 'cpu' ? 2 : 4,
    intraOpNumThreads: spec.intraOpNumThreads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
  })
  if (spec.provider === 'cpu') return { session: await ort.InferenceSession.create(spec.path, options('cpu')), provider: 'cpu' }
  try {
    return { session: await ort.InferenceSession.create(spec.path, options(spec.provider)), provider: spec.provider }
  } catch (error) {
    const reason = firstLine(error)
    if (spec.strictProvider) throw new Error(`execution provider ${spec.provider} cannot start: ${reason}`)
    const session = await ort.InferenceSession.create(spec.path, options('cpu'))
    return { session, provider: 'cpu', warning: `execution provider ${spec.provider} cannot start (${reason}); running on cpu` }
  }
}

function firstLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error)
  return text.split('\n')[0].replace(/^\/onnxruntime_src\/\S+ /, '').slice(0, 300)
}

/** Checks feeds against the session's input names, dtypes and fixed dims. */
function checkFeeds(session: ort.InferenceSession, feeds: Feeds): string | undefined {
  const problems: string[] = []
  for (const meta of session.inputMetadata) {
    const feed = feeds[meta.name]
    if (!feed) {
      problems.push(`missing input ${meta.name}`)
      continue
    }
    if (!meta.isTensor) continue
    if (meta.type !== feed.dtype) problems.push(`${meta.name}: expected ${meta.type}, got ${feed.dtype}`)
    if (meta.shape.length > 0 && meta.shape.length !== feed.dims.length) problems.push(`${meta.name}: expected rank ${meta.shape.length} [${meta.shape.join(', ')}], got [${feed.dims.join(', ')}]`)
    else meta.shape.forEach((d, i) => {
      if (typeof d === 'number' && d >= 0 && feed.dims[i] !== d) problems.push(`${meta.name}: dim ${i} must be ${d}, got ${feed.dims[i]}`)
    })
  }
  for (const name of Object.keys(feeds)) if (!session.inputNames.includes(name)) problems.push(`unknown input ${name} (inputs: ${session.inputNames.join(', ')})`)
  return problems.length > 0 ? problems.join('; ') : undefined
}

/** A failure that names its graph. */
class GraphFailure extends Error {
  constructor(
    readonly graph: string,
    message: string,
    readonly fatal = false,
  ) {
    super(message)
  }
}

async function session(spec: SessionSpec): Promise<OpenSession> {
  const key = keyOf(spec)
  let opening = sessions.get(key)
  if (!opening) {
    opening = openSession(spec)
    sessions.set(key, opening)
  }
  try {
    return await opening
  } catch (error) {
    sessions.delete(key)
    throw new GraphFailure(spec.path, `cannot create a session: ${error instanceof RuntimeMissing ? error.message : firstLine(error)}`, true)
  }
}

/** Runs one graph; throws `GraphFailure` with the feeds described. */
async function runSession(spec: SessionSpec, input: Feeds, outputNames?: readonly string[]): Promise<{ outputs: Record<string, TensorData>; open: OpenSession }> {
  const open = await session(spec)
  const problem = checkFeeds(open.session, input)
  const described = () => Object.entries(input).map(([name, t]) => describeTensor(name, t)).join(', ')
  if (problem) throw new GraphFailure(spec.path, `${problem} (feeds: ${described()})`)
  const { Tensor } = await onnxRuntime()
  const feeds: Record<string, ort.Tensor> = {}
  for (const [name, t] of Object.entries(input)) feeds[name] = new Tensor(t.dtype, t.data, [...t.dims])
  let results: ort.InferenceSession.ReturnType
  try {
    results = outputNames ? await open.session.run(feeds, [...outputNames]) : await open.session.run(feeds)
  } catch (error) {
    throw new GraphFailure(spec.path, `run failed: ${firstLine(error)} (feeds: ${described()})`)
  }
  const outputs: Record<string, TensorData> = {}
  for (const [name, value] of Object.entries(results)) {
    outputs[name] = { dtype: value.type as TensorData['dtype'], dims: [...value.dims], data: value.data as TensorData['data'] }
  }
  return { outputs, open }
}

function takeWarning(open: OpenSession): { warning?: string } {
  const warning = open.warning
  open.warning = undefined
  return warning ? { warning } : {}
}

function failure(error: unknown, fallbackGraph: string): ThreadFailure {
  if (error instanceof GraphFailure) return { failed: true, graph: error.graph, message: error.message, ...(error.fatal ? { fatal: true } : {}) }
  return { failed: true, graph: fallbackGraph, message: firstLine(error) }
}

export async function runGraph(task: RunTask): Promise<RunResult | ThreadFailure> {
  const started = performance.now()
  try {
    const { outputs, open } = await runSession(task.session, task.feeds, task.outputs)
    return { outputs, provider: open.provider, ...takeWarning(open), ms: performance.now() - started }
  } catch (error) {
    return failure(error, task.session.path)
  }
}

export async function routeTokensTask(task: RouteTask): Promise<RouteResult | ThreadFailure> {
  const started = performance.now()
  try {
    const specs = { router: task.router, experts: task.experts }
    let last: OpenSession | undefined
    const result = await dispatchToExperts(task.tokens, task.topK, async (graph, feeds) => {
      const { outputs, open } = await runSession(specs[graph], feeds)
      last = open
      return outputs
    })
    return { ...result, provider: last?.provider ?? task.router.provider, ...(last ? takeWarning(last) : {}), ms: performance.now() - started }
  } catch (error) {
    return failure(error, task.router.path)
  }
}

export async function generateTask(task: GenerateTask): Promise<GenerateResult | ThreadFailure> {
  const started = performance.now()
  try {
    let last: OpenSession | undefined
    const { sequences, stats } = await generate(task.memory, task.samples, task.params, task.batching, task.decoder, async (feeds) => {
      const { outputs, open } = await runSession(task.session, feeds, ['logits', 'present_k', 'present_v'])
      last = open
      return { logits: outputs.logits, present_k: outputs.present_k, present_v: outputs.present_v }
    })
    return { sequences, stats, provider: last?.provider ?? task.session.provider, ...(last ? takeWarning(last) : {}), ms: performance.now() - started }
  } catch (error) {
    return failure(error, task.session.path)
  }
}

/** The piscina entry point. */
export default async function handle(task: ThreadTask): Promise<unknown> {
  switch (task.kind) {
    case 'route': {
      const result = await routeTokensTask(task)
      if ('failed' in result) return result
      return move({ [transferableSymbol]: buffersOf([result.refined]), [valueSymbol]: result } as never)
    }
    case 'generate':
      return generateTask(task)
    case 'run': {
      const result = await runGraph(task)
      if ('failed' in result) return result
      // Transfer the output buffers to the main thread instead of copying them.
      return move({ [transferableSymbol]: buffersOf(Object.values(result.outputs)), [valueSymbol]: result } as never)
    }
  }
}
