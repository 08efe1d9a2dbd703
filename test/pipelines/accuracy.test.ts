/**
 * End-to-end accuracy of the committed reference model through evflow (Parquet → decode → model operators →
 * Parquet → `evaluateOutputs`) on the bundled test fixtures equals PyTorch's (`model/evaluate.py` on the
 * same rows, recorded in test/pipelines/pytorch-accuracy.json by the command written there) within 0.5
 * points. (Whether the model meets its accuracy targets is model/evaluate.py's business: docs/model.md.)
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { evaluateOutputs } from '../../app/eval/index.js'
import { runCli } from '../helpers/cli.js'
import { tempDir } from '../helpers/util.js'

const MODEL = fileURLToPath(new URL('../../fixtures/models/evlm-tiny/', import.meta.url))
const EXPECTED = fileURLToPath(new URL('./pytorch-accuracy.json', import.meta.url))
const HAVE = existsSync(join(MODEL, 'manifest.json')) && existsSync(EXPECTED)
if (!HAVE) console.warn(`NOTICE: test/pipelines/accuracy: no model package or ${EXPECTED}: SKIPPING the end-to-end accuracy tests`)

interface Expected {
  command: string
  caption_exact_match: number
  vqa_accuracy: number
  video_caption_exact_match: number
}

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-accuracy-')))
afterAll(() => cleanup())

describe.skipIf(!HAVE)('end-to-end accuracy on the fixtures', () => {
  const expected = HAVE ? (JSON.parse(readFileSync(EXPECTED, 'utf8')) as Expected) : undefined
  const points = (a: number, b: number) => Math.abs(a - b) * 100

  it('captions: exact match equals PyTorch\'s within 0.5 points', async () => {
    const out = join(dir, 'caption')
    const run = runCli(['caption', 'fixtures/scenes/test.parquet', '-o', out], { timeoutMs: 300_000 })
    expect(run.code, run.stderr).toBe(0)
    const report = await evaluateOutputs({ outDir: out, reference: ['fixtures/scenes/test.parquet'] })
    expect(report.rows.error).toBe(0)
    expect(points(report.caption!.exactMatch, expected!.caption_exact_match)).toBeLessThanOrEqual(0.5)
  })

  it('VQA: accuracy equals PyTorch\'s within 0.5 points', async () => {
    const out = join(dir, 'vqa')
    const run = runCli(['vqa', 'fixtures/scenes/vqa.parquet', '-o', out], { timeoutMs: 300_000 })
    expect(run.code, run.stderr).toBe(0)
    const report = await evaluateOutputs({ outDir: out, reference: ['fixtures/scenes/vqa.parquet'] })
    expect(points(report.vqa!.accuracy, expected!.vqa_accuracy)).toBeLessThanOrEqual(0.5)
  })

  it('video captions: exact match equals PyTorch\'s within 0.5 points', async () => {
    const out = join(dir, 'video')
    const run = runCli(['video-caption', 'fixtures/scenes/video.parquet', '-o', out], { timeoutMs: 300_000 })
    expect(run.code, run.stderr).toBe(0)
    const report = await evaluateOutputs({ outDir: out, reference: ['fixtures/scenes/video.parquet'] })
    expect(points(report.caption!.exactMatch, expected!.video_caption_exact_match)).toBeLessThanOrEqual(0.5)
  })
})
