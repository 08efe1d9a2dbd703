import { describe, expect, it } from 'vitest'

import { ciderD, corpusBleu, exactMatch, ngramCounts, normalizeText, tokenizeText, vqaAccuracy } from '../../src/text/metrics.js'

const pair = (candidate: string | null, reference: string) => ({ candidate, reference })

describe('tokenizeText / normalizeText', () => {
  it('lowercases, drops punctuation other than - and \', collapses whitespace', () => {
    expect(tokenizeText('  A Large  RED circle, on the left. ')).toEqual(['a', 'large', 'red', 'circle', 'on', 'the', 'left'])
    expect(normalizeText('Top-Left!')).toBe('top-left')
    expect(normalizeText('where is the red circle?')).toBe('where is the red circle')
    expect(tokenizeText(null)).toEqual([])
  })

  it('counts n-grams by order', () => {
    const counts = ngramCounts(['a', 'b', 'a', 'b'], 2)
    expect(Object.fromEntries(counts)).toEqual({ '1|a': 2, '1|b': 2, '2|a b': 2, '2|b a': 1 })
  })
})

describe('exactMatch / vqaAccuracy', () => {
  it('is the fraction equal after normalisation; null (error rows) is wrong', () => {
    const pairs = [pair('Two small green triangles.', 'two small green triangles'), pair('a red circle', 'a blue circle'), pair(null, 'x'), pair('Yes', 'yes')]
    expect(exactMatch(pairs)).toBe(0.5)
    expect(vqaAccuracy([pair(' Left ', 'left'), pair('right', 'left')])).toBe(0.5)
    expect(exactMatch([])).toBe(0)
  })
})

describe('corpusBleu (BLEU-4)', () => {
  it('is 1 for a perfect match', () => {
    expect(corpusBleu([pair('a large red circle on the left', 'a large red circle on the left')]).bleu).toBe(1)
  })

  it('one substituted word: (6/7 · 4/6 · 3/5 · 2/4)^(1/4), no brevity penalty (hand-computed)', () => {
    const r = corpusBleu([pair('a large red circle on the left', 'a small red circle on the left')])
    expect(r.precisions).toEqual([6 / 7, 4 / 6, 3 / 5, 2 / 4])
    expect(r.brevityPenalty).toBe(1)
    expect(r.bleu).toBeCloseTo(Math.pow(144 / 840, 1 / 4), 12)
    expect(r.bleu).toBeCloseTo(0.64346, 5)
  })

  it('a shorter candidate: brevity penalty exp(1 - r/c) = exp(1 - 7/6) (hand-computed)', () => {
    const r = corpusBleu([pair('a red circle on the left', 'a small red circle on the left')])
    expect(r.precisions).toEqual([1, 4 / 5, 3 / 4, 2 / 3])
    expect(r.brevityPenalty).toBeCloseTo(Math.exp(-1 / 6), 12)
    expect(r.bleu).toBeCloseTo(Math.exp(-1 / 6) * Math.pow(0.4, 1 / 4), 12)
  })

  it('clips candidate counts to the reference counts', () => {
    // "the the the the" vs "the cat": unigram precision 1/4 (clipped), no bigram match → 0
    const r = corpusBleu([pair('the the the the', 'the cat')])
    expect(r.precisions[0]).toBe(1 / 4)
    expect(r.bleu).toBe(0)
  })

  it('is corpus-level: counts are summed over rows before the precisions, not averaged per row', () => {
    const pairs = [pair('a large red circle on the left', 'a small red circle on the left'), pair('a red circle on the left', 'a small red circle on the left')]
    const r = corpusBleu(pairs)
    expect(r.precisions).toEqual([12 / 13, 8 / 11, 6 / 9, 4 / 7])
    expect(r.brevityPenalty).toBeCloseTo(Math.exp(1 - 14 / 13), 12)
    const expected = Math.exp(1 - 14 / 13) * Math.pow((12 / 13) * (8 / 11) * (6 / 9) * (4 / 7), 1 / 4)
    expect(r.bleu).toBeCloseTo(expected, 12)
  })

  it('a row without 4-grams scores 0 alone but adds its matches to the corpus counts', () => {
    const perfect = pair('a large red circle on the left', 'a large red circle on the left')
    const short = pair('red', 'a red circle')
    expect(corpusBleu([short]).bleu).toBe(0)
    const r = corpusBleu([perfect, short])
    expect(r.precisions).toEqual([1, 1, 1, 1])
    expect(r.bleu).toBeCloseTo(Math.exp(1 - 10 / 8), 12) // not (1 + 0) / 2
  })

  it('is 0 with a zero precision, for empty candidates (error rows) and no rows', () => {
    expect(corpusBleu([pair('red', 'a red circle')]).bleu).toBe(0)
    expect(corpusBleu([pair(null, 'a red circle')]).bleu).toBe(0)
    expect(corpusBleu([]).bleu).toBe(0)
  })

  it('an error row (empty candidate) lowers the corpus score through the brevity penalty', () => {
    const good = pair('a large red circle on the left', 'a large red circle on the left')
    const r = corpusBleu([good, pair(null, 'two small green triangles')])
    expect(r.precisions).toEqual([1, 1, 1, 1])
    expect(r.bleu).toBeCloseTo(Math.exp(1 - 11 / 7), 12)
  })

  it("matches coco-caption's BleuScorer on a 5-row set (value from pycocoevalcap's formulas)", () => {
    expect(corpusBleu(GOLDEN).bleu).toBeCloseTo(0.685998180, 8)
  })
})

describe('ciderD', () => {
  it('identical candidate and reference sets of distinct captions score 10', () => {
    const refs = ['a large red circle on the left', 'two small green triangles and a blue star at the top', 'a small yellow cross in the center']
    const r = ciderD(refs.map((s) => pair(s, s)))
    expect(r.scores.map((s) => Number(s.toFixed(10)))).toEqual([10, 10, 10])
    expect(r.cider).toBeCloseTo(10, 10)
  })

  it('two-word captions have no 3- or 4-grams: identical pairs score 10 · (1 + 1 + 0 + 0) / 4 = 5 (hand-computed)', () => {
    const r = ciderD([pair('red circle', 'red circle'), pair('blue square', 'blue square')])
    expect(r.scores[0]).toBeCloseTo(5, 12)
    expect(r.scores[1]).toBeCloseTo(5, 12)
  })

  it('idf: an n-gram in every reference weighs nothing; unseen candidate n-grams weigh log N (hand-computed)', () => {
    // refs "red square", "blue square": N = 2; df(square) = 2 → weight 0; red, blue, bigrams: log 2.
    // row 1, "red circle": unigrams red (log 2), circle (df 0 → log 2) vs ref red (log 2), square (0):
    // cos = log²2 / (√2 log 2 · log 2) = 1/√2; bigrams share nothing: 0. Score 10 · (1/√2) / 4.
    const r = ciderD([pair('red circle', 'red square'), pair('blue square', 'blue square')])
    expect(r.scores[0]).toBeCloseTo((10 * Math.SQRT1_2) / 4, 12)
    expect(r.scores[1]).toBeCloseTo(5, 12)
    expect(r.cider).toBeCloseTo(((10 * Math.SQRT1_2) / 4 + 5) / 2, 12)
  })

  it('Gaussian length penalty exp(-Δ²/2σ²), σ = 6, Δ in bigrams (hand-computed)', () => {
    // "a b c d e" vs "a b": unigram cos 2/√10, bigram cos 1/2 (4 bigrams of weight log 2 vs 1), Δ = 4 - 1 = 3.
    const r = ciderD([pair('a b c d e', 'a b'), pair('x y', 'x y')])
    expect(r.scores[0]).toBeCloseTo((10 * (2 / Math.sqrt(10) + 0.5) * Math.exp(-9 / 72)) / 4, 12)
  })

  it('clips candidate weights to the reference weights: min(c, r) · r in the dot product (hand-computed)', () => {
    // "red circle red circle" vs "red circle": unigrams red, circle weigh 2 log 2 against log 2: dot 2 log²2
    // (clipped), cos = 2 / (√8 · √2) = 1/2; bigrams: "red circle" 2 log 2 vs log 2, "circle red" log 2:
    // cos = 1/√5; no 3-/4-grams in the reference: 0. Δ = 3 - 1 bigrams.
    const r = ciderD([pair('red circle red circle', 'red circle'), pair('blue square', 'blue square')])
    expect(r.scores[0]).toBeCloseTo((10 * (0.5 + 1 / Math.sqrt(5)) * Math.exp(-4 / 72)) / 4, 12)
  })

  it('a single row scores 0 (log 1 = 0 weights everything zero, as in coco-caption); no rows: 0', () => {
    expect(ciderD([pair('red circle', 'red circle')]).cider).toBe(0)
    expect(ciderD([]).cider).toBe(0)
  })

  it('an empty candidate (error row) scores 0', () => {
    const r = ciderD([pair(null, 'red circle'), pair('blue square', 'blue square')])
    expect(r.scores[0]).toBe(0)
  })

  it("matches coco-caption's CiderScorer on a 5-row set (values from pycocoevalcap's formulas)", () => {
    const r = ciderD(GOLDEN)
    const expected = [3.6274776239825646, 4.597818437815397, 2.2057594223852752, 8.807487908060445, 10.0]
    r.scores.forEach((s, i) => expect(s).toBeCloseTo(expected[i], 10))
    expect(r.cider).toBeCloseTo(5.847708678448736, 10)
  })
})

/** Scored with a py3 port of tylin/coco-caption's bleu_scorer.py and cider_scorer.py (numpy). */
const GOLDEN = [
  pair('a large red circle on the left', 'a small red circle on the left'),
  pair('a red circle on the left', 'a small red circle on the left'),
  pair('two small green triangles', 'two small green triangles and a large blue star at the top'),
  pair('a blue square at the top right and a large red circle on the left', 'a small blue square at the top right and a large red circle on the left'),
  pair('a small yellow cross in the center', 'a small yellow cross in the center'),
]
