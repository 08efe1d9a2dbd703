/**
 * Choosing the next tokens (src/model/search.ts) and the KV cache bookkeeping (src/model/kv-cache.ts), the
 * two parts of the generation loop below generate() (whose own tests are in generate.test.ts).
 */
import { describe, expect, it } from 'vitest'

import { KvCache } from '../../src/model/kv-cache.js'
import { textConfidence } from '../../src/model/generate.js'
import { argmax, bestHypothesis, logSoftmax, selectNext, tokenLogprob, type Beam, type Sequence } from '../../src/model/search.js'
import { float32 } from '../../src/tensor/tensors.js'

const EOS = 2
const sequence = (index: number, limit = 10): Sequence => ({ index, sample: { memoryRow: index, prompt: [1] }, limit, hypotheses: [] })
const beam = (s: Sequence, tokens: number[] = [], score = 0, logprobs: number[] = tokens.map(() => 0)): Beam => ({ sequence: s, tokens, logprobs, score, position: tokens.length })
/** The log-softmax of `row` at `token`. */
const lp = (row: number[], token: number) => row[token] - Math.log(row.reduce((n, v) => n + Math.exp(v), 0))
/** Logits `[rows, 1, V]` from one row of values each. */
const logits = (...rows: number[][]) => float32([rows.length, 1, rows[0].length], rows.flat())

describe('selectNext (greedy)', () => {
  it('takes each row\'s argmax, the lowest id among equal logits', () => {
    expect(argmax(Float32Array.from([1, 3, 3, 0]), 0, 4)).toBe(1)
    const [a, b] = [sequence(0), sequence(1)]
    const { next, parents, finished } = selectNext([beam(a, [5]), beam(b)], logits([0, 0, 0, 1, 4, 4], [0, 0, 0, 7, 0, 0]), { beams: 1, lengthPenalty: 1, eos: EOS })
    expect(next.map((n) => [n.sequence.index, n.tokens, n.position])).toEqual([[0, [5, 4], 2], [1, [3], 1]])
    expect([parents, finished]).toEqual([[0, 1], []])
  })

  it('finishes a sequence at the end token (not kept) or at its limit', () => {
    const [a, b] = [sequence(0), sequence(1, 2)]
    const { next, finished } = selectNext([beam(a, [4]), beam(b, [4])], logits([0, 0, 9, 0, 0], [0, 0, 0, 9, 0]), { beams: 1, lengthPenalty: 1, eos: EOS })
    expect(next).toEqual([])
    expect(finished.map((s) => bestHypothesis(s))).toEqual([
      { tokens: [4], logprobs: [0, expect.closeTo(lp([0, 0, 9, 0, 0], 2), 12)], score: 0, finish: 'eos' },
      { tokens: [4, 3], logprobs: [0, expect.closeTo(lp([0, 0, 0, 9, 0], 3), 12)], score: 0, finish: 'length' },
    ])
  })

  it('records the log-probability of each chosen token (the end token included), from its own row only', () => {
    const s = sequence(0, 3)
    const row = [0.5, -1, 2, 3, 1]
    const alone = selectNext([beam(s, [], 0, [])], logits(row), { beams: 1, lengthPenalty: 1, eos: EOS })
    const expected = Math.log(Math.exp(3) / row.reduce((n, v) => n + Math.exp(v), 0))
    expect(alone.next[0].logprobs).toEqual([expect.closeTo(expected, 12)])
    // the same row beside another sequence's row gives the same bits
    const t = sequence(1, 3)
    const beside = selectNext([beam(t, [], 0, []), beam(sequence(0, 3), [], 0, [])], logits([9, 9, 9, 9, -9], row), { beams: 1, lengthPenalty: 1, eos: EOS })
    expect(beside.next[1].logprobs).toEqual(alone.next[0].logprobs)
    expect(tokenLogprob(Float32Array.from(row), 0, 5, 3)).toBe(logSoftmax(Float32Array.from(row), 0, 5)[3])
  })

  it('textConfidence: mean and minimum of the token log-probabilities', () => {
    expect(textConfidence([-0.5, -1.5, -0.1])).toEqual({ mean: expect.closeTo(-0.7, 12), min: -1.5 })
    expect(textConfidence([])).toBeNull()
  })
})

describe('selectNext with minNewTokens (fixed-length generation)', () => {
  it('greedy: the end token is out of reach until a sequence has minNewTokens tokens; the next best token is taken', () => {
    const [a, b] = [sequence(0), sequence(1)]
    // both rows prefer <eos> (9), then token 3 (5); row a has 1 token, row b has 2
    const rows = [beam(a, [4]), beam(b, [4, 4])]
    const out = selectNext(rows, logits([0, 0, 9, 5, 0], [0, 0, 9, 5, 0]), { beams: 1, lengthPenalty: 1, eos: EOS, minNewTokens: 2 })
    expect(out.next.map((n) => n.tokens)).toEqual([[4, 3]])
    // row b's end token: its log-softmax over every token (b has its 2 tokens, nothing is excluded)
    expect(out.finished.map((s) => bestHypothesis(s))).toEqual([{ tokens: [4, 4], logprobs: [0, 0, expect.closeTo(lp([0, 0, 9, 5, 0], 2), 12)], score: 0, finish: 'eos' }])
    // row a's token 3: renormalised without the end token
    expect(out.next[0].logprobs).toEqual([0, expect.closeTo(lp([0, 0, 5, 0], 2), 12)])
    expect(argmax(Float32Array.from([0, 0, 9, 5]), 0, 4, EOS)).toBe(3)
  })

  it('minNewTokens = the limit: every sequence has exactly that many tokens, even one whose every step prefers <eos>', () => {
    const s = sequence(0, 3)
    let rows = [beam(s)]
    for (let step = 0; step < 3 && rows.length > 0; step++) rows = selectNext(rows, logits([0, 0, 9, 0, 1]), { beams: 1, lengthPenalty: 1, eos: EOS, minNewTokens: 3 }).next
    expect(bestHypothesis(s)).toMatchObject({ tokens: [4, 4, 4], score: 0, finish: 'length' })
    // each token's probability without the end token: 4 of (0, 0, 0, 1) over the four others
    expect(bestHypothesis(s).logprobs).toEqual([0, 0, 0].map(() => expect.closeTo(lp([0, 0, 0, 1], 3), 12)))
  })

  it('beam search: <eos> gets no probability before minNewTokens (the others are renormalised without it)', () => {
    const s = sequence(0)
    const ln = Math.log
    const out = selectNext([beam(s, [3])], logits([-30, -30, ln(0.5), ln(0.3), ln(0.2)]), { beams: 2, lengthPenalty: 1, eos: EOS, minNewTokens: 2 })
    expect(s.hypotheses).toEqual([])
    expect(out.next.map((b) => b.tokens)).toEqual([[3, 3], [3, 4]])
    expect(out.next[0].score).toBeCloseTo(ln(0.3 / 0.5), 5)
  })
})

describe('selectNext (beam search)', () => {
  it('keeps the best continuations over all beams of a sequence; an ending candidate among the best becomes a hypothesis', () => {
    const s = sequence(0)
    const ln = Math.log
    // beam 0 (score ln .6): next .5 → token 3, .5 → <eos>; beam 1 (score ln .4): .9 → token 4
    const rows = [beam(s, [3], ln(0.6)), beam(s, [4], ln(0.4))]
    const out = selectNext(rows, logits([-30, -30, ln(0.5), ln(0.5), -30], [-30, -30, -30, -30, ln(0.9)]), { beams: 2, lengthPenalty: 1, eos: EOS })
    // candidates by probability: [4,4] .36, then [3]+<eos> and [3,3] at .30 each (equal: lower token id first).
    // The ending one ranks 2nd (within `beams`): a hypothesis scored .30 / 2 tokens; the two best others go on.
    expect(out.next.map((b) => b.tokens)).toEqual([[4, 4], [3, 3]])
    expect(out.parents).toEqual([1, 0])
    expect(s.hypotheses.map((h) => [h.tokens, h.finish])).toEqual([[[3], 'eos']])
    expect(s.hypotheses[0].score).toBeCloseTo(Math.log(0.3) / 2, 6)
    // its tokens' log-probabilities: the parent beam's (0 in this test), then the end token's own (ln .5)
    expect(s.hypotheses[0].logprobs).toEqual([0, expect.closeTo(Math.log(0.5), 5)])
    // (the rows' logits are normalised: beam 1's token 4 has probability ~1 under its row's log-softmax)
    expect(out.next.map((b) => b.logprobs)).toEqual([[0, expect.closeTo(0, 5)], [0, expect.closeTo(Math.log(0.5), 5)]])
    expect(out.finished).toEqual([])
  })
})

describe('KvCache', () => {
  /** A cache of `rows` rows over `length` positions, 1 layer, 1 head, head size 1, values = 10·row + position. */
  const cache = (rows: number, length: number, mask: number[]) => {
    const k = Float32Array.from({ length: rows * length }, (_, i) => 10 * Math.floor(i / length) + (i % length))
    return new KvCache(1, 1, 1, rows, length, k, k.slice(), Uint8Array.from(mask))
  }

  it('concat right-aligns the shorter cache, its left padding masked', () => {
    const joined = cache(1, 3, [1, 1, 1]).concat(cache(1, 1, [1]))
    expect([joined.rows, joined.length]).toEqual([2, 3])
    expect(Array.from(joined.k)).toEqual([0, 1, 2, 0, 0, 0])
    expect(Array.from(joined.mask)).toEqual([1, 1, 1, 0, 0, 1])
  })

  it('gather picks rows (repeats allowed); trim drops positions every row masks', () => {
    const c = cache(2, 3, [0, 1, 1, 0, 0, 1])
    expect(Array.from(c.gather([1, 1]).k)).toEqual([10, 11, 12, 10, 11, 12])
    const trimmed = c.trim()
    expect([trimmed.length, Array.from(trimmed.k), Array.from(trimmed.mask)]).toEqual([2, [1, 2, 11, 12], [1, 1, 0, 1]])
    expect(Array.from(c.stepAttention())).toEqual([0n, 1n, 1n, 1n, 0n, 0n, 1n, 1n])
  })
})
