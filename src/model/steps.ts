/**
 * What an inference thread does for a model stage: its **step**. A step is plain data (it crosses to the
 * thread in the task message) that names the graph(s) it runs and the main-thread facts it needs (each
 * record's frames and normalisation, the generation samples); it reads its input tensors from the task's
 * tensor environment and leaves its outputs there. A task is a list of steps, so consecutive model stages
 * run in one task where their tensors already are, and only what the last stage makes comes back (see
 * operators/internal/model-stage.ts, `chainModelStages`). One stage alone is a task of one step.
 *
 * The environment's tensor names are the model package's (DESIGN §1):
 *
 * | step | reads | writes |
 * |---|---|---|
 * | `vit` | `pixels [N, H, W, 3]` uint8 | `taps [N, L, P, Dv]` (through `pixel_values [N, 3, H, W]`, normalised here) |
 * | `resample` | `taps` | `visual_tokens [N, L, Q, D]` |
 * | `route` | `visual_tokens` | `visual_tokens` (refined by the experts) |
 * | `cross-attend` | `visual_tokens` | `xattn_k`, `xattn_v [B, n_layer, H, M, dh]`, `xattn_mask [B, M]` |
 * | `generate` | `xattn_k`, `xattn_v`, `xattn_mask` | the generated sequences (not tensors) |
 *
 * A step takes its inputs out of the environment (they are dropped once read, unless the task returns them),
 * so a tensor lives only while a later step or the caller needs it. Pure functions of `src/` and graph runs
 * only: nothing here imports ONNX Runtime (the thread passes `runGraph`), so steps run in tests without it.
 */
import { ModelUsageError } from '../errors.js'
import { frameMask, packFrames } from '../tensor/frames.js'
import { normalizePixels, type PixelNorm } from '../tensor/pixels.js'
import { float32, float32Data, int64, tensor, type Feeds, type TensorData } from '../tensor/tensors.js'
import { dispatchToExperts } from './experts.js'
import type { ModelDims } from './manifest.js'
import { generate, type BatchingOptions, type DecoderSpec, type GeneratedSequence, type GenerationParams, type GenerationSample, type GenerationStats } from './generate.js'

/** `vit.onnx`: packed uint8 pixels → `taps`. */
export interface VitStep {
  readonly kind: 'vit'
  /** The operator the step belongs to (metrics, error rows). */
  readonly stage: string
  readonly graph: string
  /** Each record's frames, mean and std, in batch order. */
  readonly norms: readonly PixelNorm[]
}

/** `resampler.onnx`: `taps` → `visual_tokens`. */
export interface ResampleStep {
  readonly kind: 'resample'
  readonly stage: string
  readonly graph: string
}

/** `router.onnx` + `experts.onnx`, one sparse dispatch: `visual_tokens` → refined `visual_tokens`. */
export interface RouteStep {
  readonly kind: 'route'
  readonly stage: string
  readonly router: string
  readonly experts: string
  readonly topK: number
}

/** `xattn_kv.onnx`: `visual_tokens` (frames flattened) → the cross-attention memory of each row. */
export interface CrossAttendStep {
  readonly kind: 'cross-attend'
  readonly stage: string
  readonly graph: string
  /** Frames of each row, in batch order (clips are packed per row, padded to the longest). */
  readonly frames: readonly number[]
}

/** `decoder.onnx`: the whole generation loop of the batch, reading the memory. */
export interface GenerateStep {
  readonly kind: 'generate'
  readonly stage: string
  readonly graph: string
  readonly samples: readonly GenerationSample[]
  readonly params: GenerationParams
  readonly batching: BatchingOptions
  readonly decoder: DecoderSpec
}

export type ThreadStep = VitStep | ResampleStep | RouteStep | CrossAttendStep | GenerateStep

/** What a step reports (its time; the experts' load; the generation). */
export interface StepOutcome {
  readonly stage: string
  readonly kind: ThreadStep['kind']
  /** Milliseconds in the step (graph runs and the pure functions around them). */
  readonly ms: number
  /** `route`: tokens routed to each expert. */
  readonly load?: readonly number[]
  /** `generate`: the sequences, in sample order, and counters. */
  readonly sequences?: readonly GeneratedSequence[]
  readonly stats?: GenerationStats
}

/** Runs a graph on feeds (in the thread: an ONNX Runtime session); `outputs` limits what is fetched. */
export type RunGraph = (graph: string, feeds: Feeds, outputs?: readonly string[]) => Promise<Record<string, TensorData>>

/** A step failed: which one (index in the task), with the cause. */
export class StepFailure extends Error {
  constructor(
    readonly step: number,
    override readonly cause: unknown,
  ) {
    super(cause instanceof Error ? cause.message : String(cause))
  }
}

/** Bytes of a tensor's data. */
export function tensorBytes(t: TensorData): number {
  return t.data.byteLength
}

/**
 * The tensors of a task: taken by the steps that read them (dropped then, unless the caller wants them
 * back), with the most bytes they held at once.
 */
export class TensorEnv {
  private readonly tensors = new Map<string, TensorData>()
  private live = 0
  /** Most bytes held at once (tensors of the environment, plus the outputs a step was making). */
  peakBytes = 0

  constructor(
    initial: Readonly<Record<string, TensorData>>,
    /** Names the caller wants back: never dropped. */
    private readonly kept: ReadonlySet<string>,
  ) {
    for (const [name, t] of Object.entries(initial)) this.put(name, t)
  }

  /** The tensor `name`, dropped from the environment unless kept. */
  take(name: string): TensorData {
    const t = this.tensors.get(name)
    if (!t) throw new ModelUsageError(`step input ${name} is not in the task (has: ${[...this.tensors.keys()].join(', ') || 'nothing'})`)
    if (!this.kept.has(name)) this.drop(name)
    return t
  }

  /** Stores a step's output (`transient`: bytes the step held beside it and has let go). */
  put(name: string, t: TensorData, transient = 0): void {
    this.drop(name)
    this.tensors.set(name, t)
    this.live += tensorBytes(t)
    this.peakBytes = Math.max(this.peakBytes, this.live + transient)
  }

  /** Counts bytes a step holds while it runs (its inputs, already taken), for the peak. */
  holding(bytes: number): void {
    this.peakBytes = Math.max(this.peakBytes, this.live + bytes)
  }

  private drop(name: string): void {
    const t = this.tensors.get(name)
    if (!t) return
    this.tensors.delete(name)
    this.live -= tensorBytes(t)
  }

  /** The tensors `names`, for the caller. */
  pick(names: readonly string[]): Record<string, TensorData> {
    const out: Record<string, TensorData> = {}
    for (const name of names) {
      const t = this.tensors.get(name)
      if (!t) throw new ModelUsageError(`the task returns ${name}, which no step made`)
      out[name] = t
    }
    return out
  }
}

/** Runs one step on the environment. */
async function runStep(step: ThreadStep, env: TensorEnv, runGraph: RunGraph): Promise<Omit<StepOutcome, 'stage' | 'kind' | 'ms'>> {
  switch (step.kind) {
    case 'vit': {
      const pixels = env.take('pixels')
      const pixel_values = normalizePixels(pixels, step.norms)
      env.holding(tensorBytes(pixels) + tensorBytes(pixel_values))
      const { taps } = await runGraph(step.graph, { pixel_values }, ['taps'])
      env.put('taps', taps, tensorBytes(pixels) + tensorBytes(pixel_values))
      return {}
    }
    case 'resample': {
      const taps = env.take('taps')
      const { visual_tokens } = await runGraph(step.graph, { taps }, ['visual_tokens'])
      env.put('visual_tokens', visual_tokens, tensorBytes(taps))
      return {}
    }
    case 'route': {
      const tokens = env.take('visual_tokens')
      const d = tokens.dims[tokens.dims.length - 1]
      const data = float32Data(tokens, 'visual_tokens')
      // one token per row, [N·L·Q, D]; each expert's tokens are gathered into one batch (experts.ts)
      const result = await dispatchToExperts(float32([data.length / d, d], data), step.topK, (graph, feeds) => runGraph(graph === 'router' ? step.router : step.experts, feeds))
      // beside the result, the dispatch held the tokens, their copy for the router, the shared expert's output
      // and the top-k experts' contributions (experts.ts)
      env.put('visual_tokens', tensor('float32', tokens.dims, result.refined.data), (3 + step.topK) * tensorBytes(tokens))
      return { load: result.load }
    }
    case 'cross-attend': {
      const tokens = env.take('visual_tokens')
      const [, l, q, d] = tokens.dims
      // clips padded to the longest, frame-major per row (a new array)
      const packed = packFrames(float32Data(tokens, 'visual_tokens'), step.frames, l * q * d)
      const feeds = {
        visual_tokens: float32([step.frames.length, packed.frames, l, q, d], packed.data),
        frame_mask: int64([step.frames.length, packed.frames], frameMask(step.frames, packed.frames)),
      }
      env.holding(tensorBytes(tokens) + packed.data.byteLength)
      const out = await runGraph(step.graph, feeds, ['xattn_k', 'xattn_v', 'xattn_mask'])
      const transient = tensorBytes(tokens) + packed.data.byteLength
      env.put('xattn_k', out.xattn_k, transient)
      env.put('xattn_v', out.xattn_v, transient)
      env.put('xattn_mask', out.xattn_mask, transient)
      return {}
    }
    case 'generate': {
      const memory = { xattn_k: env.take('xattn_k'), xattn_v: env.take('xattn_v'), xattn_mask: env.take('xattn_mask') }
      const memoryBytes = tensorBytes(memory.xattn_k) + tensorBytes(memory.xattn_v) + tensorBytes(memory.xattn_mask)
      env.holding(memoryBytes)
      const { sequences, stats } = await generate(memory, step.samples, step.params, step.batching, step.decoder, async (feeds) => {
        const out = await runGraph(step.graph, feeds, ['logits', 'present_k', 'present_v'])
        return { logits: out.logits, present_k: out.present_k, present_v: out.present_v }
      })
      env.holding(memoryBytes + stats.peakBytes)
      return { sequences, stats }
    }
  }
}

export interface StepsResult {
  readonly outcomes: StepOutcome[]
  /** The tensors the caller asked back. */
  readonly outputs: Record<string, TensorData>
  /** Most bytes of tensors the task held at once (see `TensorEnv`). */
  readonly peakBytes: number
}

/**
 * Runs `steps` in order on `inputs` and returns the tensors named in `returns`. Throws `StepFailure` naming
 * the step that failed.
 */
export async function runSteps(steps: readonly ThreadStep[], inputs: Readonly<Record<string, TensorData>>, returns: readonly string[], runGraph: RunGraph): Promise<StepsResult> {
  const env = new TensorEnv(inputs, new Set(returns))
  const outcomes: StepOutcome[] = []
  for (const [index, step] of steps.entries()) {
    const started = performance.now()
    try {
      const outcome = await runStep(step, env, runGraph)
      outcomes.push({ stage: step.stage, kind: step.kind, ms: performance.now() - started, ...outcome })
    } catch (error) {
      throw new StepFailure(index, error)
    }
  }
  return { outcomes, outputs: env.pick(returns), peakBytes: env.peakBytes }
}

/**
 * The most bytes of tensors a step holds at once (its inputs, outputs and transients, as `TensorEnv` counts
 * them), forecast from the model's dims and the frames of the rows it runs on: what a batch reserves in the
 * run's in-flight bound before it starts. The generation loop is forecast for its worst case: every running
 * row's KV cache at the longest prompt plus `maxNewTokens`, as a run's feeds and outputs, the memory rows
 * gathered again (unless every sample runs to the same fixed length, when the memory is used as it is) and
 * the prefill's logits.
 */
export function stepBytes(step: ThreadStep, dims: ModelDims, frames: readonly number[]): number {
  const F32 = 4
  const n = frames.reduce((sum, f) => sum + f, 0)
  const b = frames.length
  const widest = Math.max(0, ...frames)
  const taps = n * dims.n_taps * dims.n_patches * dims.vit_dim * F32
  const tokens = n * dims.n_taps * dims.n_query * dims.d_visual * F32
  const m = widest * dims.n_query
  const memoryRow = 2 * dims.n_layer * dims.n_head * m * dims.head_dim * F32 + m * F32
  switch (step.kind) {
    case 'vit': {
      const plane = dims.image_size * dims.image_size * 3
      return n * plane + n * plane * F32 + taps
    }
    case 'resample':
      return taps + tokens
    case 'route':
      return (4 + step.topK) * tokens
    case 'cross-attend':
      return 2 * tokens + b * memoryRow + b * widest * 8
    case 'generate': {
      const samples = step.samples.length
      const rows = Math.min(step.batching.slots, samples) * step.params.beams
      const prompt = Math.max(0, ...step.samples.map((s) => s.prompt.length))
      const positions = prompt + step.params.maxNewTokens
      const cache = 2 * step.decoder.nLayer * rows * step.decoder.heads * positions * step.decoder.headDim * F32
      const fixedLength = step.params.beams === 1 && (step.params.minNewTokens ?? 0) >= step.params.maxNewTokens && samples === b && step.batching.slots >= samples
      const gathered = fixedLength ? 0 : rows * memoryRow
      const logits = rows * prompt * dims.vocab_size * F32
      const feeds = rows * (positions + 2) * 8 * 3
      return b * memoryRow + 2 * cache + gathered + logits + feeds
    }
  }
}

/** The graphs a step runs (for error messages and session warm-up). */
export function graphsOf(step: ThreadStep): string[] {
  return step.kind === 'route' ? [step.router, step.experts] : [step.graph]
}
