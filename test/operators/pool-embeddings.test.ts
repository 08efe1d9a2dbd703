/**
 * poolEmbeddings: VisualTokens → one Embedding per row (1 → B): the mean of the row's tokens over its frames,
 * taps and queries, L2-normalised by default. Pure main-thread computation.
 */
import { EMPTY, concat, from, of, throwError } from 'rxjs'
import { describe, expect, it } from 'vitest'

import { poolEmbeddings } from '../../operators/pool-embeddings.js'
import { RunMetrics } from '../../src/engine/metrics.js'
import { meanPoolRows } from '../../src/tensor/pool.js'
import type { Embedding, VisualTokens } from '../../src/records.js'
import { batchRows, bystanders, collect } from '../helpers/model.js'

/** Tokens `[N, L=1, Q=2, D=2]` for rows of `frames` frames; frame n's two tokens are [n, 1] and [n, 3]. */
function tokens(frames: readonly number[]): VisualTokens {
  const n = frames.reduce((a, b) => a + b, 0)
  const data = new Float32Array(n * 4)
  for (let f = 0; f < n; f++) data.set([f, 1, f, 3], f * 4)
  return { kind: 'visual-tokens', rows: batchRows(frames), visual_tokens: { dtype: 'float32', dims: [n, 1, 2, 2], data }, refined: true }
}

describe('meanPoolRows', () => {
  it('averages each row over its frames and tokens; normalised to unit length on request', () => {
    const batch = tokens([1, 2])
    // row 0: frame 0 → mean [0, 2]; row 1: frames 1, 2 → mean [1.5, 2]
    expect(meanPoolRows(batch.visual_tokens, [1, 2], false).map((v) => Array.from(v))).toEqual([[0, 2], [1.5, 2]])
    expect(meanPoolRows(batch.visual_tokens, [1, 2], true).map((v) => Array.from(v))).toEqual([[0, 1], [Math.fround(0.6), Math.fround(0.8)]])
  })

  it('keeps a zero mean at zero when normalising, and refuses frames that do not match N', () => {
    const zero: VisualTokens['visual_tokens'] = { dtype: 'float32', dims: [1, 1, 1, 2], data: new Float32Array(2) }
    expect(meanPoolRows(zero, [1], true).map((v) => Array.from(v))).toEqual([[0, 0]])
    expect(() => meanPoolRows(tokens([1, 2]).visual_tokens, [1, 1], true)).toThrow('visual_tokens: expected shape [2, ..., 2], got [3, 1, 2, 2]')
  })
})

describe('poolEmbeddings', () => {
  it('empty input: completes with nothing', async () => {
    expect(await collect(EMPTY.pipe(poolEmbeddings()))).toEqual([])
  })

  it('one: an embedding per row, keeping its key, id and kept columns; counted under poolEmbeddings', async () => {
    const batch = tokens([1, 2])
    const metrics = new RunMetrics()
    const out = (await collect(of(batch).pipe(poolEmbeddings({ metrics })))) as Embedding[]
    expect(out.map((e) => [e.kind, e.key, e.id, e.kept, Array.from(e.embedding)])).toEqual([
      ['embedding', batch.rows[0].key, 'row-0', {}, [0, 1]],
      ['embedding', batch.rows[1].key, 'row-1', {}, [Math.fround(0.6), Math.fround(0.8)]],
    ])
    const stage = metrics.snapshot().find((s) => s.stage === 'poolEmbeddings')!
    expect([stage.recordsIn, stage.recordsOut, stage.batches]).toEqual([2, 2, 1])
  })

  it('many: the rows of every batch, in order; normalize: false gives the plain means', async () => {
    const out = (await collect(from([tokens([1]), tokens([2, 1])]).pipe(poolEmbeddings({ normalize: false })))) as Embedding[]
    expect(out.map((e) => Array.from(e.embedding))).toEqual([[0, 2], [0.5, 2], [2, 2]])
  })

  it('lets other records pass around it untouched, in place', async () => {
    const [error, notice] = bystanders()
    const out = await collect(of<(VisualTokens | typeof error | typeof notice)[]>(error, tokens([1]), notice).pipe(poolEmbeddings()))
    expect(out.map((r) => (r as { kind: string }).kind)).toEqual(['error', 'embedding', 'shard-notice'])
    expect(out[0]).toBe(error)
    expect(out[2]).toBe(notice)
  })

  it('upstream error: forwarded after the embeddings before it', async () => {
    const seen: unknown[] = []
    const error = await new Promise((resolve) => concat(of(tokens([1])), throwError(() => new Error('boom'))).pipe(poolEmbeddings()).subscribe({ next: (r) => seen.push(r), error: resolve }))
    expect(error).toEqual(new Error('boom'))
    expect(seen).toHaveLength(1)
  })

  it('a batch whose tensor does not match its rows errors the stream (a programming error, not a data row\'s)', async () => {
    const broken: VisualTokens = { ...tokens([1, 1]), rows: batchRows([1]) }
    await expect(collect(of(broken).pipe(poolEmbeddings()))).rejects.toThrow('visual_tokens: expected shape [1, ..., 2], got [2, 1, 2, 2]')
  })
})
