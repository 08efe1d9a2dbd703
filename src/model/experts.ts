/**
 * Sparse dispatch of visual tokens to experts (EVLM-MoE / Eve), exactly as the manifest's `experts` rules say:
 * per token the `top_k` largest router logits (ties: lower expert id first), weights = softmax over those k
 * logits, then `refined = tokens + shared_out + Σ_j w_j · expert_out_{e_j}` summed in j order.
 *
 * One dispatch per batch: the tokens routed to an expert are gathered into one contiguous tensor and that
 * expert runs once on them; results are scattered back. There is no capacity limit, so a token's result never
 * depends on the rest of the batch.
 */
import { float32, int64, type Feeds, type TensorData } from '../tensor/tensors.js'

export interface Routing {
  /** `[N, k]` expert of each token's j-th choice. */
  readonly experts: Int32Array
  /** `[N, k]` weight of each choice. */
  readonly weights: Float32Array
  /** Per expert, the (token, j) pairs routed to it, as `token * k + j`, ascending. */
  readonly groups: readonly Int32Array[]
}

/** The top-k choice and weights of every token from `router_logits [N, E]`. */
export function routeTokens(logits: Float32Array, n: number, e: number, k: number): Routing {
  const experts = new Int32Array(n * k)
  const weights = new Float32Array(n * k)
  const counts = new Int32Array(e)
  const chosen = new Float64Array(k)
  for (let t = 0; t < n; t++) {
    const row = t * e
    for (let j = 0; j < k; j++) {
      let best = -1
      for (let x = 0; x < e; x++) {
        let taken = false
        for (let i = 0; i < j; i++) if (experts[t * k + i] === x) taken = true
        if (taken) continue
        if (best < 0 || logits[row + x] > logits[row + best]) best = x
      }
      experts[t * k + j] = best
      chosen[j] = logits[row + best]
      counts[best] += 1
    }
    // softmax over the k chosen logits (chosen[0] is the largest)
    let sum = 0
    for (let j = 0; j < k; j++) sum += Math.exp(chosen[j] - chosen[0])
    for (let j = 0; j < k; j++) weights[t * k + j] = Math.exp(chosen[j] - chosen[0]) / sum
  }
  const groups = Array.from(counts, (c) => new Int32Array(c))
  const filled = new Int32Array(e)
  for (let slot = 0; slot < n * k; slot++) {
    const x = experts[slot]
    groups[x][filled[x]++] = slot
  }
  return { experts, weights, groups }
}

export type RunGraph = (graph: 'router' | 'experts', feeds: Feeds) => Promise<Record<string, TensorData>>

export interface DispatchResult {
  /** `[N, D]` refined tokens. */
  readonly refined: TensorData
  /** Tokens routed to each expert (each token counts once per choice). */
  readonly load: number[]
}

/** Runs the router on `tokens [N, D]`, each expert once on its tokens, and combines. */
export async function dispatchToExperts(tokens: TensorData, topK: number, run: RunGraph): Promise<DispatchResult> {
  const [n, d] = tokens.dims
  const x = tokens.data as Float32Array
  const routed = await run('router', { tokens: float32([n, d], x.slice()) })
  const logits = routed.router_logits
  const e = logits.dims[1]
  const routing = routeTokens(logits.data as Float32Array, n, e, topK)
  // contributions[(token * k + j) * d ...] = expert_out of that choice
  const contributions = new Float32Array(n * topK * d)
  for (let expert = 0; expert < e; expert++) {
    const group = routing.groups[expert]
    if (group.length === 0) continue
    const input = new Float32Array(group.length * d)
    group.forEach((slot, i) => {
      const token = Math.floor(slot / topK)
      input.set(x.subarray(token * d, (token + 1) * d), i * d)
    })
    const out = await run('experts', { tokens: float32([group.length, d], input), expert_id: int64([], [expert]) })
    const values = out.expert_out.data as Float32Array
    group.forEach((slot, i) => contributions.set(values.subarray(i * d, (i + 1) * d), slot * d))
  }
  const shared = routed.shared_out.data as Float32Array
  const refined = new Float32Array(n * d)
  for (let t = 0; t < n; t++) {
    for (let c = 0; c < d; c++) {
      let value = x[t * d + c] + shared[t * d + c]
      for (let j = 0; j < topK; j++) value += routing.weights[t * topK + j] * contributions[(t * topK + j) * d + c]
      refined[t * d + c] = value
    }
  }
  return { refined: float32([n, d], refined), load: routing.groups.map((g) => g.length) }
}
