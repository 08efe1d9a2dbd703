/**
 * Parity of the committed reference model (fixtures/models/evlm-tiny) between PyTorch and onnxruntime-node.
 *
 * model/export.py writes, next to the ONNX graphs, reference inputs and PyTorch outputs for every graph
 * (reference/{graph}.{case}.json + raw little-endian tensors) and full greedy generations of a few samples
 * (reference/greedy.json). Here each graph runs in onnxruntime-node on the reference inputs and must match
 * PyTorch to max |diff| <= 1e-4; then a greedy loop (vit -> resampler -> router + experts, grouped per expert
 * -> xattn_kv -> decoder prefill with an empty cache + cached steps) must produce exactly PyTorch's greedy
 * tokens. Debian has no Python ONNX Runtime: this test is the ORT check.
 *
 * An independent oracle, on purpose: it calls onnxruntime-node directly and re-implements routing, the
 * expert combine and greedy decoding from the manifest's written rules, without `src/model` (no inference
 * pool, no `generate`, no KV-cache trimming or continuous batching). It checks the package; the operators'
 * specs (test/operators/*.test.ts) check `src/model` against the same reference tokens, so a bug in the
 * runtime cannot hide behind the code it would share with its check.
 *
 * EVFLOW_PARITY_MODEL=dir checks another package (e.g. one exported from a random config). Skipped, with a
 * notice, only when the package is absent.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import * as ort from 'onnxruntime-node'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

const DIR = process.env.EVFLOW_PARITY_MODEL ?? fileURLToPath(new URL('../../fixtures/models/evlm-tiny', import.meta.url))
const HAVE = existsSync(join(DIR, 'manifest.json'))
if (!HAVE) {
  console.warn(`NOTICE: test/model-package/parity: no model package at ${DIR}: SKIPPING the ONNX Runtime parity tests`)
}

interface TensorRef { name: string, dtype: 'float32' | 'int64', dims: number[], file: string }
interface Case { graph: string, case: string, description: string, inputs: TensorRef[], outputs: TensorRef[] }
interface GraphSpec { file: string, sha256: string, inputs: { name: string }[], outputs: { name: string }[] }
interface Manifest {
  format: string
  dims: { n_taps: number, n_query: number, d_visual: number, n_layer: number, n_head: number, head_dim: number,
    image_size: number, n_experts: number, top_k: number }
  experts: { form: string, top_k: number }
  special_tokens: { pad: number, bos: number, eos: number }
  graphs: Record<string, GraphSpec>
  files: Record<string, { sha256: string }>
  reference: { graphs: Record<string, string[]>, greedy: string, tolerance: number }
}
interface GreedySample { image?: number, task: string, prompt_ids: number[], expected_ids: number[], expected_text: string }
interface Greedy {
  max_new_tokens: number
  images: TensorRef
  samples: GreedySample[]
  video: { pixel_values: TensorRef, frame_mask: TensorRef, samples: GreedySample[] }
}

const readJson = <T>(rel: string): T => JSON.parse(readFileSync(join(DIR, rel), 'utf8')) as T

function readTensor(ref: TensorRef): ort.Tensor {
  const buf = readFileSync(join(DIR, ref.file))
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
  const data = ref.dtype === 'int64' ? new BigInt64Array(ab) : new Float32Array(ab)
  expect(data.length).toBe(ref.dims.reduce((a, b) => a * b, 1))
  return new ort.Tensor(ref.dtype, data, ref.dims)
}

const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims)
const i64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims)

function maxAbsDiff(a: ort.Tensor, b: ort.Tensor): number {
  const x = a.data as Float32Array | BigInt64Array
  const y = b.data as Float32Array | BigInt64Array
  let m = 0
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(Number(x[i]) - Number(y[i])))
  return m
}

describe.skipIf(!HAVE)('reference model parity (onnxruntime-node vs PyTorch)', () => {
  let manifest: Manifest
  const sessions = new Map<string, ort.InferenceSession>()
  const diffs: Record<string, number> = {}

  const session = async (graph: string) => {
    let s = sessions.get(graph)
    if (!s) {
      s = await ort.InferenceSession.create(join(DIR, manifest.graphs[graph].file), { intraOpNumThreads: 1 })
      sessions.set(graph, s)
    }
    return s
  }
  const run = async (graph: string, feeds: Record<string, ort.Tensor>) => (await session(graph)).run(feeds)

  beforeAll(() => {
    manifest = readJson<Manifest>('manifest.json')
  })
  afterAll(async () => {
    if (Object.keys(diffs).length) {
      console.log('parity: max |onnxruntime - pytorch| per graph case\n' +
        Object.entries(diffs).map(([k, v]) => `  ${k.padEnd(24)} ${v.toExponential(2)}`).join('\n'))
    }
    for (const s of sessions.values()) await s.release()
  })

  it('is an evflow-model/1 package whose files match their sha256', () => {
    expect(manifest.format).toBe('evflow-model/1')
    const hash = (rel: string) => createHash('sha256').update(readFileSync(join(DIR, rel))).digest('hex')
    for (const g of Object.values(manifest.graphs)) expect(hash(g.file), g.file).toBe(g.sha256)
    for (const [rel, f] of Object.entries(manifest.files)) expect(hash(rel), rel).toBe(f.sha256)
  })

  it('declares the same input and output names as the ONNX graphs', async () => {
    for (const [graph, spec] of Object.entries(manifest.graphs)) {
      const s = await session(graph)
      expect(s.inputNames, graph).toEqual(spec.inputs.map((i) => i.name))
      expect(s.outputNames, graph).toEqual(spec.outputs.map((o) => o.name))
    }
  })

  it('runs every graph within tolerance of PyTorch on the reference inputs', async () => {
    const tol = manifest.reference.tolerance
    expect(tol).toBeLessThanOrEqual(1e-4)
    for (const [graph, files] of Object.entries(manifest.reference.graphs)) {
      for (const file of files) {
        const c = readJson<Case>(file)
        const feeds = Object.fromEntries(c.inputs.map((r) => [r.name, readTensor(r)]))
        const out = await run(graph, feeds)
        let worst = 0
        for (const r of c.outputs) {
          const want = readTensor(r)
          expect(out[r.name].dims, `${graph}.${c.case} ${r.name}`).toEqual(want.dims)
          const d = maxAbsDiff(out[r.name], want)
          expect(d, `${graph}.${c.case} ${r.name}`).toBeLessThanOrEqual(tol)
          worst = Math.max(worst, d)
        }
        diffs[c.case === 'default' ? graph : `${graph}.${c.case}`] = worst
      }
    }
    // the decoder graph serves prefill with an empty cache (S = 0) and cached steps
    expect(Object.keys(diffs)).toEqual(expect.arrayContaining(['decoder.prefill', 'decoder.step']))
  })

  /** vit -> resampler -> router/experts -> xattn_kv for a batch of clips (images: F = 1). */
  async function memory(pixels: Float32Array, B: number, F: number, frameMask: number[][]) {
    const { n_taps: L, n_query: Q, d_visual: D, image_size: S } = manifest.dims
    const frame = 3 * S * S
    const valid: number[] = []
    for (let b = 0; b < B; b++) for (let f = 0; f < F; f++) if (frameMask[b][f]) valid.push(b * F + f)
    const px = new Float32Array(valid.length * frame)
    valid.forEach((v, i) => px.set(pixels.subarray(v * frame, (v + 1) * frame), i * frame))
    const { taps } = await run('vit', { pixel_values: f32(px, [valid.length, 3, S, S]) })
    const { visual_tokens } = await run('resampler', { taps })
    const N = valid.length * L * Q
    const tokens = visual_tokens.data as Float32Array
    const { router_logits, shared_out } = await run('router', { tokens: f32(tokens, [N, D]) })
    const refined = await combineExperts(tokens, router_logits.data as Float32Array, shared_out.data as Float32Array, N, D)
    const full = new Float32Array(B * F * L * Q * D)
    valid.forEach((v, i) => full.set(refined.subarray(i * L * Q * D, (i + 1) * L * Q * D), v * L * Q * D))
    return run('xattn_kv', { visual_tokens: f32(full, [B, F, L, Q, D]), frame_mask: i64(frameMask.flat(), [B, F]) })
  }

  /** Per token top-k of the router logits, w = softmax over the k, tokens grouped per expert (one experts.onnx
   *  run per expert), refined = tokens + shared_out + sum_j w_j expert_out_j. */
  async function combineExperts(tokens: Float32Array, logits: Float32Array, shared: Float32Array, N: number, D: number) {
    const { n_experts: E, top_k: K } = manifest.dims
    const pick: number[][] = []
    const weight: number[][] = []
    for (let t = 0; t < N; t++) {
      const row = Array.from(logits.subarray(t * E, (t + 1) * E))
      const idx = row.map((_, e) => e).sort((a, b) => row[b] - row[a] || a - b).slice(0, K)
      const m = row[idx[0]]
      const ex = idx.map((e) => Math.exp(row[e] - m))
      const sum = ex.reduce((a, b) => a + b, 0)
      pick.push(idx)
      weight.push(ex.map((v) => v / sum))
    }
    const outs = new Float32Array(N * K * D)  // [N,K,D]: expert_out of each token's j-th pick
    for (let e = 0; e < E; e++) {
      const rows: [number, number][] = []
      pick.forEach((p, t) => p.forEach((pe, j) => { if (pe === e) rows.push([t, j]) }))
      if (!rows.length) continue
      const x = new Float32Array(rows.length * D)
      rows.forEach(([t], i) => x.set(tokens.subarray(t * D, (t + 1) * D), i * D))
      const { expert_out } = await run('experts', { tokens: f32(x, [rows.length, D]), expert_id: new ort.Tensor('int64', BigInt64Array.from([BigInt(e)]), []) })
      const y = expert_out.data as Float32Array
      rows.forEach(([t, j], i) => outs.set(y.subarray(i * D, (i + 1) * D), (t * K + j) * D))
    }
    const refined = new Float32Array(N * D)
    for (let t = 0; t < N; t++) {
      for (let d = 0; d < D; d++) {
        let routed = 0
        for (let j = 0; j < K; j++) routed += weight[t][j] * outs[(t * K + j) * D + d]
        refined[t * D + d] = tokens[t * D + d] + shared[t * D + d] + routed
      }
    }
    return refined
  }

  /** Greedy decoding with the KV cache: left-padded prefill (S = 0), then one token per step. */
  async function greedy(mem: ort.InferenceSession.OnnxValueMapType, prompts: number[][], maxNew: number) {
    const { n_layer, n_head, head_dim } = manifest.dims
    const { pad, eos } = manifest.special_tokens
    const B = prompts.length
    const T = Math.max(...prompts.map((p) => p.length))
    const ids: number[] = []
    let mask: number[][] = []
    const pos: number[] = []
    for (const p of prompts) {
      const padN = T - p.length
      ids.push(...Array(padN).fill(pad), ...p)
      const m = [...Array(padN).fill(0), ...Array(p.length).fill(1)]
      mask.push(m)
      let c = 0
      pos.push(...m.map((v) => { c += v; return Math.max(c - 1, 0) }))
    }
    const empty = new ort.Tensor('float32', new Float32Array(0), [n_layer, B, n_head, 0, head_dim])
    const x = { xattn_k: mem.xattn_k, xattn_v: mem.xattn_v, xattn_mask: mem.xattn_mask }
    let out = await run('decoder', { input_ids: i64(ids, [B, T]), position_ids: i64(pos, [B, T]),
      attention_mask: i64(mask.flat(), [B, T]), past_k: empty, past_v: empty, ...x })
    let last = T
    let stepPos = prompts.map((_, b) => pos[b * T + T - 1] + 1)
    const gen: number[][] = prompts.map(() => [])
    const done = prompts.map(() => false)
    for (let step = 0; step < maxNew; step++) {
      const V = out.logits.dims[2]
      const lg = out.logits.data as Float32Array
      const next = prompts.map((_, b) => {
        const row = lg.subarray((b * last + last - 1) * V, (b * last + last) * V)
        let best = 0
        for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v
        return best
      })
      next.forEach((t, b) => { if (!done[b]) { gen[b].push(t); done[b] = t === eos } })
      if (done.every(Boolean) || step === maxNew - 1) break
      mask = mask.map((m) => [...m, 1])
      out = await run('decoder', { input_ids: i64(next, [B, 1]), position_ids: i64(stepPos, [B, 1]),
        attention_mask: i64(mask.flat(), [B, mask[0].length]), past_k: out.present_k, past_v: out.present_v, ...x })
      last = 1
      stepPos = stepPos.map((p) => p + 1)
    }
    return gen
  }

  it('generates exactly PyTorch\'s greedy tokens for images (captions and VQA) through the whole TS loop', async () => {
    const g = readJson<Greedy>(manifest.reference.greedy)
    const px = readTensor(g.images)
    const n = px.dims[0]
    const mem = await memory(px.data as Float32Array, n, 1, Array.from({ length: n }, () => [1]))
    for (const task of ['caption', 'vqa']) {
      const samples = g.samples.filter((s) => s.task === task)
      expect(samples.map((s) => s.image)).toEqual([...Array(n).keys()])
      const got = await greedy(mem, samples.map((s) => s.prompt_ids), g.max_new_tokens)
      expect(got, task).toEqual(samples.map((s) => s.expected_ids))
    }
  })

  it('generates exactly PyTorch\'s greedy tokens for a video clip (frames flattened into the batch)', async () => {
    const g = readJson<Greedy>(manifest.reference.greedy)
    const px = readTensor(g.video.pixel_values)
    const fm = readTensor(g.video.frame_mask)
    const [B, F] = fm.dims
    const rows = Array.from({ length: B }, (_, b) => Array.from((fm.data as BigInt64Array).subarray(b * F, (b + 1) * F), Number))
    const mem = await memory(px.data as Float32Array, B, F, rows)
    for (const s of g.video.samples) {
      const got = await greedy(mem, [s.prompt_ids], g.max_new_tokens)
      expect(got[0], s.task).toEqual(s.expected_ids)
    }
  })
})
