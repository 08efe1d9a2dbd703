/**
 * The text generation loop of a cross-attention decoder (`decoder.onnx`), run inside an inference thread:
 * one call generates every sample of a batch, so the main thread sends one message per batch, not per token.
 * Its parts: the KV cache (kv-cache.ts), greedy and beam selection (search.ts), and here the loop that
 * prefills joining samples, runs one-token steps and retires finished sequences.
 *
 * - **KV cache.** The decoder takes `past_k / past_v [n_layer, B, H, S, dh]` and returns
 *   `present_k / present_v [n_layer, B, H, S+T, dh]`; the prompt is prefilled once (S = 0), then one token
 *   per step. Rows are left-padded (`attention_mask` 0) so that rows of different lengths share one S.
 * - **Cross-attention memory** (`xattn_k / xattn_v [B, n_layer, H, M, dh]`, `xattn_mask [B, M]`) is
 *   computed once per image or clip by `xattn_kv` and only gathered here, never recomputed per step.
 * - **Continuous batching.** At most `slots` sequences (each `beams` rows) run at once; when one finishes,
 *   a waiting sample is prefilled and joins the running batch at the next step. Off: a batch of `slots`
 *   runs until all of its sequences finish before the next one starts (static batching).
 *
 * What decides the tokens is `GenerationParams` (with the model); `BatchingOptions` only change speed. A
 * sample's tokens do not depend on the other samples in its batch: masked positions get exactly zero
 * attention weight (additive -1e9 before softmax), and each row's computation is independent of the others.
 * Each sequence returns how it ended (`finish`) and the log-probability of every token chosen (`logprobs`,
 * from its own logits: batch-invariant like the tokens).
 */
import { ModelUsageError, PipelineConfigError, ShapeMismatchError } from '../errors.js'
import { elementCount, float32, int64, type Feeds, type TensorData } from '../tensor/tensors.js'
import { KvCache, type CacheShape } from './kv-cache.js'
import type { ModelManifest } from './manifest.js'
import { bestHypothesis, selectNext, type Beam, type Sequence } from './search.js'

/**
 * What decides a generation's tokens (vLLM's `SamplingParams`): the generation settings that enter a run's
 * config hash. The model's facts (end token, positions) come from its manifest.
 */
export interface GenerationParams {
  /** Most generated tokens per sample (the end token not counted). */
  readonly maxNewTokens: number
  /** 1: greedy (argmax, ties to the lowest id); more: beam search with this many beams. */
  readonly beams: number
  /** Beam search: hypothesis score = logprob / length ** lengthPenalty. */
  readonly lengthPenalty: number
  /**
   * Fewest generated tokens per sample (Hugging Face's `min_new_tokens`): until a sample has this many, its
   * end token's logit counts as -∞. = `maxNewTokens`: every text has exactly that length (fixed-length
   * generation, for benchmarks). Absent: 0.
   */
  readonly minNewTokens?: number
}

/** How the loop batches sequences: speed only, never the tokens. */
export interface BatchingOptions {
  /** Sequences decoded at once. */
  readonly slots: number
  /** A finished sequence's slot is taken by a waiting sample at the next step (else: static batches). */
  readonly continuous: boolean
}

/** The decoder's facts, from the manifest. */
export interface DecoderSpec extends CacheShape {
  /** Largest position id + 1 the decoder supports (`dims.max_text_len`): bounds prompt + generated tokens. */
  readonly maxPositions: number
  readonly eos: number
  readonly pad: number
}

/** The decoder's facts in a manifest: positions (`dims.max_text_len`), end and pad tokens, cache dims. */
export function decoderSpecOf(manifest: Pick<ModelManifest, 'dims' | 'special_tokens'>): DecoderSpec {
  const { dims, special_tokens: special } = manifest
  return { maxPositions: dims.max_text_len, eos: special.eos, pad: special.pad, nLayer: dims.n_layer, heads: dims.n_head, headDim: dims.head_dim }
}

export interface GenerationSample {
  /** Row of the cross-attention memory this sample reads. */
  readonly memoryRow: number
  /** Prompt token ids (including `<bos>` and any separator). */
  readonly prompt: readonly number[]
}

/** The cross-attention memory of a batch, as `xattn_kv` returns it. */
export interface MemoryTensors {
  /** `[B, n_layer, H, M, dh]` */
  readonly xattn_k: TensorData
  /** `[B, n_layer, H, M, dh]` */
  readonly xattn_v: TensorData
  /** `[B, M]`, additive: 0 attend, -1e9 masked. */
  readonly xattn_mask: TensorData
}

export interface GeneratedSequence {
  /** Generated ids, the end token excluded. */
  readonly tokens: number[]
  /** `eos`: the model ended it; `length`: it hit the token limit. */
  readonly finish: 'eos' | 'length'
  /**
   * The log-probability of each token the search chose (its log-softmax under the decoder's logits at that
   * step), the end token included when the model ended the text: `tokens.length + 1` values for `eos`,
   * `tokens.length` for `length`. From the sequence's own logits only, so batch-invariant like the tokens.
   */
  readonly logprobs: number[]
}

/** How sure the model was of a text: the mean and the minimum of its tokens' log-probabilities. */
export interface TextConfidence {
  /** Mean token log-probability (≤ 0; `exp` of it is the geometric-mean token probability). */
  readonly mean: number
  /** The least probable token's log-probability. */
  readonly min: number
}

/** The mean and minimum of `logprobs` (null when there is none: a sequence always has one). */
export function textConfidence(logprobs: readonly number[]): TextConfidence | null {
  if (logprobs.length === 0) return null
  let sum = 0
  let min = Infinity
  for (const lp of logprobs) {
    sum += lp
    if (lp < min) min = lp
  }
  return { mean: sum / logprobs.length, min }
}

export interface GenerationStats {
  /** Decoder runs (prefills and steps). */
  readonly decoderRuns: number
  /** Σ over steps of the rows in the step: the work done. */
  readonly rowSteps: number
  /** Tokens generated (end tokens included; every beam's token counts). */
  readonly tokens: number
  /** Milliseconds inside the decoder. */
  readonly decoderMs: number
  /**
   * Most bytes of tensors the loop held at once beside the memory it was given: a decoder run's feeds (the
   * KV cache, memory rows gathered for a subset of the samples, ids and masks) and its outputs.
   */
  readonly peakBytes: number
}

export interface DecoderOutputs {
  /** `[B, T, V]` */
  readonly logits: TensorData
  /** `[n_layer, B, H, S+T, dh]` */
  readonly present_k: TensorData
  readonly present_v: TensorData
}

/** Runs `decoder.onnx` once. */
export type RunDecoder = (feeds: Feeds) => Promise<DecoderOutputs>

/** Throws `PipelineConfigError` naming the first setting that is not a valid integer. */
export function validateGeneration(params: GenerationParams, batching: BatchingOptions): void {
  const integer = (field: string, value: number, min: number) => {
    if (!Number.isInteger(value) || value < min) throw new PipelineConfigError(field, `must be an integer >= ${min}, got ${value}`)
  }
  integer('maxNewTokens', params.maxNewTokens, 1)
  if (params.minNewTokens !== undefined) integer('minNewTokens', params.minNewTokens, 0)
  integer('beams', params.beams, 1)
  integer('slots', batching.slots, 1)
  if (!Number.isFinite(params.lengthPenalty)) throw new PipelineConfigError('lengthPenalty', `must be a finite number, got ${params.lengthPenalty}`)
}

/**
 * Rows `rows` of `memory`, gathered into a contiguous batch: the memory itself (no copy) when `rows` are
 * all of its rows in order, else a copy.
 */
export function gatherMemory(memory: MemoryTensors, rows: readonly number[]): Feeds {
  if (rows.length === memory.xattn_k.dims[0] && rows.every((row, i) => row === i)) return { xattn_k: memory.xattn_k, xattn_v: memory.xattn_v, xattn_mask: memory.xattn_mask }
  const pick = (t: TensorData): TensorData => {
    const per = elementCount(t.dims.slice(1))
    const src = t.data as Float32Array
    const out = new Float32Array(rows.length * per)
    rows.forEach((row, i) => out.set(src.subarray(row * per, (row + 1) * per), i * per))
    return float32([rows.length, ...t.dims.slice(1)], out)
  }
  return { xattn_k: pick(memory.xattn_k), xattn_v: pick(memory.xattn_v), xattn_mask: pick(memory.xattn_mask) }
}

/**
 * The prefill feeds of `prompts` (no cache): left-padded `input_ids`, `position_ids` counting from 0 at
 * each prompt's first token, and the 0/1 mask of real tokens (`[n, T]`, T = the longest prompt).
 */
export function prefillInputs(prompts: readonly (readonly number[])[], pad: number): { feeds: Feeds; mask: Uint8Array; length: number } {
  const t = Math.max(...prompts.map((p) => p.length))
  const n = prompts.length
  const ids = new BigInt64Array(n * t).fill(BigInt(pad))
  const positions = new BigInt64Array(n * t)
  const mask = new Uint8Array(n * t)
  prompts.forEach((prompt, i) => {
    const p = prompt.length
    for (let j = 0; j < p; j++) {
      ids[i * t + (t - p) + j] = BigInt(prompt[j])
      positions[i * t + (t - p) + j] = BigInt(j)
      mask[i * t + (t - p) + j] = 1
    }
  })
  const feeds = {
    input_ids: int64([n, t], ids),
    position_ids: int64([n, t], positions),
    attention_mask: int64([n, t], BigInt64Array.from(mask, (m) => BigInt(m))),
  }
  return { feeds, mask, length: t }
}

/** The samples as sequences waiting to start, each with its token limit; throws on a sample that cannot run. */
function sequencesOf(samples: readonly GenerationSample[], memoryRows: number, maxNewTokens: number, maxPositions: number): Sequence[] {
  return samples.map((sample, index) => {
    if (sample.memoryRow < 0 || sample.memoryRow >= memoryRows) throw new ShapeMismatchError('memoryRow', [`< ${memoryRows}`], [sample.memoryRow])
    if (sample.prompt.length === 0) throw new ModelUsageError(`generate: sample ${index} has an empty prompt`)
    const room = maxPositions - sample.prompt.length
    if (room < 1) throw new ModelUsageError(`generate: sample ${index}: a prompt of ${sample.prompt.length} tokens leaves no room in the decoder's ${maxPositions} positions`)
    return { index, sample, limit: Math.min(maxNewTokens, room), hypotheses: [] }
  })
}

/**
 * Generates a continuation of every sample. Returns one sequence per sample, in sample order, and counters.
 */
export async function generate(
  memory: MemoryTensors,
  samples: readonly GenerationSample[],
  params: GenerationParams,
  batching: BatchingOptions,
  decoder: DecoderSpec,
  runDecoder: RunDecoder,
): Promise<{ sequences: GeneratedSequence[]; stats: GenerationStats }> {
  validateGeneration(params, batching)
  if (!Number.isInteger(decoder.maxPositions) || decoder.maxPositions < 2) throw new ModelUsageError(`generate: maxPositions must be an integer >= 2, got ${decoder.maxPositions}`)
  const search = { beams: params.beams, lengthPenalty: params.lengthPenalty, eos: decoder.eos, minNewTokens: params.minNewTokens ?? 0 }
  const results: (GeneratedSequence | undefined)[] = new Array(samples.length)
  const stats = { decoderRuns: 0, rowSteps: 0, tokens: 0, decoderMs: 0, peakBytes: 0 }
  const given = new Set<unknown>([memory.xattn_k.data, memory.xattn_v.data, memory.xattn_mask.data])
  const bytesOf = (tensors: Iterable<TensorData>) => {
    let bytes = 0
    for (const t of tensors) if (!given.has(t.data)) bytes += t.data.byteLength
    return bytes
  }
  const waiting = sequencesOf(samples, memory.xattn_k.dims[0], params.maxNewTokens, decoder.maxPositions).reverse() // pop() takes the next

  const run = async (feeds: Feeds): Promise<DecoderOutputs> => {
    const began = performance.now()
    const out = await runDecoder(feeds)
    stats.peakBytes = Math.max(stats.peakBytes, bytesOf(Object.values(feeds)) + bytesOf(Object.values(out)))
    stats.decoderMs += performance.now() - began
    stats.decoderRuns += 1
    stats.rowSteps += feeds.input_ids.dims[0]
    return out
  }

  /** Chooses the next beams of `rows` from `logits`, records finished sequences; the cache follows the parents. */
  const advance = (rows: readonly Beam[], logits: TensorData, cache: KvCache): { beams: Beam[]; cache: KvCache } => {
    const { next, parents, finished } = selectNext(rows, logits, search)
    stats.tokens += rows.length
    for (const sequence of finished) {
      const best = bestHypothesis(sequence)
      results[sequence.index] = { tokens: best.tokens, finish: best.finish, logprobs: best.logprobs }
    }
    const identity = parents.length === rows.length && parents.every((p, i) => p === i)
    return { beams: next, cache: identity ? cache : cache.gather(parents) }
  }

  let memoryRows = ''
  let memoryFeeds: Feeds | undefined
  /** The memory rows of `rows`, gathered again only when the running rows changed. */
  const memoryFor = (rows: readonly Beam[]): Feeds => {
    const ids = rows.map((b) => b.sequence.sample.memoryRow)
    const key = ids.join(',')
    if (key !== memoryRows || !memoryFeeds) {
      memoryFeeds = gatherMemory(memory, ids)
      memoryRows = key
    }
    return memoryFeeds
  }

  /** Prefills the prompts of `joining` (empty cache) and returns their first beams and cache. */
  const prefill = async (joining: readonly Sequence[]): Promise<{ beams: Beam[]; cache: KvCache }> => {
    const n = joining.length
    const { feeds, mask, length } = prefillInputs(joining.map((s) => s.sample.prompt), decoder.pad)
    const empty = [decoder.nLayer, n, decoder.heads, 0, decoder.headDim]
    const out = await run({ ...feeds, past_k: float32(empty), past_v: float32(empty), ...gatherMemory(memory, joining.map((s) => s.sample.memoryRow)) })
    const rows: Beam[] = joining.map((s) => ({ sequence: s, tokens: [], logprobs: [], score: 0, position: s.sample.prompt.length - 1 }))
    return advance(rows, out.logits, KvCache.fromPresent(decoder, n, length, out.present_k, out.present_v, mask))
  }

  /** One token for every running beam. */
  const step = async (beams: readonly Beam[], cache: KvCache): Promise<{ beams: Beam[]; cache: KvCache }> => {
    const n = beams.length
    const out = await run({
      input_ids: int64([n, 1], beams.map((b) => b.tokens[b.tokens.length - 1])),
      position_ids: int64([n, 1], beams.map((b) => b.position)),
      attention_mask: int64([n, cache.length + 1], cache.stepAttention()),
      ...cache.feeds(),
      ...memoryFor(beams),
    })
    const next = advance(beams, out.logits, cache.extended(out.present_k, out.present_v, new Uint8Array(n).fill(1), 1))
    return { beams: next.beams, cache: next.cache.trim() }
  }

  let running: Beam[] = []
  let cache = KvCache.empty(decoder)
  while (waiting.length > 0 || running.length > 0) {
    const sequences = new Set(running.map((b) => b.sequence)).size
    const free = batching.continuous || sequences === 0 ? batching.slots - sequences : 0
    if (free > 0 && waiting.length > 0) {
      const joining: Sequence[] = []
      while (joining.length < free && waiting.length > 0) joining.push(waiting.pop()!)
      const joined = await prefill(joining)
      running = [...running, ...joined.beams]
      cache = cache.concat(joined.cache)
    }
    if (running.length === 0) continue
    const next = await step(running, cache)
    running = next.beams
    cache = next.cache
  }
  return { sequences: results.map((r) => r!), stats }
}
