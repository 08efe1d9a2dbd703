/**
 * The model benchmarks (issue #6): the caption path against the compute limit, against the scripts users
 * would write, scaling, where time goes, the papers' efficiency claim and memory. All on the committed
 * reference model (EVFLOW_BENCH_MODEL=dir for another) and the CPU provider.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { npyHeader } from '../../../scenes/npy.js'
import { InferencePool } from '../../../src/model/inference-pool.js'
import { float32, int64, type TensorData } from '../../../src/tensor/tensors.js'
import type { DecodedImage } from '../../../src/records.js'
import { HAVE_MODEL, MODEL_DIR, loadBenchModel, predecode, runLimit, sceneShard, type LimitRun } from '../model.js'
import { runEvflow } from '../scan.js'
import { median, spread } from '../stats.js'
import type { BenchCase, BenchContext, CaseResult, Row } from '../types.js'

const ROOT = fileURLToPath(new URL('../../../..', import.meta.url))
const E2E_ROWS = 5_000
/** The best batch size of the scaling case (batch 32 beat 8 and 64 with 2 workers). */
const BATCH = 32
const WORKERS = 2
const NAIVE_IMAGES = 100
/** Images per PyTorch peer run (throughput, not the whole shard: the case must fit the bench's time). */
const TORCH_IMAGES = 1_000
const PYTHON = '/usr/bin/python3'
/** The PyTorch peer reads the package's own weights (model/onnx_weights.py); EVFLOW_BENCH_CHECKPOINT: a training checkpoint instead. */
const CHECKPOINT = process.env.EVFLOW_BENCH_CHECKPOINT

function requireModel(): void {
  if (!HAVE_MODEL) throw new Error(`no model package at ${MODEL_DIR}`)
}

const fmt = (v: number, digits = 0) => v.toFixed(digits)

interface CaptionSummary {
  rowsPerS: number
  durationS: number
  stages: { stage: string; busyMs: number; maxQueueDepth: number; batches: number; recordsIn: number; extra: Record<string, number> }[]
}

/** `evflow caption` on the shard; returns rows/s and the run summary. */
async function e2e(context: BenchContext, input: string, args: readonly string[] = [], tag = 'caption') {
  const run = await runEvflow('caption', input, join(context.inputs.dir, `out-${tag}`), ['--model', MODEL_DIR, '--batch-size', String(BATCH), '--inference-threads', String(WORKERS), ...args])
  return { ...run, summary: run.summary as unknown as CaptionSummary & typeof run.summary }
}

function tokensOf(summary: CaptionSummary): number {
  return summary.stages.find((s) => s.stage === 'decodeText')?.extra.tokens ?? 0
}

/** Writes decoded images as a uint8 [N,H,W,3] .npy (the PyTorch peer's input). */
function writePixelsNpy(path: string, images: readonly DecodedImage[]): void {
  const { height, width } = images[0]
  const header = npyHeader([images.length, height, width, 3])
  const body = Buffer.alloc(images.length * height * width * 3)
  images.forEach((image, i) => body.set(image.pixels.subarray(0, height * width * 3), i * height * width * 3))
  writeFileSync(path, Buffer.concat([header, body]))
}

const describeSettings = (extra = '') => `model evlm-tiny (${MODEL_DIR.replace(ROOT, '')}), batch ${BATCH}, workers ${WORKERS} × 1 thread, provider cpu${extra}`

const captionThroughput: BenchCase = {
  name: 'caption 5k 256px: limit, evflow, peers',
  section: 'model',
  byDefault: true,
  description: `the caption path on ${E2E_ROWS.toLocaleString('en')} synthetic test scenes (256×256 JPEG): the graphs alone on pre-decoded tensors (limit), \`evflow caption\`, a naive per-image script, PyTorch eager`,
  async run(context): Promise<CaseResult> {
    requireModel()
    const pkg = await loadBenchModel()
    const shard = await sceneShard(context.inputs, E2E_ROWS, context.log)
    const decoded = await predecode(shard.file, pkg)
    context.log(`pre-decoded ${decoded.images.length} images in ${decoded.seconds.toFixed(1)} s (${fmt(decoded.images.length / decoded.seconds)} img/s, decode alone)`)
    const reps = context.settings.reps
    const limits: LimitRun[] = []
    const runs: Awaited<ReturnType<typeof e2e>>[] = []
    for (let r = 0; r < reps; r++) {
      limits.push(await runLimit(pkg, decoded.images, { batch: BATCH, workers: WORKERS }))
      runs.push(await e2e(context, shard.dir))
      context.log(`rep ${r + 1}: limit ${fmt(limits[r].imagesPerS)} img/s, evflow ${fmt(runs[r].summary.rowsPerS)} rows/s`)
    }
    const ratios = runs.map((run, i) => run.summary.rowsPerS / limits[i].imagesPerS)
    const evflowRate = median(runs.map((r) => r.summary.rowsPerS))
    const limitRate = median(limits.map((l) => l.imagesPerS))

    // naive script peer: a per-image loop on the main thread
    const naive: { images: number; seconds: number; tokens: number }[] = []
    for (let r = 0; r < reps; r++) {
      const child = spawnSync(process.execPath, [join(ROOT, 'dist', 'tools', 'bench', 'peers', 'naive.js'), shard.file, MODEL_DIR, String(NAIVE_IMAGES), String(pkg.manifest.generation.max_new_tokens)], { encoding: 'utf8' })
      if (child.status !== 0) throw new Error(`naive peer failed: ${child.stderr.slice(-1000)}`)
      naive.push(JSON.parse(child.stdout) as (typeof naive)[number])
    }
    const naiveRate = median(naive.map((n) => n.images / n.seconds))

    // PyTorch peer (same weights), best of 1 thread and 2 threads with OMP_WAIT_POLICY=PASSIVE
    const torchRows: Row[] = []
    const torchNotes: string[] = []
    let torchBest: number | undefined
    const haveTorch = existsSync(PYTHON) && spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' }).status === 0
    if (!haveTorch) torchNotes.push('PyTorch peer not run: python3-torch is not installed (`apt-get install python3-torch`).')
    else if (CHECKPOINT !== undefined && !existsSync(CHECKPOINT)) torchNotes.push(`PyTorch peer not run: no checkpoint at ${CHECKPOINT} (EVFLOW_BENCH_CHECKPOINT).`)
    else {
      const npy = join(context.inputs.dir, 'pixels.npy')
      writePixelsNpy(npy, decoded.images.slice(0, TORCH_IMAGES))
      for (const threads of [1, 2]) {
        const samples: number[] = []
        for (let r = 0; r < reps; r++) {
          const env = { ...process.env, OMP_NUM_THREADS: String(threads), ...(threads > 1 ? { OMP_WAIT_POLICY: 'PASSIVE' } : {}) }
          const child = spawnSync(PYTHON, [join(ROOT, 'tools', 'bench', 'peers', 'torch_peer.py'), ...(CHECKPOINT === undefined ? ['--package', MODEL_DIR] : ['--checkpoint', CHECKPOINT]), '--pixels', npy, '--threads', String(threads), '--batch', String(BATCH), '--max-new-tokens', String(pkg.manifest.generation.max_new_tokens)], { encoding: 'utf8', env })
          if (child.status !== 0) throw new Error(`PyTorch peer failed: ${child.stderr.slice(-1000)}`)
          const out = JSON.parse(child.stdout.trim().split('\n').pop()!) as { images: number; seconds: number }
          samples.push(out.images / out.seconds)
        }
        const rate = median(samples)
        torchBest = Math.max(torchBest ?? 0, rate)
        torchRows.push({ variant: `PyTorch eager (same weights), batch ${BATCH}, ${threads} thread${threads > 1 ? 's (OMP_WAIT_POLICY=PASSIVE)' : ''}, ${TORCH_IMAGES} images, pre-decoded`, 'images/s': spread(samples), 'tokens/s': '', 'evflow ÷ this': (evflowRate / rate).toFixed(2) })
      }
    }
    const tokensPerImage = median(limits.map((l) => l.tokens / l.images))
    const rows: Row[] = [
      { variant: `limit: graphs in the worker pool, pre-decoded tensors (${describeSettings()})`, 'images/s': spread(limits.map((l) => l.imagesPerS)), 'tokens/s': spread(limits.map((l) => l.tokensPerS)), 'evflow ÷ this': (evflowRate / limitRate).toFixed(2) },
      { variant: `evflow caption (${describeSettings(', decode concurrency 2 × cores')})`, 'images/s': spread(runs.map((r) => r.summary.rowsPerS)), 'tokens/s': spread(runs.map((r) => tokensOf(r.summary) / r.summary.durationS)), 'evflow ÷ this': '1.00' },
      { variant: `naive script: per-image loop, main thread, batch 1, memory recomputed each step (${NAIVE_IMAGES} images)`, 'images/s': spread(naive.map((n) => n.images / n.seconds), 1), 'tokens/s': spread(naive.map((n) => n.tokens / n.seconds)), 'evflow ÷ this': (evflowRate / naiveRate).toFixed(1) },
      ...torchRows,
      { variant: 'decode alone (readShards + decodeImages, 64 px, concurrency 2 × cores)', 'images/s': fmt(decoded.images.length / decoded.seconds), 'tokens/s': '', 'evflow ÷ this': (evflowRate / (decoded.images.length / decoded.seconds)).toFixed(2) },
    ]
    return {
      rows,
      checks: [
        { name: 'evflow caption ÷ limit', target: '>= 0.90', value: `${median(ratios).toFixed(2)} (per rep ${ratios.map((r) => r.toFixed(2)).join(', ')})`, met: median(ratios) >= 0.9 },
        { name: 'evflow ÷ naive script', target: '>= 10', value: (evflowRate / naiveRate).toFixed(1), met: evflowRate / naiveRate >= 10 },
        ...(torchBest === undefined ? [] : [{ name: 'evflow ÷ PyTorch (best of 1 and 2 threads)', target: '>= 2', value: (evflowRate / torchBest).toFixed(2), met: evflowRate / torchBest >= 2 }]),
      ],
      notes: [
        `Medians over ${reps} repetitions, limit and evflow interleaved; the spread is min–max. ${fmt(tokensPerImage, 1)} generated tokens per image on average (end token included; greedy, max ${pkg.manifest.generation.max_new_tokens}).`,
        'The limit runs the same worker pool and generation loop as evflow, on pixel tensors stacked before the clock starts: no reading, decoding, batching or writing.',
        ...torchNotes,
      ],
      settings: { rows: E2E_ROWS, batch: BATCH, workers: WORKERS, threads: 1, provider: 'cpu', naiveImages: NAIVE_IMAGES, reps },
      raw: { limits, e2e: runs.map((r) => ({ rowsPerS: r.summary.rowsPerS, durationS: r.summary.durationS, stages: r.summary.stages, peakRssMiB: r.peakRssMiB })), naive, decode: { images: decoded.images.length, seconds: decoded.seconds } },
    }
  },
}

const captionStages: BenchCase = {
  name: 'caption where time goes',
  section: 'model',
  byDefault: true,
  description: 'one `evflow caption` run on 2,000 scenes: worker compute per model stage, main-thread stages, queue depths',
  async run(context): Promise<CaseResult> {
    requireModel()
    const shard = await sceneShard(context.inputs, 2_000, context.log)
    const run = await e2e(context, shard.dir, [], 'stages')
    const stages = run.summary.stages
    const compute = stages.filter((s) => s.extra.compute_ms !== undefined)
    const total = compute.reduce((n, s) => n + s.extra.compute_ms, 0)
    const wallMs = run.summary.durationS * 1000
    const rows: Row[] = stages.map((s) => ({
      stage: s.stage,
      'rows in': s.recordsIn,
      batches: s.batches,
      'worker compute s': s.extra.compute_ms === undefined ? '' : (s.extra.compute_ms / 1000).toFixed(2),
      'share of model compute': s.extra.compute_ms === undefined ? '' : `${((100 * s.extra.compute_ms) / total).toFixed(1)}%`,
      'busy s (wall, summed over concurrent work)': (s.busyMs / 1000).toFixed(2),
      'max queue depth (rows)': s.maxQueueDepth,
    }))
    const decode = stages.find((s) => s.stage === 'decodeImages')
    return {
      rows,
      notes: [
        `${fmt(run.summary.rowsPerS)} rows/s; model compute ${(total / 1000).toFixed(1)} s over ${(wallMs / 1000).toFixed(1)} s of wall clock = ${((total / wallMs) / WORKERS * 100).toFixed(0)}% of ${WORKERS} workers busy.`,
        `"worker compute" is the time inside the inference workers (ONNX Runtime runs and the generation loop); "busy" is wall time from a stage's start of work to its end, summed over concurrent items (it includes waiting for a free worker or libuv thread).`,
        decode ? `decodeImages: ${(decode.busyMs / 1000).toFixed(1)} s busy over ${decode.recordsIn} images (≈ ${(decode.busyMs / decode.recordsIn).toFixed(1)} ms per image in flight, up to 2 × cores at once).` : '',
      ].filter(Boolean),
      settings: { rows: 2_000, batch: BATCH, workers: WORKERS, threads: 1, provider: 'cpu' },
      raw: stages,
    }
  },
}

const captionScaling: BenchCase = {
  name: 'caption scaling workers × batch',
  section: 'model',
  byDefault: true,
  description: 'the limit (graphs in the worker pool on pre-decoded tensors) at workers 1 and 2 and batch sizes 1, 8, 32, 64, on 512 scenes',
  async run(context): Promise<CaseResult> {
    requireModel()
    const pkg = await loadBenchModel()
    const shard = await sceneShard(context.inputs, E2E_ROWS, context.log)
    const { images } = await predecode(shard.file, pkg)
    const subset = images.slice(0, 512)
    const rows: Row[] = []
    const results = new Map<string, number[]>()
    for (const batch of [1, 8, 32, 64]) {
      for (const workers of [1, 2]) {
        const samples: number[] = []
        const n = batch === 1 ? 128 : subset.length
        for (let r = 0; r < context.settings.reps; r++) samples.push((await runLimit(pkg, subset.slice(0, n), { batch, workers })).imagesPerS)
        results.set(`${batch}/${workers}`, samples)
        rows.push({ batch, workers, threads: 1, provider: 'cpu', images: n, 'images/s': spread(samples, 1) })
      }
      const one = median(results.get(`${batch}/1`)!)
      const two = median(results.get(`${batch}/2`)!)
      rows[rows.length - 1]['2 workers ÷ 1'] = (two / one).toFixed(2)
    }
    const best = (b: number) => median(results.get(`${b}/2`)!) / median(results.get(`${b}/1`)!)
    return {
      rows,
      checks: [{ name: '2 workers × 1 thread ÷ 1 worker (batch 32)', target: '>= 1.6', value: best(32).toFixed(2), met: best(32) >= 1.6 }],
      notes: [`Medians over ${context.settings.reps} repetitions. Model evlm-tiny, greedy, max ${pkg.manifest.generation.max_new_tokens} new tokens.`],
      settings: { images: subset.length, reps: context.settings.reps },
      raw: Object.fromEntries(results),
    }
  },
}

/** FLOPs of generating `t` tokens after a 1-token prompt, per layer stack, for M visual tokens (multiply-adds × 2). */
function flops(dims: { d_model: number; n_layer: number; d_visual: number }, m: number, t: number): { xattn: number; llava: number } {
  const d = dims.d_model
  const L = dims.n_layer
  const ffn = 2 * 4 * d * d * 2 // two linear layers of d × 4d, 2 FLOPs per multiply-add
  const proj = 4 * d * d * 2 // q, k, v, o projections per token
  // cross-attention model: K/V of the memory once per layer (2·M·d·d·2), then per text token: self-attention
  // (projections + attention over its prefix), the gated cross-attention block (q, o projections + attention
  // over M + its FFN), and the FFN
  let xattn = L * 2 * m * dims.d_visual * d * 2
  // LLaVA: the M visual tokens go through every layer (projections, attention, FFN), then each text token
  // attends over M + its prefix
  let llava = L * (m * (proj + ffn) + 2 * m * m * d)
  for (let i = 1; i <= t; i++) {
    xattn += L * (proj + 2 * i * d * 2 + ffn + 2 * d * d * 2 + 2 * m * d * 2 + ffn)
    llava += L * (proj + 2 * (m + i) * d * 2 + ffn)
  }
  return { xattn, llava }
}

const papersClaim: BenchCase = {
  name: 'papers claim: cross-attention vs visual tokens in the sequence',
  section: 'model',
  byDefault: true,
  description: 'decoder cost per caption for clips of 1, 2, 4, 8, 16 frames: cached cross-attention memory, memory recomputed every step, and the LLaVA-style baseline (visual tokens in the sequence)',
  async run(context): Promise<CaseResult> {
    requireModel()
    const pkg = await loadBenchModel()
    const m = pkg.manifest
    const d = m.dims
    const steps = 16
    const batch = 8
    const pool = new InferencePool({ inferenceThreads: 1 })
    const rows: Row[] = []
    const raw: Record<string, unknown> = {}
    const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin((i + 1) * 12.9898 + seed) * 0.5)
    try {
      for (const frames of [1, 2, 4, 8, 16]) {
        const M = frames * d.n_query
        const Mv = frames * d.n_taps * d.n_query
        // inputs made before the clock starts; each run gets a copy (buffers are transferred)
        const visualData = rand(batch * frames * d.n_taps * d.n_query * d.d_visual, frames)
        const visual = () => float32([batch, frames, d.n_taps, d.n_query, d.d_visual], visualData.slice())
        const kvDims = [batch, d.n_layer, d.n_head, M, d.head_dim]
        const synthetic = { xattn_k: float32(kvDims, rand(kvDims.reduce((a, b) => a * b), 1)), xattn_v: float32(kvDims, rand(kvDims.reduce((a, b) => a * b), 2)), xattn_mask: float32([batch, M]) }
        const embedsData = rand(batch * Mv * d.d_visual, 3)
        const mask = () => int64([batch, frames], new Array<number>(batch * frames).fill(1))
        const canMemory = frames <= d.max_frames
        const memoryOf = async (): Promise<Record<string, TensorData>> => {
          if (canMemory) return (await pool.run(pkg.graphPath('xattn_kv'), { visual_tokens: visual(), frame_mask: mask() })).outputs
          // beyond the model's frame embedding: memory of the right size (the decoder's cost depends only on M)
          return copy(synthetic)
        }
        const empty = () => float32([d.n_layer, batch, d.n_head, 0, d.head_dim])
        const ids = (t: number) => int64([batch, t], new Array<number>(batch * t).fill(m.special_tokens.bos))
        const positions = (t: number, from: number) => int64([batch, t], Array.from({ length: batch * t }, (_, i) => from + (i % t)))
        const ones = (n: number) => int64([batch, n], new Array<number>(batch * n).fill(1))
        // one caption: prefill the 1-token prompt, then `steps` cached steps (fixed length, no early stop)
        const cached = async (recompute: boolean) => {
          const started = performance.now()
          let memory = await memoryOf()
          let out = await pool.run(pkg.graphPath('decoder'), { input_ids: ids(1), position_ids: positions(1, 0), attention_mask: ones(1), past_k: empty(), past_v: empty(), ...copy(memory) })
          for (let s = 1; s <= steps; s++) {
            if (recompute) memory = await memoryOf()
            out = await pool.run(pkg.graphPath('decoder'), { input_ids: ids(1), position_ids: positions(1, s), attention_mask: ones(s + 1), past_k: out.outputs.present_k, past_v: out.outputs.present_v, ...copy(memory) })
          }
          return performance.now() - started
        }
        const llava = async () => {
          const started = performance.now()
          const embeds = float32([batch, Mv, d.d_visual], embedsData.slice())
          let out = await pool.run(pkg.graphPath('llava_decoder'), { visual_embeds: embeds, input_ids: ids(1), position_ids: positions(1, 0), attention_mask: ones(Mv + 1), past_k: empty(), past_v: empty() })
          for (let s = 1; s <= steps; s++) {
            out = await pool.run(pkg.graphPath('llava_decoder'), { visual_embeds: float32([batch, 0, d.d_visual]), input_ids: ids(1), position_ids: positions(1, s), attention_mask: ones(Mv + s + 1), past_k: out.outputs.present_k, past_v: out.outputs.present_v })
          }
          return performance.now() - started
        }
        await cached(false) // warm-up
        await llava()
        const samples = { cached: [] as number[], recomputed: [] as number[], llava: [] as number[] }
        for (let r = 0; r < context.settings.reps; r++) {
          samples.cached.push((await cached(false)) / batch)
          if (canMemory) samples.recomputed.push((await cached(true)) / batch)
          samples.llava.push((await llava()) / batch)
        }
        const f = flops(d, M, steps + 1)
        const measured = median(samples.cached) / median(samples.llava)
        raw[String(frames)] = samples
        rows.push({
          frames,
          'memory tokens M (xattn) / Mv (llava)': `${M} / ${Mv}`,
          'ms/caption cached memory': spread(samples.cached, 2),
          'ms/caption memory recomputed': canMemory ? spread(samples.recomputed, 2) : `n/a (model takes ≤ ${d.max_frames} frames)`,
          'ms/caption LLaVA-style': spread(samples.llava, 2),
          'measured cached ÷ LLaVA': measured.toFixed(2),
          'FLOPs xattn ÷ full attention': (f.xattn / f.llava).toFixed(2),
        })
      }
    } finally {
      await pool.destroy()
    }
    return {
      rows,
      notes: [
        `Batch ${batch} captions of ${steps + 1} tokens each (a 1-token prompt prefilled, then ${steps} cached steps, no early stop), 1 worker × 1 thread, medians over ${context.settings.reps} repetitions; "cached" includes computing the memory once (\`xattn_kv\`), "recomputed" runs \`xattn_kv\` before every step, "LLaVA-style" prefills the Mv = F·L·Q visual tokens into the self-attention cache (\`llava_decoder.onnx\`). For 16 frames (beyond the model's ${d.max_frames}) the memory is a tensor of the right size, as the decoder's cost depends only on M.`,
        'FLOPs: per EVLM\'s argument, with dims of the model: the cross-attention decoder computes keys and values of M memory tokens once per layer and each text token attends over M; the LLaVA baseline runs every visual token through every layer (projections, attention, FFN) and each text token attends over Mv + its prefix. The ratio is cross-attention FLOPs over full-attention FLOPs for the same caption.',
      ],
      settings: { batch, steps, workers: 1, threads: 1, provider: 'cpu', reps: context.settings.reps },
      raw,
    }
  },
}

/** Fresh copies of memory tensors (their buffers are transferred on each run). */
function copy(memory: Record<string, TensorData>): Record<string, TensorData> {
  return Object.fromEntries(['xattn_k', 'xattn_v', 'xattn_mask'].map((k) => [k, float32(memory[k].dims, (memory[k].data as Float32Array).slice())]))
}

const captionMemory: BenchCase = {
  name: 'caption rss 2k / 10k / 20k rows',
  section: 'model',
  byDefault: true,
  description: '`evflow caption` peak RSS over 2,000, 10,000 and 20,000 rows of 256×256 scene JPEGs (memory must not grow with the dataset)',
  async run(context): Promise<CaseResult> {
    requireModel()
    const rows: Row[] = []
    const rss: number[] = []
    for (const n of [2_000, 10_000, 20_000]) {
      const shard = await sceneShard(context.inputs, n, context.log)
      const run = await e2e(context, shard.dir, [], `rss-${n}`)
      rss.push(run.peakRssMiB)
      rows.push({ rows: n.toLocaleString('en'), 'rows/s': fmt(run.summary.rowsPerS), 'peak RSS MiB': run.peakRssMiB, 'max RSS MiB (GNU time)': run.timeMaxRssMiB ?? 'n/a', 'in-flight peak rows': run.inFlightPeakRecords })
    }
    const ratio = rss[2] / rss[0]
    return {
      rows,
      checks: [{ name: 'peak RSS 20k / 2k', target: '<= 1.15', value: ratio.toFixed(2), met: ratio <= 1.15 }],
      notes: [`One run each (${describeSettings()}); peak RSS includes the ${WORKERS} inference worker threads and their ONNX Runtime sessions.`],
      settings: { batch: BATCH, workers: WORKERS },
      raw: rows,
    }
  },
}

/** In this order (the runner keeps an exported array's order). */
export const modelCases = [captionThroughput, captionStages, captionScaling, papersClaim, captionMemory]
