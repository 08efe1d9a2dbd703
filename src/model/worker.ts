/**
 * The inference worker (a piscina worker thread). It holds one ONNX Runtime session per graph, created on
 * first use and kept for the worker's life, and runs tasks sent by `InferencePool`: tensors arrive and leave
 * as transferred ArrayBuffers. onnxruntime-node blocks its thread during `run`, which is why this is a
 * worker and not the main thread.
 */
import * as ort from 'onnxruntime-node'
import { move, transferableSymbol, valueSymbol } from 'piscina'

import { buffersOf, describeTensor, type Feeds, type TensorData } from './tensors.js'

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

export interface RunResult {
  readonly outputs: Record<string, TensorData>
  /** The provider the session runs on (differs from the requested one after a fallback). */
  readonly provider: ExecutionProvider
  /** Why the requested provider was not used, once per session. */
  readonly warning?: string
  readonly ms: number
}

/** A failure inside the worker, with what the main thread needs to build an `InferenceError`. */
export interface WorkerFailure {
  readonly failed: true
  readonly graph: string
  readonly message: string
}

interface OpenSession {
  readonly session: ort.InferenceSession
  readonly provider: ExecutionProvider
  warning?: string
}

const sessions = new Map<string, Promise<OpenSession>>()

function keyOf(spec: SessionSpec): string {
  return `${spec.path}|${spec.provider}|${spec.intraOpNumThreads}`
}

async function openSession(spec: SessionSpec): Promise<OpenSession> {
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

export async function runGraph(task: RunTask): Promise<RunResult | WorkerFailure> {
  const started = performance.now()
  const key = keyOf(task.session)
  let opening = sessions.get(key)
  if (!opening) {
    opening = openSession(task.session)
    sessions.set(key, opening)
  }
  let open: OpenSession
  try {
    open = await opening
  } catch (error) {
    sessions.delete(key)
    return { failed: true, graph: task.session.path, message: `cannot create a session: ${firstLine(error)}` }
  }
  const problem = checkFeeds(open.session, task.feeds)
  const described = Object.entries(task.feeds).map(([name, t]) => describeTensor(name, t)).join(', ')
  if (problem) return { failed: true, graph: task.session.path, message: `${problem} (feeds: ${described})` }
  const feeds: Record<string, ort.Tensor> = {}
  for (const [name, t] of Object.entries(task.feeds)) feeds[name] = new ort.Tensor(t.dtype, t.data, [...t.dims])
  let results: ort.InferenceSession.ReturnType
  try {
    results = task.outputs ? await open.session.run(feeds, [...task.outputs]) : await open.session.run(feeds)
  } catch (error) {
    return { failed: true, graph: task.session.path, message: `run failed: ${firstLine(error)} (feeds: ${described})` }
  }
  const outputs: Record<string, TensorData> = {}
  for (const [name, value] of Object.entries(results)) {
    outputs[name] = { dtype: value.type as TensorData['dtype'], dims: [...value.dims], data: value.data as TensorData['data'] }
  }
  const warning = open.warning
  open.warning = undefined
  return { outputs, provider: open.provider, ...(warning ? { warning } : {}), ms: performance.now() - started }
}

/** Releases every session of this worker. */
export async function releaseAll(): Promise<void> {
  const open = [...sessions.values()]
  sessions.clear()
  for (const pending of open) {
    try {
      await (await pending).session.release()
    } catch {
      // a session that failed to open has nothing to release
    }
  }
}

/** The piscina entry point. */
export default async function handle(task: RunTask | { kind: 'release' }): Promise<unknown> {
  if (task.kind === 'release') {
    await releaseAll()
    return { released: true }
  }
  const result = await runGraph(task)
  if ('failed' in result) return result
  // Transfer the output buffers to the main thread instead of copying them.
  return move({ [transferableSymbol]: buffersOf(Object.values(result.outputs)), [valueSymbol]: result } as never)
}
