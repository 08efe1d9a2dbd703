/**
 * The naive script peer: what a user's first script looks like. One image at a time on the main thread:
 * read the Parquet file (hyparquet), decode and resize with sharp, run each graph with onnxruntime-node at
 * batch 1 (default session options), every expert on every token, and a greedy loop that recomputes the
 * cross-attention keys/values (`xattn_kv`) at every step. It keeps the self-attention KV cache (the graph
 * takes it) and the same numerics, so its captions equal evflow's.
 *
 * `node dist/tools/bench/peers/naive.js SHARD MODEL_DIR LIMIT MAX_NEW_TOKENS` prints `{images, seconds, tokens}`.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parquetReadObjects } from 'hyparquet'
import * as ort from 'onnxruntime-node'
import sharp from 'sharp'

const [file, dir, limitText, maxText] = process.argv.slice(2)
const limit = Number(limitText)
const maxNew = Number(maxText)
const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'))
const d = manifest.dims
const session = (g: string) => ort.InferenceSession.create(join(dir, manifest.graphs[g].file))
const [vit, resampler, router, experts, xattn, decoder] = await Promise.all(['vit', 'resampler', 'router', 'experts', 'xattn_kv', 'decoder'].map(session))
const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims)
const i64 = (values: number[], dims: number[]) => new ort.Tensor('int64', BigInt64Array.from(values.map(BigInt)), dims)

const buffer = readFileSync(file)
const rows = (await parquetReadObjects({ file: buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength), columns: ['image'], rowEnd: limit, utf8: false })) as { image: Uint8Array }[]
const started = performance.now()
let tokens = 0
for (const row of rows) {
  const size = d.image_size
  const rgb = await sharp(row.image).removeAlpha().resize(size, size, { fit: 'fill' }).raw().toBuffer()
  const pixels = new Float32Array(3 * size * size)
  for (let i = 0; i < size * size; i++) for (let c = 0; c < 3; c++) pixels[c * size * size + i] = (rgb[i * 3 + c] / 255 - manifest.preprocessing.mean[c]) / manifest.preprocessing.std[c]
  const { taps } = await vit.run({ pixel_values: f32(pixels, [1, 3, size, size]) })
  const { visual_tokens } = await resampler.run({ taps })
  const n = visual_tokens.size / d.d_visual
  const tokensIn = f32(visual_tokens.data as Float32Array, [n, d.d_visual])
  const { router_logits, shared_out } = await router.run({ tokens: tokensIn })
  const outs: Float32Array[] = []
  for (let e = 0; e < d.n_experts; e++) outs.push((await experts.run({ tokens: tokensIn, expert_id: i64([e], []) })).expert_out.data as Float32Array)
  const logits = router_logits.data as Float32Array
  const x = visual_tokens.data as Float32Array
  const refined = new Float32Array(x.length)
  for (let t = 0; t < n; t++) {
    const order = Array.from({ length: d.n_experts }, (_, e) => e).sort((a, b) => logits[t * d.n_experts + b] - logits[t * d.n_experts + a] || a - b).slice(0, d.top_k)
    const z = order.map((e) => Math.exp(logits[t * d.n_experts + e] - logits[t * d.n_experts + order[0]]))
    const sum = z.reduce((a, b) => a + b, 0)
    for (let c = 0; c < d.d_visual; c++) {
      let v = x[t * d.d_visual + c] + (shared_out.data as Float32Array)[t * d.d_visual + c]
      order.forEach((e, j) => (v += (z[j] / sum) * outs[e][t * d.d_visual + c]))
      refined[t * d.d_visual + c] = v
    }
  }
  const memoryInput = { visual_tokens: f32(refined, [1, 1, d.n_taps, d.n_query, d.d_visual]), frame_mask: i64([1], [1, 1]) }
  let ids = [manifest.special_tokens.bos]
  let past_k: ort.Tensor = f32(new Float32Array(0), [d.n_layer, 1, d.n_head, 0, d.head_dim])
  let past_v = past_k
  let position = 0
  for (let step = 0; step < maxNew; step++) {
    const memory = await xattn.run(memoryInput) // recomputed at every step
    const out = await decoder.run({
      input_ids: i64(ids, [1, ids.length]),
      position_ids: i64(ids.map((_, i) => position + i), [1, ids.length]),
      attention_mask: i64(new Array(past_k.dims[3] + ids.length).fill(1), [1, past_k.dims[3] + ids.length]),
      past_k,
      past_v,
      xattn_k: memory.xattn_k,
      xattn_v: memory.xattn_v,
      xattn_mask: memory.xattn_mask,
    })
    position += ids.length
    past_k = out.present_k
    past_v = out.present_v
    const l = out.logits.data as Float32Array
    const v = d.vocab_size
    const last = l.subarray(l.length - v)
    let best = 0
    for (let i = 1; i < v; i++) if (last[i] > last[best]) best = i
    tokens += 1
    if (best === manifest.special_tokens.eos) break
    ids = [best]
  }
}
const seconds = (performance.now() - started) / 1000
process.stdout.write(`${JSON.stringify({ images: rows.length, seconds, tokens })}\n`)
