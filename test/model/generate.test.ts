/**
 * The generation loop (src/model/generate.ts) against a fake decoder whose next-token distribution is a
 * known function of (memory row, tokens so far): checks greedy and beam search choices, the KV cache and
 * attention mask bookkeeping (left padding, joins, trims), continuous vs static batching, and that a
 * sample's output does not depend on its batch.
 */
import { describe, expect, it } from 'vitest'

import { generate, type BatchingOptions, type DecoderOutputs, type DecoderSpec, type GenerationParams, type GenerationSample, type MemoryTensors } from '../../src/model/generate.js'
import { float32, type Feeds } from '../../src/tensor/tensors.js'

const V = 12
const EOS = 2
const PAD = 0
const NL = 2
const H = 1
const DH = 2

/**
 * A decoder with a "cache" that stores each fed token in past_k (value = token id, at [.., 0]) and its
 * position id (at [.., 1]); the logits at a position are computed from the memory row's seed and all
 * unmasked tokens so far, after checking that position ids count up from 0 without gaps.
 */
function fakeDecoder(script: (seed: number, tokens: number[]) => Float32Array, log: { rows: number[] } = { rows: [] }) {
  return async (feeds: Feeds): Promise<DecoderOutputs> => {
    const [b, t] = feeds.input_ids.dims
    const s = feeds.past_k.dims[3]
    const ids = feeds.input_ids.data as BigInt64Array
    const pos = feeds.position_ids.data as BigInt64Array
    const mask = feeds.attention_mask.data as BigInt64Array
    const past = feeds.past_k.data as Float32Array
    const seeds = feeds.xattn_k.data as Float32Array
    const perRow = seeds.length / b
    log.rows.push(b)
    expect(feeds.attention_mask.dims).toEqual([b, s + t])
    const presentK = new Float32Array(NL * b * H * (s + t) * DH)
    const logits = new Float32Array(b * t * V)
    for (let r = 0; r < b; r++) {
      const seq: { token: number; position: number }[] = []
      for (let j = 0; j < s; j++) {
        const src = ((0 * b + r) * H) * s * DH + j * DH
        for (let l = 0; l < NL; l++) {
          const dst = ((l * b + r) * H) * (s + t) * DH + j * DH
          presentK[dst] = past[((l * b + r) * H) * s * DH + j * DH]
          presentK[dst + 1] = past[((l * b + r) * H) * s * DH + j * DH + 1]
        }
        if (mask[r * (s + t) + j] === 1n) seq.push({ token: past[src], position: past[src + 1] })
      }
      for (let j = 0; j < t; j++) {
        for (let l = 0; l < NL; l++) {
          const dst = ((l * b + r) * H) * (s + t) * DH + (s + j) * DH
          presentK[dst] = Number(ids[r * t + j])
          presentK[dst + 1] = Number(pos[r * t + j])
        }
        if (mask[r * (s + t) + s + j] === 1n) seq.push({ token: Number(ids[r * t + j]), position: Number(pos[r * t + j]) })
        seq.forEach((e, i) => expect(e.position).toBe(i))
        logits.set(script(seeds[r * perRow], seq.map((e) => e.token)), (r * t + j) * V)
      }
    }
    const dims = [NL, b, H, s + t, DH]
    return { logits: float32([b, t, V], logits), present_k: float32(dims, presentK), present_v: float32(dims, presentK.slice()) }
  }
}

/** Memory whose row r carries seed r (in xattn_k). */
function memory(rows: number): MemoryTensors {
  const m = 3
  const k = new Float32Array(rows * NL * H * m * DH)
  for (let r = 0; r < rows; r++) k.fill(r, r * NL * H * m * DH, (r + 1) * NL * H * m * DH)
  return { xattn_k: float32([rows, NL, H, m, DH], k), xattn_v: float32([rows, NL, H, m, DH], k.slice()), xattn_mask: float32([rows, m]) }
}

/** Greedy script: seed s emits tokens 3 + ((s + i) mod 9) for i < (s mod 5) + 1 tokens, then <eos>. */
function countingScript(seed: number, tokens: number[]): Float32Array {
  const logits = new Float32Array(V).fill(-5)
  const generated = tokens.filter((t) => t >= 3 && t !== 11).length
  const promptExtra = tokens.filter((t) => t === 11).length
  const length = (seed % 5) + 1 + promptExtra
  logits[generated >= length ? EOS : 3 + ((seed + generated) % 8)] = 5
  return logits
}

type Options = Partial<GenerationParams & BatchingOptions & { maxPositions: number }>
/** `generate`'s arguments after the samples: what decides the tokens, how they are batched, the decoder's facts. */
const options = (o: Options = {}): [GenerationParams, BatchingOptions, DecoderSpec] => [
  { maxNewTokens: o.maxNewTokens ?? 20, beams: o.beams ?? 1, lengthPenalty: o.lengthPenalty ?? 1 },
  { slots: o.slots ?? 4, continuous: o.continuous ?? true },
  { maxPositions: o.maxPositions ?? 64, eos: EOS, pad: PAD, nLayer: NL, heads: H, headDim: DH },
]
const expectedCount = (seed: number, extra = 0) => Array.from({ length: (seed % 5) + 1 + extra }, (_, i) => 3 + ((seed + i) % 8))

describe('generate (greedy, fake decoder)', () => {
  const samples: GenerationSample[] = Array.from({ length: 11 }, (_, i) => ({ memoryRow: i, prompt: i % 3 === 0 ? [1, 11, 11] : [1] }))
  const expected = samples.map((s, i) => expectedCount(i, s.prompt.length - 1))

  it('generates each sample\'s tokens, prompts of different lengths left-padded, positions counting from 0', async () => {
    const { sequences, stats } = await generate(memory(11), samples, ...options(), fakeDecoder(countingScript))
    expect(sequences.map((s) => s.tokens)).toEqual(expected)
    expect(sequences.every((s) => s.finish === 'eos')).toBe(true)
    expect(stats.tokens).toBe(expected.reduce((n, t) => n + t.length + 1, 0))
  })

  it('gives the same tokens with continuous batching on and off and any number of slots; continuous does less work', async () => {
    const runs = []
    for (const continuous of [true, false]) {
      for (const slots of [1, 3, 11]) {
        const log = { rows: [] as number[] }
        const { sequences, stats } = await generate(memory(11), samples, ...options({ continuous, slots }), fakeDecoder(countingScript, log))
        expect(sequences.map((s) => s.tokens)).toEqual(expected)
        expect(Math.max(...log.rows)).toBeLessThanOrEqual(slots)
        runs.push({ continuous, slots, steps: stats.decoderRuns, rowSteps: stats.rowSteps })
      }
    }
    const on = runs.find((r) => r.continuous && r.slots === 3)!
    const off = runs.find((r) => !r.continuous && r.slots === 3)!
    expect(on.steps).toBeLessThan(off.steps)
  })

  it('stops at maxNewTokens with finish "length", and within the decoder\'s positions', async () => {
    const { sequences } = await generate(memory(5), [{ memoryRow: 4, prompt: [1] }], ...options({ maxNewTokens: 2 }), fakeDecoder(countingScript))
    expect(sequences[0]).toEqual({ tokens: [7, 8], finish: 'length', logprobs: [expect.any(Number), expect.any(Number)] })
    const tight = await generate(memory(5), [{ memoryRow: 4, prompt: [1, 11, 11] }], ...options({ maxPositions: 5 }), fakeDecoder(countingScript))
    expect(tight.sequences[0]).toEqual({ tokens: expectedCount(4, 2).slice(0, 2), finish: 'length', logprobs: [expect.any(Number), expect.any(Number)] })
    await expect(generate(memory(1), [{ memoryRow: 0, prompt: [1, 1, 1] }], ...options({ maxPositions: 3 }), fakeDecoder(countingScript))).rejects.toThrow(/no room/)
  })

  it('reads each sample\'s own memory row even when several samples share one', async () => {
    const shared = [{ memoryRow: 2, prompt: [1] }, { memoryRow: 0, prompt: [1] }, { memoryRow: 2, prompt: [1, 11] }]
    const { sequences } = await generate(memory(3), shared, ...options({ slots: 2 }), fakeDecoder(countingScript))
    expect(sequences.map((s) => s.tokens)).toEqual([expectedCount(2), expectedCount(0), expectedCount(2, 1)])
  })
})

describe('generate (beam search, fake decoder)', () => {
  // After the prompt: token 3 (p .6) then always <eos> (p .3 ... ) vs token 4 (p .4) then token 5 (p .99) then <eos>.
  // Greedy takes 3, 3...: the best sequence by total probability starts with 4.
  const logp = (probabilities: Record<number, number>): Float32Array => {
    const out = new Float32Array(V).fill(Math.log(1e-6))
    for (const [t, p] of Object.entries(probabilities)) out[Number(t)] = Math.log(p)
    return out
  }
  const script = (_seed: number, tokens: number[]): Float32Array => {
    const generated = tokens.slice(1)
    if (generated.length === 0) return logp({ 3: 0.6, 4: 0.4 })
    if (generated[0] === 3) return generated.length === 1 ? logp({ 6: 0.3, 7: 0.3, 8: 0.3, [EOS]: 0.1 }) : logp({ [EOS]: 0.5, 9: 0.5 })
    return generated.length === 1 ? logp({ 5: 0.99 }) : logp({ [EOS]: 0.99 })
  }

  it('greedy takes the locally best token; beam search finds the more probable sequence', async () => {
    const greedy = await generate(memory(1), [{ memoryRow: 0, prompt: [1] }], ...options({ maxNewTokens: 6 }), fakeDecoder(script))
    expect(greedy.sequences[0].tokens.slice(0, 2)).toEqual([3, 6])
    const beam = await generate(memory(1), [{ memoryRow: 0, prompt: [1] }], ...options({ beams: 3, maxNewTokens: 6 }), fakeDecoder(script))
    // each token's log-probability: the log-softmax of its step's logits (the script's, given the prefix), the end token's included
    const logSoftmax = (prefix: number[], token: number) => {
      const row = Array.from(script(0, [1, ...prefix]))
      return row[token] - Math.log(row.reduce((n, v) => n + Math.exp(v), 0))
    }
    expect(beam.sequences[0]).toEqual({ tokens: [4, 5], finish: 'eos', logprobs: [4, 5, EOS].map((t, i) => expect.closeTo(logSoftmax([4, 5].slice(0, i), t), 12)) })
    expect(greedy.sequences[0].logprobs.slice(0, 2)).toEqual([expect.closeTo(logSoftmax([], 3), 12), expect.closeTo(logSoftmax([3], 6), 12)])
  })

  it('gives each sample the same beam result alone or in a continuous batch with others', async () => {
    const many = Array.from({ length: 5 }, (_, i) => ({ memoryRow: i, prompt: [1] }))
    const alone = await generate(memory(5), many.slice(0, 1), ...options({ beams: 2 }), fakeDecoder(script))
    const together = await generate(memory(5), many, ...options({ beams: 2, slots: 2 }), fakeDecoder(script))
    for (const s of together.sequences) expect(s).toEqual(alone.sequences[0])
  })
})
