/**
 * The text generation loop of a cross-attention decoder (`decoder.onnx`), run inside an inference worker:
 * one call generates every sample of a batch, so the main thread sends one message per batch, not per token.
 *
 * - **KV cache.** The decoder takes `past_k / past_v [n_layer, B, H, S, dh]` and returns
 *   `present_k / present_v [n_layer, B, H, S+T, dh]`; the prompt is prefilled once (S = 0), then one token
 *   per step. Rows are left-padded (`attention_mask` 0) so that rows of different lengths share one S.
 * - **Cross-attention memory** (`xattn_k / xattn_v [B, n_layer, H, M, dh]`, `xattn_mask [B, M]`) is
 *   computed once per image or clip by `xattn_kv` and only gathered here, never recomputed per step.
 * - **Continuous batching.** At most `slots` sequences (each `beams` rows) run at once; when one finishes,
 *   a waiting sample is prefilled and joins the running batch at the next step. Off: a batch of `slots`
 *   runs until all of its sequences finish before the next one starts (static batching).
 * - **Greedy** (`beams` 1): argmax, ties to the lowest id. **Beam search** (`beams` > 1): the `beams` best
 *   continuations by summed log-probability; a beam that ends yields a hypothesis scored by
 *   `logprob / length ** lengthPenalty`; a sequence stops once it has `beams` hypotheses (or hits the
 *   length limit, when its running beams become hypotheses too) and returns the best.
 *
 * A sample's tokens do not depend on the other samples in its batch: masked positions get exactly zero
 * attention weight (additive -1e9 before softmax), and each row's computation is independent of the others.
 */
import { ShapeMismatchError } from '../errors.js'
import { elementCount, float32, int64, type Feeds, type TensorData } from '../tensor/tensors.js'

export interface GenerationSample {
  /** Row of the cross-attention memory this sample reads. */
  readonly memoryRow: number
  /** Prompt token ids (including `<bos>` and any separator). */
  readonly prompt: readonly number[]
}

export interface GenerationOptions {
  /** Most generated tokens per sample (the end token not counted). */
  readonly maxNewTokens: number
  /** Largest position id + 1 the decoder supports (`dims.max_text_len`): bounds prompt + generated tokens. */
  readonly maxPositions: number
  /** 1: greedy; more: beam search with this many beams. */
  readonly beams: number
  /** Sequences decoded at once. */
  readonly slots: number
  /** A finished sequence's slot is taken by a waiting sample at the next step. */
  readonly continuous: boolean
  readonly eos: number
  readonly pad: number
  /** Beam search: hypothesis score = logprob / length ** lengthPenalty. Default 1. */
  readonly lengthPenalty?: number
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
}

export interface GenerationStats {
  /** Decoder runs (prefills and steps). */
  readonly decoderRuns: number
  /** Σ over steps of the rows in the step: the work done. */
  readonly rowSteps: number
  /** Tokens generated (end tokens included). */
  readonly tokens: number
  /** Milliseconds inside the decoder. */
  readonly decoderMs: number
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

/** A self-attention cache: `k`, `v` `[nl, rows, H, S, dh]` and a 0/1 mask per row and position. */
class KvCache {
  constructor(
    readonly nl: number,
    readonly heads: number,
    readonly dh: number,
    readonly rows: number,
    readonly length: number,
    readonly k: Float32Array,
    readonly v: Float32Array,
    /** `[rows, length]` */
    readonly mask: Uint8Array,
  ) {}

  static empty(nl: number, heads: number, dh: number): KvCache {
    return new KvCache(nl, heads, dh, 0, 0, new Float32Array(0), new Float32Array(0), new Uint8Array(0))
  }

  /** The cache of rows `indices` (in that order; an index may repeat). */
  gather(indices: readonly number[]): KvCache {
    const { nl, heads, dh, length } = this
    const span = length * dh
    const rows = indices.length
    const k = new Float32Array(nl * rows * heads * span)
    const v = new Float32Array(k.length)
    const mask = new Uint8Array(rows * length)
    for (let l = 0; l < nl; l++) {
      for (let r = 0; r < rows; r++) {
        const src = (l * this.rows + indices[r]) * heads * span
        const dst = (l * rows + r) * heads * span
        k.set(this.k.subarray(src, src + heads * span), dst)
        v.set(this.v.subarray(src, src + heads * span), dst)
      }
    }
    indices.forEach((from, r) => mask.set(this.mask.subarray(from * length, (from + 1) * length), r * length))
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  /** This cache's rows then `other`'s, right-aligned to the longer length (left padding masked). */
  concat(other: KvCache): KvCache {
    if (this.rows === 0) return other
    if (other.rows === 0) return this
    const { nl, heads, dh } = this
    const length = Math.max(this.length, other.length)
    const rows = this.rows + other.rows
    const k = new Float32Array(nl * rows * heads * length * dh)
    const v = new Float32Array(k.length)
    const mask = new Uint8Array(rows * length)
    const place = (cache: KvCache, rowOffset: number) => {
      const shift = length - cache.length
      for (let l = 0; l < nl; l++) {
        for (let r = 0; r < cache.rows; r++) {
          for (let h = 0; h < heads; h++) {
            const src = ((l * cache.rows + r) * heads + h) * cache.length * dh
            const dst = (((l * rows + rowOffset + r) * heads + h) * length + shift) * dh
            k.set(cache.k.subarray(src, src + cache.length * dh), dst)
            v.set(cache.v.subarray(src, src + cache.length * dh), dst)
          }
        }
      }
      for (let r = 0; r < cache.rows; r++) mask.set(cache.mask.subarray(r * cache.length, (r + 1) * cache.length), (rowOffset + r) * length + shift)
    }
    place(this, 0)
    place(other, this.rows)
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  /** Drops leading positions that every row masks (left padding no row needs any more). */
  trim(): KvCache {
    let drop = 0
    while (drop < this.length && this.maskedForAll(drop)) drop++
    if (drop === 0) return this
    const { nl, heads, dh, rows } = this
    const length = this.length - drop
    const k = new Float32Array(nl * rows * heads * length * dh)
    const v = new Float32Array(k.length)
    for (let block = 0; block < nl * rows * heads; block++) {
      const src = (block * this.length + drop) * dh
      k.set(this.k.subarray(src, src + length * dh), block * length * dh)
      v.set(this.v.subarray(src, src + length * dh), block * length * dh)
    }
    const mask = new Uint8Array(rows * length)
    for (let r = 0; r < rows; r++) mask.set(this.mask.subarray(r * this.length + drop, (r + 1) * this.length), r * length)
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  private maskedForAll(position: number): boolean {
    for (let r = 0; r < this.rows; r++) if (this.mask[r * this.length + position] !== 0) return false
    return true
  }

  /** The cache after a decoder run that appended `t` positions (the run's `present_*`, masks extended). */
  extended(present_k: TensorData, present_v: TensorData, appendedMask: Uint8Array, t: number): KvCache {
    const length = this.length + t
    const mask = new Uint8Array(this.rows * length)
    for (let r = 0; r < this.rows; r++) {
      mask.set(this.mask.subarray(r * this.length, (r + 1) * this.length), r * length)
      mask.set(appendedMask.subarray(r * t, (r + 1) * t), r * length + this.length)
    }
    return new KvCache(this.nl, this.heads, this.dh, this.rows, length, present_k.data as Float32Array, present_v.data as Float32Array, mask)
  }

  feeds(): { past_k: TensorData; past_v: TensorData } {
    const dims = [this.nl, this.rows, this.heads, this.length, this.dh]
    return { past_k: float32(dims, this.k), past_v: float32(dims, this.v) }
  }
}

/** A sample being decoded. */
interface Sequence {
  readonly index: number
  readonly sample: GenerationSample
  /** Most tokens it may generate. */
  readonly limit: number
  readonly hypotheses: { tokens: number[]; score: number; finish: 'eos' | 'length' }[]
}

/** A row of the running batch: one beam of a sequence. */
interface Beam {
  readonly sequence: Sequence
  readonly tokens: number[]
  /** Summed log-probability (beam search). */
  readonly score: number
  /** Position id of its last token (the one the next step feeds). */
  readonly position: number
}

/** Rows `rows` of `memory`, gathered into a contiguous batch. */
function gatherMemory(memory: MemoryTensors, rows: readonly number[]): Feeds {
  const pick = (t: TensorData): TensorData => {
    const per = elementCount(t.dims.slice(1))
    const src = t.data as Float32Array
    const out = new Float32Array(rows.length * per)
    rows.forEach((row, i) => out.set(src.subarray(row * per, (row + 1) * per), i * per))
    return float32([rows.length, ...t.dims.slice(1)], out)
  }
  return { xattn_k: pick(memory.xattn_k), xattn_v: pick(memory.xattn_v), xattn_mask: pick(memory.xattn_mask) }
}

function argmax(values: Float32Array, start: number, size: number): number {
  let best = 0
  let bestValue = values[start]
  for (let i = 1; i < size; i++) {
    if (values[start + i] > bestValue) {
      bestValue = values[start + i]
      best = i
    }
  }
  return best
}

function logSoftmax(values: Float32Array, start: number, size: number): Float64Array {
  let max = -Infinity
  for (let i = 0; i < size; i++) max = Math.max(max, values[start + i])
  let sum = 0
  for (let i = 0; i < size; i++) sum += Math.exp(values[start + i] - max)
  const lse = max + Math.log(sum)
  const out = new Float64Array(size)
  for (let i = 0; i < size; i++) out[i] = values[start + i] - lse
  return out
}

export function validateGenerationOptions(options: GenerationOptions): void {
  const check = (field: string, value: number, min: number) => {
    if (!Number.isInteger(value) || value < min) throw new RangeError(`${field} must be an integer >= ${min}, got ${value}`)
  }
  check('maxNewTokens', options.maxNewTokens, 1)
  check('beams', options.beams, 1)
  check('slots', options.slots, 1)
  check('maxPositions', options.maxPositions, 2)
}

/**
 * Generates a continuation of every sample. Returns one sequence per sample, in sample order, and counters.
 */
export async function generate(
  memory: MemoryTensors,
  samples: readonly GenerationSample[],
  options: GenerationOptions,
  runDecoder: RunDecoder,
  cacheShape: { nLayer: number; heads: number; headDim: number },
): Promise<{ sequences: GeneratedSequence[]; stats: GenerationStats }> {
  validateGenerationOptions(options)
  const memoryRows = memory.xattn_k.dims[0]
  const results: (GeneratedSequence | undefined)[] = new Array(samples.length)
  const stats = { decoderRuns: 0, rowSteps: 0, tokens: 0, decoderMs: 0 }
  const { eos, pad, beams } = options
  const lengthPenalty = options.lengthPenalty ?? 1
  const queue: Sequence[] = samples.map((sample, index) => {
    if (sample.memoryRow < 0 || sample.memoryRow >= memoryRows) throw new ShapeMismatchError('memoryRow', [`< ${memoryRows}`], [sample.memoryRow])
    if (sample.prompt.length === 0) throw new RangeError(`sample ${index} has an empty prompt`)
    const room = options.maxPositions - sample.prompt.length
    if (room < 1) throw new RangeError(`sample ${index}: a prompt of ${sample.prompt.length} tokens leaves no room in the decoder's ${options.maxPositions} positions`)
    return { index, sample, limit: Math.min(options.maxNewTokens, room), hypotheses: [] }
  })
  queue.reverse() // pop() takes the next sample

  let beamsNow: Beam[] = []
  let cache = KvCache.empty(cacheShape.nLayer, cacheShape.heads, cacheShape.headDim)
  let memoryFeeds: Feeds | undefined
  let memoryKey = ''

  const run = async (feeds: Feeds): Promise<DecoderOutputs> => {
    const began = performance.now()
    const out = await runDecoder(feeds)
    stats.decoderMs += performance.now() - began
    stats.decoderRuns += 1
    stats.rowSteps += feeds.input_ids.dims[0]
    return out
  }

  const finish = (sequence: Sequence) => {
    let best = sequence.hypotheses[0]
    for (const h of sequence.hypotheses) if (h.score > best.score) best = h
    results[sequence.index] = { tokens: best.tokens, finish: best.finish }
  }

  /**
   * Chooses the next rows from the logits of `rows` (the last position of each): per sequence, greedy or
   * beam search. Returns the new beams and, for each, the cache row it continues.
   */
  const select = (rows: readonly Beam[], logits: TensorData): { next: Beam[]; parents: number[] } => {
    const [, t, vocab] = logits.dims
    const values = logits.data as Float32Array
    const next: Beam[] = []
    const parents: number[] = []
    let r = 0
    while (r < rows.length) {
      const sequence = rows[r].sequence
      let end = r
      while (end < rows.length && rows[end].sequence === sequence) end++
      const offset = (i: number) => (i * t + t - 1) * vocab
      if (beams === 1) {
        const beam = rows[r]
        const token = argmax(values, offset(r), vocab)
        stats.tokens += 1
        const tokens = token === eos ? beam.tokens : [...beam.tokens, token]
        if (token === eos || tokens.length >= sequence.limit) {
          sequence.hypotheses.push({ tokens, score: 0, finish: token === eos ? 'eos' : 'length' })
          finish(sequence)
        } else {
          next.push({ sequence, tokens, score: 0, position: beam.position + 1 })
          parents.push(r)
        }
      } else {
        const candidates: { row: number; token: number; score: number }[] = []
        for (let i = r; i < end; i++) {
          const logp = logSoftmax(values, offset(i), vocab)
          // the 2·beams best tokens of this row are enough: at most `beams` candidates can end
          const order = Array.from(logp.keys()).sort((a, b) => logp[b] - logp[a] || a - b).slice(0, 2 * beams)
          for (const token of order) candidates.push({ row: i, token, score: rows[i].score + logp[token] })
        }
        candidates.sort((a, b) => b.score - a.score || a.row - b.row || a.token - b.token)
        stats.tokens += end - r
        const kept: { row: number; token: number; score: number }[] = []
        for (const [rank, c] of candidates.entries()) {
          if (c.token === eos) {
            if (rank < beams) {
              const tokens = rows[c.row].tokens
              sequence.hypotheses.push({ tokens, score: c.score / Math.max(1, tokens.length + 1) ** lengthPenalty, finish: 'eos' })
            }
          } else kept.push(c)
          if (kept.length === beams) break
        }
        const length = rows[r].tokens.length + 1
        if (sequence.hypotheses.length >= beams || length >= sequence.limit) {
          if (sequence.hypotheses.length < beams) {
            for (const c of kept.slice(0, beams - sequence.hypotheses.length)) {
              const tokens = [...rows[c.row].tokens, c.token]
              sequence.hypotheses.push({ tokens, score: c.score / tokens.length ** lengthPenalty, finish: 'length' })
            }
          }
          finish(sequence)
        } else {
          for (const c of kept) {
            next.push({ sequence, tokens: [...rows[c.row].tokens, c.token], score: c.score, position: rows[c.row].position + 1 })
            parents.push(c.row)
          }
        }
      }
      r = end
    }
    return { next, parents }
  }

  const memoryFor = (rows: readonly Beam[]): Feeds => {
    const ids = rows.map((b) => b.sequence.sample.memoryRow)
    const key = ids.join(',')
    if (key !== memoryKey || !memoryFeeds) {
      memoryFeeds = gatherMemory(memory, ids)
      memoryKey = key
    }
    return memoryFeeds
  }

  /** Prefills the prompts of `joining` (empty cache) and returns their first beams and cache. */
  const prefill = async (joining: Sequence[]): Promise<{ beams: Beam[]; cache: KvCache }> => {
    const t = Math.max(...joining.map((s) => s.sample.prompt.length))
    const n = joining.length
    const ids = new BigInt64Array(n * t).fill(BigInt(pad))
    const positions = new BigInt64Array(n * t)
    const mask = new Uint8Array(n * t)
    joining.forEach((s, i) => {
      const p = s.sample.prompt.length
      for (let j = 0; j < p; j++) {
        ids[i * t + (t - p) + j] = BigInt(s.sample.prompt[j])
        positions[i * t + (t - p) + j] = BigInt(j)
        mask[i * t + (t - p) + j] = 1
      }
    })
    const rows: Beam[] = joining.map((s) => ({ sequence: s, tokens: [], score: 0, position: s.sample.prompt.length - 1 }))
    const emptyFeeds = { past_k: float32([cache.nl, n, cache.heads, 0, cache.dh]), past_v: float32([cache.nl, n, cache.heads, 0, cache.dh]) }
    const out = await run({
      input_ids: int64([n, t], ids),
      position_ids: int64([n, t], positions),
      attention_mask: int64([n, t], BigInt64Array.from(mask, (m) => BigInt(m))),
      ...emptyFeeds,
      ...gatherMemory(memory, joining.map((s) => s.sample.memoryRow)),
    })
    const prefilled = new KvCache(cache.nl, cache.heads, cache.dh, n, t, out.present_k.data as Float32Array, out.present_v.data as Float32Array, mask)
    const { next, parents } = select(rows, out.logits)
    const identity = parents.length === n && parents.every((p, i) => p === i)
    return { beams: next, cache: identity ? prefilled : prefilled.gather(parents) }
  }

  while (queue.length > 0 || beamsNow.length > 0) {
    const running = new Set(beamsNow.map((b) => b.sequence)).size
    const free = options.continuous || running === 0 ? options.slots - running : 0
    if (free > 0 && queue.length > 0) {
      const joining: Sequence[] = []
      while (joining.length < free && queue.length > 0) joining.push(queue.pop()!)
      const joined = await prefill(joining)
      beamsNow = [...beamsNow, ...joined.beams]
      cache = cache.concat(joined.cache)
      if (beamsNow.length === 0) continue
    }
    if (beamsNow.length === 0) continue
    const n = beamsNow.length
    const stepMask = new Uint8Array(n).fill(1)
    const attention = new BigInt64Array(n * (cache.length + 1))
    for (let r = 0; r < n; r++) {
      for (let j = 0; j < cache.length; j++) attention[r * (cache.length + 1) + j] = BigInt(cache.mask[r * cache.length + j])
      attention[r * (cache.length + 1) + cache.length] = 1n
    }
    const out = await run({
      input_ids: int64([n, 1], beamsNow.map((b) => b.tokens[b.tokens.length - 1])),
      position_ids: int64([n, 1], beamsNow.map((b) => b.position)),
      attention_mask: int64([n, cache.length + 1], attention),
      ...cache.feeds(),
      ...memoryFor(beamsNow),
    })
    const extended = cache.extended(out.present_k, out.present_v, stepMask, 1)
    const { next, parents } = select(beamsNow, out.logits)
    const identity = parents.length === n && parents.every((p, i) => p === i)
    cache = (identity ? extended : extended.gather(parents)).trim()
    beamsNow = next
  }
  return { sequences: results.map((r) => r!), stats }
}
