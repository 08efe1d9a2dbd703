/**
 * Choosing the next tokens from the decoder's logits: greedy (argmax, ties to the lowest id) or beam search.
 * Pure functions of the logits and the running beams; the generation loop (generate.ts) runs the decoder and
 * keeps the cache. Each sequence is chosen from its own rows' logits only, so a sample's tokens never depend
 * on the other samples of its batch.
 *
 * Beam search keeps the `beams` best continuations by summed log-probability; a beam that ends yields a
 * hypothesis scored by `logprob / length ** lengthPenalty`; a sequence stops once it has `beams` hypotheses
 * (or hits its length limit, when its best running beams become hypotheses too) and returns the best.
 *
 * Every chosen token carries its log-probability (its log-softmax under the row's own logits), greedy or
 * beam: a hypothesis's `logprobs` are those of its own tokens, so their sum is its unnormalised score.
 *
 * `minNewTokens` (Hugging Face's `min_new_tokens`): while a beam has generated fewer tokens, its end token's
 * logit counts as -∞ (before the log-softmax, so the other tokens' probabilities are renormalised without it):
 * it cannot end. With `minNewTokens` = the token limit every sequence has exactly that many tokens.
 */
import type { TensorData } from '../tensor/tensors.js'
import type { GenerationSample } from './generate.js'

/** A finished candidate of a sequence. */
export interface Hypothesis {
  readonly tokens: number[]
  /**
   * The log-probability of each token chosen, the end token included when the model ended the text: the
   * log-softmax of the decoder's logits at that step, from the beam's own row only (batch-invariant).
   */
  readonly logprobs: number[]
  readonly score: number
  readonly finish: 'eos' | 'length'
}

/** A sample being decoded. */
export interface Sequence {
  /** The sample's index in the request (results are returned in sample order). */
  readonly index: number
  readonly sample: GenerationSample
  /** Most tokens it may generate. */
  readonly limit: number
  readonly hypotheses: Hypothesis[]
}

/** A row of the running batch: one beam of a sequence. */
export interface Beam {
  readonly sequence: Sequence
  readonly tokens: number[]
  /** The log-probability of each of `tokens` (see `Hypothesis.logprobs`). */
  readonly logprobs: number[]
  /** Summed log-probability (beam search; 0 for greedy). */
  readonly score: number
  /** Position id of its last token (the one the next step feeds). */
  readonly position: number
}

export interface SearchParams {
  /** 1: greedy; more: beam search with this many beams. */
  readonly beams: number
  /** Beam search: hypothesis score = logprob / length ** lengthPenalty. */
  readonly lengthPenalty: number
  readonly eos: number
  /** A beam with fewer generated tokens cannot choose `eos` (its logit counts as -∞). Default 0. */
  readonly minNewTokens?: number
}

export interface Selection {
  /** The beams that go on, grouped by sequence in the order of the input rows. */
  readonly next: Beam[]
  /** For each of `next`, the input row it continues (the cache row to keep). */
  readonly parents: number[]
  /** Sequences that finished at this step (their hypotheses are complete). */
  readonly finished: Sequence[]
}

/** The index of the largest of `values[start, start + size)`, the lowest among equals; `excluded` (an index) never wins. */
/** The index of the largest of `values[start, start + size)`, the lowest among equals; `excluded` (an index) never wins. */
export function argmax(values: Float32Array, start: number, size: number, excluded = -1): number {
  let best = -1
  let bestValue = -Infinity
  for (let i = 0; i < size; i++) {
    if (i === excluded) continue
    if (best < 0 || values[start + i] > bestValue) {
      bestValue = values[start + i]
      best = i
    }
  }
  return best
}

/** log Σ exp of `values[start, start + size)` without `excluded` (an index), computed stably (in float64). */
function logSumExp(values: Float32Array, start: number, size: number, excluded = -1): number {
  let max = -Infinity
  for (let i = 0; i < size; i++) if (i !== excluded) max = Math.max(max, values[start + i])
  let sum = 0
  for (let i = 0; i < size; i++) if (i !== excluded) sum += Math.exp(values[start + i] - max)
  return max + Math.log(sum)
}

/** Log-softmax of `values[start, start + size)` in float64; `excluded` (an index) gets -∞ and no probability. */
export function logSoftmax(values: Float32Array, start: number, size: number, excluded = -1): Float64Array {
  const lse = logSumExp(values, start, size, excluded)
  const out = new Float64Array(size)
  for (let i = 0; i < size; i++) out[i] = i === excluded ? -Infinity : values[start + i] - lse
  return out
}

/** The log-probability of `token` under the logits `values[start, start + size)`: its log-softmax (without `excluded`). */
export function tokenLogprob(values: Float32Array, start: number, size: number, token: number, excluded = -1): number {
  return values[start + token] - logSumExp(values, start, size, excluded)
}

/** The best hypothesis of a finished sequence (the first of equal scores). */
export function bestHypothesis(sequence: Sequence): Hypothesis {
  let best = sequence.hypotheses[0]
  for (const h of sequence.hypotheses) if (h.score > best.score) best = h
  return best
}

/**
 * Chooses the next rows from `logits [rows, T, V]` (the last position of each row): per sequence (its rows
 * are consecutive), greedy or beam search.
 */
export function selectNext(rows: readonly Beam[], logits: TensorData, params: SearchParams): Selection {
  const [, t, vocab] = logits.dims
  const values = logits.data as Float32Array
  const selection: Selection = { next: [], parents: [], finished: [] }
  const lastPosition = (row: number) => (row * t + t - 1) * vocab
  // the end token is out of reach of a row that has generated fewer than minNewTokens tokens
  const minNewTokens = params.minNewTokens ?? 0
  const excluded = (row: number) => (rows[row].tokens.length < minNewTokens ? params.eos : -1)
  let r = 0
  while (r < rows.length) {
    const sequence = rows[r].sequence
    let end = r
    while (end < rows.length && rows[end].sequence === sequence) end++
    if (params.beams === 1) {
      const token = argmax(values, lastPosition(r), vocab, excluded(r))
      selectGreedy(rows[r], r, token, tokenLogprob(values, lastPosition(r), vocab, token, excluded(r)), params, selection)
    }
    else selectBeams(rows, r, end, (i) => logSoftmax(values, lastPosition(i), vocab, excluded(i)), params, selection)
    r = end
  }
  return selection
}

/** Greedy: the row's argmax token ends the sequence (`eos`, or its length limit) or extends its one beam. */
function selectGreedy(beam: Beam, row: number, token: number, logprob: number, params: SearchParams, selection: Selection): void {
  const { sequence } = beam
  const tokens = token === params.eos ? beam.tokens : [...beam.tokens, token]
  const logprobs = [...beam.logprobs, logprob]
  if (token === params.eos || tokens.length >= sequence.limit) {
    sequence.hypotheses.push({ tokens, logprobs, score: 0, finish: token === params.eos ? 'eos' : 'length' })
    selection.finished.push(sequence)
  } else {
    selection.next.push({ sequence, tokens, logprobs, score: 0, position: beam.position + 1 })
    selection.parents.push(row)
  }
}

/** Beam search over the rows `[start, end)` of one sequence. */
function selectBeams(rows: readonly Beam[], start: number, end: number, logProbabilities: (row: number) => Float64Array, params: SearchParams, selection: Selection): void {
  const { beams, eos, lengthPenalty } = params
  const sequence = rows[start].sequence
  const candidates: { row: number; token: number; logprob: number; score: number }[] = []
  for (let i = start; i < end; i++) {
    const logp = logProbabilities(i)
    // the 2·beams best tokens of this row are enough: at most `beams` candidates can end
    const order = Array.from(logp.keys()).sort((a, b) => logp[b] - logp[a] || a - b).slice(0, 2 * beams)
    for (const token of order) candidates.push({ row: i, token, logprob: logp[token], score: rows[i].score + logp[token] })
  }
  candidates.sort((a, b) => b.score - a.score || a.row - b.row || a.token - b.token)
  const kept: typeof candidates = []
  for (const [rank, c] of candidates.entries()) {
    if (c.token === eos) {
      if (rank < beams) {
        const tokens = rows[c.row].tokens
        const logprobs = [...rows[c.row].logprobs, c.logprob]
        sequence.hypotheses.push({ tokens, logprobs, score: c.score / Math.max(1, tokens.length + 1) ** lengthPenalty, finish: 'eos' })
      }
    } else kept.push(c)
    if (kept.length === beams) break
  }
  const length = rows[start].tokens.length + 1
  if (sequence.hypotheses.length >= beams || length >= sequence.limit) {
    if (sequence.hypotheses.length < beams) {
      for (const c of kept.slice(0, beams - sequence.hypotheses.length)) {
        const tokens = [...rows[c.row].tokens, c.token]
        const logprobs = [...rows[c.row].logprobs, c.logprob]
        sequence.hypotheses.push({ tokens, logprobs, score: c.score / tokens.length ** lengthPenalty, finish: 'length' })
      }
    }
    selection.finished.push(sequence)
  } else {
    for (const c of kept) {
      selection.next.push({
        sequence,
        tokens: [...rows[c.row].tokens, c.token],
        logprobs: [...rows[c.row].logprobs, c.logprob],
        score: c.score,
        position: rows[c.row].position + 1,
      })
      selection.parents.push(c.row)
    }
  }
}
