import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

import { InferenceError, PipelineConfigError } from '../../src/errors.js'
import { InferencePool, LARGE_MODEL_BYTES, threadPlan } from '../../src/model/inference-pool.js'
import { float32, int64 } from '../../src/tensor/tensors.js'
import { ROOT } from '../helpers/cli.js'

const graph = join(ROOT, 'fixtures', 'onnx', 'tiny-linear.onnx')
// From test/helpers/make-tiny-onnx.py: y for x = arange(8).reshape(2, 4), scale 1.
const expected = [-0.7031040191650391, 2.435905933380127, -2.7631587982177734, 3.7480647563934326]

const pools: InferencePool[] = []
const pool = (options: ConstructorParameters<typeof InferencePool>[0]) => {
  const p = new InferencePool(options)
  pools.push(p)
  return p
}
afterAll(async () => {
  for (const p of pools) await p.destroy()
})

const feeds = () => ({ x: float32([2, 4], [0, 1, 2, 3, 4, 5, 6, 7]), scale: float32([1], [1]) })

describe('InferencePool', () => {
  it('runs a graph in an inference thread and returns its outputs, transferring the feed buffers', async () => {
    const p = pool({ inferenceThreads: 1 })
    const input = feeds()
    const { outputs } = await p.run(graph, input)
    expect(outputs.y.dims).toEqual([2, 2])
    expect(outputs.y.dtype).toBe('float32')
    Array.from(outputs.y.data as Float32Array).forEach((v, i) => expect(v).toBeCloseTo(expected[i], 5))
    expect(input.x.data.byteLength).toBe(0) // transferred, not copied
  })

  it('runs many tasks over several inference threads with identical results', async () => {
    const p = pool({ inferenceThreads: 2 })
    const results = await Promise.all(Array.from({ length: 20 }, () => p.run(graph, feeds())))
    for (const { outputs } of results) Array.from(outputs.y.data as Float32Array).forEach((v, i) => expect(v).toBeCloseTo(expected[i], 5))
  })

  it('checks feeds before running and names each problem', async () => {
    const p = pool({ inferenceThreads: 1 })
    await expect(p.run(graph, { x: float32([2, 5]), scale: float32([1]) })).rejects.toThrow(/x: dim 1 must be 4, got 5/)
    await expect(p.run(graph, { x: int64([2, 4]), scale: float32([1]) })).rejects.toThrow(/x: expected float32, got int64/)
    await expect(p.run(graph, { x: float32([2, 4]) })).rejects.toThrow(InferenceError)
    await expect(p.run(graph, { x: float32([2, 4]) })).rejects.toThrow(/missing input scale/)
    await expect(p.run(graph, { ...feeds(), extra: float32([1]) })).rejects.toThrow(/unknown input extra/)
  })

  it('falls back to CPU with a warning when a provider cannot start, unless strict (in a child process: the native libraries\' own lines are asserted, not printed)', () => {
    // ONNX Runtime and Dawn write straight to the process's stderr from native code when a provider cannot
    // start (no Vulkan for webgpu, no CUDA libraries): run the case in a child and check what it printed.
    const script = `
      import { InferencePool } from ${JSON.stringify(join(ROOT, 'dist', 'src', 'model', 'inference-pool.js'))}
      const feeds = () => ({ x: { dtype: 'float32', dims: [2, 4], data: Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]) }, scale: { dtype: 'float32', dims: [1], data: Float32Array.from([1]) } })
      const warnings = []
      const lenient = new InferencePool({ inferenceThreads: 1, provider: 'webgpu', onWarning: (w) => warnings.push(w) })
      const { outputs } = await lenient.run(${JSON.stringify(graph)}, feeds())
      const strict = new InferencePool({ inferenceThreads: 1, provider: 'cuda', strictProvider: true })
      const outcome = await strict.run(${JSON.stringify(graph)}, feeds()).then(() => 'ran', (e) => e.name + ': ' + e.message)
      await lenient.destroy()
      await strict.destroy()
      process.stdout.write(JSON.stringify({ dims: outputs.y.dims, provider: lenient.activeProvider, warnings, outcome }))
    `
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 })
    expect(child.status, child.stderr).toBe(0)
    const result = JSON.parse(child.stdout) as { dims: number[]; provider: string; warnings: string[]; outcome: string }
    expect(result.dims).toEqual([2, 2])
    if (result.provider === 'cpu') expect(result.warnings[0]).toMatch(/execution provider webgpu cannot start .*; running on cpu/)
    if (result.outcome !== 'ran') expect(result.outcome).toMatch(/^InferenceError: .*execution provider cuda cannot start/)
    // what the native libraries printed on their own: only their provider-start failures
    const known = [/^Warning: Couldn't load Vulkan/, /^\s+at operator\(\) \(.*dawn/, /Failed to load library .*libonnxruntime_providers_/, /^(\x1b\[m)?$/]
    for (const line of child.stderr.split('\n')) expect(known.some((k) => k.test(line)), `unexpected stderr line: ${line}`).toBe(true)
  })

  it('reports a missing graph file clearly', async () => {
    await expect(pool({ inferenceThreads: 1 }).run('/nonexistent/model.onnx', feeds())).rejects.toThrow(/cannot create a session/)
  })

  it('validates its options and refuses work after destroy', async () => {
    expect(() => new InferencePool({ inferenceThreads: 0 })).toThrow(PipelineConfigError)
    expect(() => new InferencePool({ provider: 'tpu' as never })).toThrow(/provider/)
    const p = new InferencePool({ inferenceThreads: 1 })
    await p.destroy()
    await p.destroy()
    await expect(p.run(graph, feeds())).rejects.toThrow(/closed/)
  })

  it('destroy() while tasks run lets them finish (terminating a thread inside ORT would abort the process), then refuses new ones', async () => {
    const p = new InferencePool({ inferenceThreads: 2 })
    const running = Array.from({ length: 6 }, () => p.run(graph, feeds()))
    await p.destroy()
    for (const result of await Promise.all(running)) expect(result.outputs.y.dims).toEqual([2, 2])
    await expect(p.run(graph, feeds())).rejects.toThrow(/closed/)
  })
})

describe('threadPlan: inference and intra-op threads from the model\'s size', () => {
  it('a small model: one inference thread per core, 1 intra-op thread each, the memory arena on', () => {
    expect(threadPlan(17e6, 2)).toEqual({ inferenceThreads: 2, intraOpThreads: 1, memoryArena: true })
    expect(threadPlan(17e6, 8, { intraOpThreads: 2 })).toEqual({ inferenceThreads: 8, intraOpThreads: 2, memoryArena: true })
  })

  it('a large model: one inference thread (one copy of the weights) with every core as intra-op threads, no arena', () => {
    expect(threadPlan(LARGE_MODEL_BYTES + 1, 2)).toEqual({ inferenceThreads: 1, intraOpThreads: 2, memoryArena: false })
    expect(threadPlan(1.22e9, 16)).toEqual({ inferenceThreads: 1, intraOpThreads: 16, memoryArena: false })
  })

  it('keeps what is set; the other shares the cores', () => {
    expect(threadPlan(1.22e9, 8, { inferenceThreads: 2 })).toEqual({ inferenceThreads: 2, intraOpThreads: 4, memoryArena: false })
    expect(threadPlan(1.22e9, 8, { intraOpThreads: 4 })).toEqual({ inferenceThreads: 2, intraOpThreads: 4, memoryArena: false })
    expect(threadPlan(1.22e9, 2, { inferenceThreads: 2, intraOpThreads: 1, memoryArena: true })).toEqual({ inferenceThreads: 2, intraOpThreads: 1, memoryArena: true })
  })
})
