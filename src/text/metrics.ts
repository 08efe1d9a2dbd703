/**
 * Caption and VQA metrics, as pure functions of strings: exact match, corpus BLEU-4, CIDEr-D and VQA
 * accuracy. Each takes one candidate and one reference per row (the scenes have a single reference).
 *
 * Definitions follow coco-caption (`pycocoevalcap`), the code behind most published caption figures:
 * - BLEU-4: corpus-level, clipped n-gram precisions for n = 1..4 summed over all rows, geometric mean,
 *   times the brevity penalty `exp(1 - r/c)` when the candidates are shorter than the references in total
 *   (`c < r`). Without smoothing: a zero precision gives 0 (as sacrebleu; coco-caption adds 1e-15 and
 *   returns a number below 1e-3 instead).
 * - CIDEr-D: per row, for n = 1..4, the cosine similarity of tf-idf vectors of the candidate and the
 *   reference, the candidate's weights clipped to the reference's (`min(c, r) * r` in the dot product),
 *   times a Gaussian length penalty `exp(-Δ² / 2σ²)`, σ = 6; averaged over n, times 10; averaged over rows.
 *   idf = `log(N) - log(max(1, df))`, with df the number of rows whose reference holds the n-gram and N the
 *   number of rows evaluated. As in coco-caption, the length Δ is counted in bigrams (words − 1: the same
 *   Δ as in words whenever both sides are non-empty), and a set of one row scores 0 (log 1 = 0 weights
 *   every n-gram zero).
 * - Exact match and VQA accuracy: equality after {@link normalizeText}.
 *
 * Text is compared as {@link tokenizeText} tokens: lowercase, punctuation other than `-` and `'` removed,
 * split on whitespace (a simplified PTB tokenizer, as coco-caption applies before scoring).
 */

/** Lowercase words: punctuation other than `-` and `'` inside words becomes a space; split on whitespace. */
export function tokenizeText(text: string | null | undefined): string[] {
  if (text === null || text === undefined) return []
  return text
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s'-]+/gu, ' ')
    .split(/\s+/)
    .filter((w) => w !== '' && w !== '-' && w !== "'")
}

/** The tokens of `text` joined with single spaces: the form exact match and VQA accuracy compare. */
export function normalizeText(text: string | null | undefined): string {
  return tokenizeText(text).join(' ')
}

/** One scored pair: the model's output (null for an error row: it counts as wrong) and the reference. */
export interface TextPair {
  readonly candidate: string | null
  readonly reference: string
}

/** Fraction of pairs whose normalised candidate equals the normalised reference; 0 for no pairs. */
export function exactMatch(pairs: readonly TextPair[]): number {
  if (pairs.length === 0) return 0
  return pairs.filter((p) => isExactMatch(p.candidate, p.reference)).length / pairs.length
}

export function isExactMatch(candidate: string | null, reference: string): boolean {
  return candidate !== null && normalizeText(candidate) === normalizeText(reference)
}

/** VQA accuracy with one reference answer per question: exact match of the normalised answers. */
export const vqaAccuracy = exactMatch

// ------------------------------------------------------------------------------------------- n-grams

/** Counts of every n-gram of `tokens` for n = 1..maxN, keyed `n|w1 w2 ...`. */
export function ngramCounts(tokens: readonly string[], maxN = 4): Map<string, number> {
  const counts = new Map<string, number>()
  for (let n = 1; n <= maxN; n++) {
    for (let i = 0; i + n <= tokens.length; i++) {
      const key = `${n}|${tokens.slice(i, i + n).join(' ')}`
      counts.set(key, (counts.get(key) ?? 0) + 1)
    }
  }
  return counts
}

const orderOf = (key: string) => Number(key.slice(0, key.indexOf('|')))

// ---------------------------------------------------------------------------------------------- BLEU

export interface BleuResult {
  /** BLEU-4 in [0, 1]. */
  readonly bleu: number
  /** Clipped precisions p1..p4. */
  readonly precisions: readonly number[]
  readonly brevityPenalty: number
  /** Total candidate and reference lengths (tokens). */
  readonly candidateLength: number
  readonly referenceLength: number
}

/** Corpus BLEU-4 (see the module comment), one reference per pair. */
export function corpusBleu(pairs: readonly TextPair[], maxN = 4): BleuResult {
  const matches = new Array<number>(maxN).fill(0)
  const totals = new Array<number>(maxN).fill(0)
  let c = 0
  let r = 0
  for (const pair of pairs) {
    const cand = tokenizeText(pair.candidate)
    const ref = tokenizeText(pair.reference)
    c += cand.length
    r += ref.length
    const refCounts = ngramCounts(ref, maxN)
    for (const [key, count] of ngramCounts(cand, maxN)) {
      matches[orderOf(key) - 1] += Math.min(count, refCounts.get(key) ?? 0)
    }
    for (let n = 1; n <= maxN; n++) totals[n - 1] += Math.max(0, cand.length - n + 1)
  }
  const precisions = matches.map((m, i) => (totals[i] === 0 ? 0 : m / totals[i]))
  const brevityPenalty = c === 0 ? 0 : c >= r ? 1 : Math.exp(1 - r / c)
  const bleu = precisions.some((p) => p === 0)
    ? 0
    : brevityPenalty * Math.exp(precisions.reduce((s, p) => s + Math.log(p), 0) / maxN)
  return { bleu, precisions, brevityPenalty, candidateLength: c, referenceLength: r }
}

// ------------------------------------------------------------------------------------------- CIDEr-D

export interface CiderResult {
  /** Mean CIDEr-D over the pairs (0 to 10 for a single reference; 10 = every candidate equals its reference). */
  readonly cider: number
  /** Per pair, in input order. */
  readonly scores: readonly number[]
}

interface TfIdf {
  /** Weight of each n-gram, by key. */
  readonly vec: Map<string, number>
  /** Euclidean norm per order n (index n-1). */
  readonly norm: number[]
  /** Number of bigrams (coco-caption's length for the penalty). */
  readonly length: number
}

/** CIDEr-D (see the module comment), one reference per pair; σ = 6, n = 1..4. */
export function ciderD(pairs: readonly TextPair[], options: { sigma?: number; maxN?: number } = {}): CiderResult {
  const sigma = options.sigma ?? 6
  const maxN = options.maxN ?? 4
  const cands = pairs.map((p) => ngramCounts(tokenizeText(p.candidate), maxN))
  const refs = pairs.map((p) => ngramCounts(tokenizeText(p.reference), maxN))
  const df = new Map<string, number>()
  for (const ref of refs) for (const key of ref.keys()) df.set(key, (df.get(key) ?? 0) + 1)
  const logN = Math.log(Math.max(1, pairs.length))

  const tfidf = (counts: Map<string, number>): TfIdf => {
    const vec = new Map<string, number>()
    const norm = new Array<number>(maxN).fill(0)
    let length = 0
    for (const [key, tf] of counts) {
      const n = orderOf(key)
      const w = tf * (logN - Math.log(Math.max(1, df.get(key) ?? 0)))
      vec.set(key, w)
      norm[n - 1] += w * w
      if (n === 2) length += tf
    }
    return { vec, norm: norm.map(Math.sqrt), length }
  }

  const scores = pairs.map((_, i) => {
    const cand = tfidf(cands[i])
    const ref = tfidf(refs[i])
    const delta = cand.length - ref.length
    const penalty = Math.exp(-(delta * delta) / (2 * sigma * sigma))
    const dot = new Array<number>(maxN).fill(0)
    for (const [key, w] of cand.vec) {
      const wr = ref.vec.get(key) ?? 0
      dot[orderOf(key) - 1] += Math.min(w, wr) * wr
    }
    let sum = 0
    for (let n = 0; n < maxN; n++) {
      const denominator = cand.norm[n] * ref.norm[n]
      sum += (denominator === 0 ? 0 : dot[n] / denominator) * penalty
    }
    return (sum / maxN) * 10
  })
  const cider = scores.length === 0 ? 0 : scores.reduce((s, x) => s + x, 0) / scores.length
  return { cider, scores }
}
