/**
 * An inference thread (a piscina worker thread). It holds one ONNX Runtime session per graph, created on
 * first use and kept for the thread's life (destroying the pool ends the thread), and runs the tasks
 * `InferencePool` sends: `run` (one graph) and `steps` (the thread-side steps of one or more consecutive
 * model stages on one batch, see steps.ts: the tensors stay here between them). Tensors arrive and leave as
 * transferred ArrayBuffers. onnxruntime-node blocks its thread during `run`, which is why this is not the
 * main thread.
 */
import type * as ort from 'onnxruntime-node'
import { move, transferableSymbol, valueSymbol } from 'piscina'

import { StepFailure, runSteps, type StepOutcome, type ThreadStep } from './steps.js'
import { buffersOf, describeTensor, type Feeds, type TensorData } from '../tensor/tensors.js'

export type ExecutionProvider = 'cpu' | 'webgpu' | 'cuda'

export interface SessionSpec {
  /** Absolute path of the .onnx file. */
  readonly path: string
  readonly provider: ExecutionProvider
  readonly strictProvider: boolean
  readonly intraOpNumThreads: number
  /** ONNX Runtime's CPU memory arena (`enableCpuMemArena`). */
  readonly memoryArena: boolean
}

export interface RunTask {
  readonly kind: 'run'
  readonly session: SessionSpec
  readonly feeds: Feeds
  /** Outputs to fetch; default all. */
  readonly outputs?: readonly string[]
}

/** The steps of one or more consecutive model stages on one batch (see steps.ts). */
export interface StepsTask {
  readonly kind: 'steps'
  /** How sessions are opened (the graphs are named by the steps). */
  readonly session: Omit<SessionSpec, 'path'>
  readonly steps: readonly ThreadStep[]
  /** The tensors the first step reads. */
  readonly inputs: Feeds
  /** The tensors sent back (the last stage's outputs a caller reads). */
  readonly returns: readonly string[]
}

export interface StepsResult {
  readonly outcomes: StepOutcome[]
  readonly outputs: Record<string, TensorData>
  /** Most bytes of tensors the task held at once. */
  readonly peakBytes: number
  readonly provider: ExecutionProvider
  readonly warning?: string
  readonly ms: number
}

export type ThreadTask = RunTask | StepsTask

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
  /** `steps` tasks: the index of the step that failed. */
  readonly step?: number
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
  return `${spec.path}|${spec.provider}|${spec.intraOpNumThreads}|${spec.memoryArena}`
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
    // The arena keeps the most memory a run ever took, per session, for the thread's life: at base size that is
    // the activations of the largest batch (about 1 GB at batch 32, docs/benchmarks.md); without it ONNX
    // Runtime frees them after each run.
    enableCpuMemArena: spec.memoryArena,
    // Several intra-op threads: they wait for work sleeping, not spinning on a core that the main thread's
    // decoding, the other inference threads or other processes need.
    ...(spec.intraOpNumThreads > 1 ? { extra: { 'session.intra_op.allow_spinning': '0' } } : {}),
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

export async function runStepsTask(task: StepsTask): Promise<StepsResult | ThreadFailure> {
  const started = performance.now()
  let last: OpenSession | undefined
  try {
    const result = await runSteps(task.steps, task.inputs, task.returns, async (graph, feeds, outputs) => {
      const run = await runSession({ ...task.session, path: graph }, feeds, outputs)
      last = run.open
      return run.outputs
    })
    return { ...result, provider: last?.provider ?? task.session.provider, ...(last ? takeWarning(last) : {}), ms: performance.now() - started }
  } catch (error) {
    if (!(error instanceof StepFailure)) return failure(error, task.steps[0]?.stage ?? 'steps')
    const step = task.steps[error.step]
    return { ...failure(error.cause, step.kind === 'route' ? step.router : step.graph), step: error.step }
  }
}

/** The piscina entry point. */
export default async function handle(task: ThreadTask): Promise<unknown> {
  const result = task.kind === 'steps' ? await runStepsTask(task) : await runGraph(task)
  if ('failed' in result) return result
  // Transfer the output buffers to the main thread instead of copying them.
  return move({ [transferableSymbol]: buffersOf(Object.values(result.outputs)), [valueSymbol]: result } as never)
}
