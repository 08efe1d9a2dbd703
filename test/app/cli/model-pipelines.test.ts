/**
 * `evflow caption | video-caption | vqa | embed` from the command line on the bundled fixtures, with the
 * committed reference model (EVFLOW_PARITY_MODEL=dir for another package): every input row gives one output
 * row in input order, error rows keep their reasons, a rerun resumes, and model problems are clear errors.
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync, mkdirSync, copyFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { runCli } from '../../helpers/cli.js'
import { duckQuery } from '../../helpers/duckdb.js'
import { tempDir } from '../../helpers/util.js'

const DEFAULT_MODEL = fileURLToPath(new URL('../../../fixtures/models/evlm-tiny', import.meta.url))
const MODEL = process.env.EVFLOW_PARITY_MODEL ?? DEFAULT_MODEL
const HAVE = existsSync(join(MODEL, 'manifest.json'))
if (!HAVE) console.warn(`NOTICE: test/cli/model-pipelines: no model package at ${MODEL}: SKIPPING the model CLI tests`)

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-model-cli-')))
afterAll(() => cleanup())

const model = ['--model', MODEL]

describe.skipIf(!HAVE)('evflow caption / vqa / embed', () => {
  it('captions the bundled shards: one row per input row, in input order, error rows with their reasons', async () => {
    const out = join(dir, 'caption')
    const result = runCli(['caption', 'fixtures/shards', '-o', out, ...model, '--max-new-tokens', '6'])
    expect(result.stderr).not.toMatch(/unexpected/)
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^rows: 124 in, 111 ok, 13 error \(/m)
    const scan = runCli(['scan', 'fixtures/shards', '-o', join(dir, 'scan')])
    expect(scan.code).toBe(0)
    const rows = await duckQuery(`SELECT filename, status, error_code, caption FROM read_parquet('${out}/*.parquet', filename = true, file_row_number = true) ORDER BY filename, file_row_number`)
    const scanned = await duckQuery(`SELECT status, error_code FROM read_parquet('${dir}/scan/*.parquet', filename = true, file_row_number = true) ORDER BY filename, file_row_number`)
    // same rows, same order, same error reasons as scan (which decodes the same way)
    expect(rows.map((r) => [r.status, r.error_code])).toEqual(scanned.map((r) => [r.status, r.error_code]))
    for (const r of rows) expect(typeof r.caption === 'string' || r.status === 'error').toBe(true)
    const summaryText = readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')
    const summary = JSON.parse(summaryText)
    const stages = summary.stages.map((s: { stage: string }) => s.stage)
    expect(stages).toEqual(expect.arrayContaining(['extractVitFeatures', 'resampleTokens', 'routeToExperts', 'crossAttend', 'decodeText']))
    expect(summary.config.identity.model).toBe(createHash('sha256').update(readFileSync(join(MODEL, 'manifest.json'))).digest('hex'))

    // how each caption ended and how sure the model was; error rows have none of it
    const confidence = await duckQuery(`SELECT status, finish_reason, mean_logprob, min_logprob FROM read_parquet('${out}/*.parquet')`)
    for (const r of confidence) {
      if (r.status === 'error') expect([r.finish_reason, r.mean_logprob, r.min_logprob]).toEqual([null, null, null])
      else {
        expect(['stop', 'length']).toContain(r.finish_reason)
        expect(r.mean_logprob as number).toBeLessThanOrEqual(0)
        expect(r.min_logprob as number).toBeLessThanOrEqual(r.mean_logprob as number)
      }
    }
    // --max-new-tokens 6 cuts the long captions of the scenes: some rows end by length
    expect(new Set(confidence.map((r) => r.finish_reason))).toEqual(new Set(['stop', 'length', null]))

    // the bundled model says once, on the console and in the summary, that it knows only synthetic scenes
    if (MODEL === DEFAULT_MODEL) {
      expect(result.stderr.match(/trained only on synthetic data/g)).toHaveLength(1)
      expect(summary.notices).toEqual([expect.stringMatching(/^the model evlm-tiny was trained only on synthetic data \(synthetic scenes: .*\); on other images its outputs are not meaningful/)])
      // and evflow report shows the declared domain (from domain.json, as the run read it)
      const report = runCli(['report', out, '-o', join(dir, 'caption-report.html'), '--sample', '4'])
      expect(report.code, report.stderr).toBe(0)
      expect(readFileSync(join(dir, 'caption-report.html'), 'utf8')).toContain('declared domain: <b>synthetic data: synthetic scenes: 1 to 3 coloured shapes')
    }

    const again = runCli(['caption', 'fixtures/shards', '-o', out, ...model, '--max-new-tokens', '6', '--batch-size', '5', '--inference-threads', '1'])
    expect(again.stdout).toMatch(/0 committed, 3 skipped/) // speed flags do not change the config hash
    // a rerun that skips everything keeps the summary of the run that did the work, and writes its own beside it
    expect(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')).toBe(summaryText)
    expect(again.stdout).toContain(`(summary: ${out}/_evflow/summary.skipped.json)`)
    expect(JSON.parse(readFileSync(join(out, '_evflow', 'summary.skipped.json'), 'utf8'))).toMatchObject({ shards: { total: 3, skipped: 3, committed: 0 }, rows: { in: 0 } })
    const changed = runCli(['caption', 'fixtures/shards', '-o', out, ...model, '--max-new-tokens', '7'])
    expect(changed.stdout).toMatch(/3 committed, 0 skipped/) // content flags do
  })

  it('answers the question column (kept in the output) and fixed --question texts', async () => {
    const out = join(dir, 'vqa')
    const result = runCli(['vqa', 'fixtures/scenes/vqa.parquet', '-o', out, ...model, '--limit', '6'])
    expect(result.code).toBe(0)
    const rows = await duckQuery(`SELECT id, question, answer, status FROM read_parquet('${out}/*.parquet')`)
    expect(rows).toHaveLength(6)
    for (const r of rows) {
      expect(r.status).toBe('ok')
      expect(typeof r.question).toBe('string')
      expect(typeof r.answer).toBe('string')
    }
    const fixed = join(dir, 'vqa-fixed')
    const two = runCli(['vqa', 'fixtures/scenes/test.parquet', '-o', fixed, ...model, '--limit', '3', '--question', 'what color is the star?', '--question', 'how many circles are there?'])
    expect(two.code).toBe(0)
    const answered = await duckQuery(`SELECT questions::VARCHAR AS questions, answers::VARCHAR AS answers FROM read_parquet('${fixed}/*.parquet')`)
    expect(answered).toHaveLength(3)
    for (const r of answered) {
      expect(JSON.parse(String(r.questions))).toEqual(['what color is the star?', 'how many circles are there?'])
      expect(JSON.parse(String(r.answers))).toHaveLength(2)
    }
    const lists = await duckQuery(`SELECT finish_reasons::VARCHAR AS f, mean_logprobs::VARCHAR AS m, min_logprobs::VARCHAR AS n FROM read_parquet('${fixed}/*.parquet')`)
    for (const r of lists) {
      expect(JSON.parse(String(r.f))).toEqual(['stop', 'stop'])
      const [m, n] = [JSON.parse(String(r.m)) as number[], JSON.parse(String(r.n)) as number[]]
      expect(m).toHaveLength(2)
      m.forEach((mean, i) => expect(n[i]).toBeLessThanOrEqual(mean))
    }
  })

  it('turns questions with words outside the vocabulary into question-out-of-vocabulary error rows; writes how each answer ended', async () => {
    const src = join(dir, 'oov')
    mkdirSync(src, { recursive: true })
    const out = join(dir, 'oov-out')
    await duckQuery(`COPY (SELECT id, image, CASE WHEN id LIKE '%2' THEN 'what is in the image?' ELSE question END AS question FROM read_parquet('fixtures/scenes/test.parquet') LIMIT 12) TO '${src}/part.parquet' (FORMAT parquet)`)
    const result = runCli(['vqa', src, '-o', out, ...model])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/\(question-out-of-vocabulary 1\)/)
    const rows = await duckQuery(`SELECT id, status, error_code, error, answer, finish_reason FROM read_parquet('${out}/*.parquet')`)
    expect(rows).toHaveLength(12)
    for (const r of rows) {
      if (String(r.id).endsWith('2')) expect([r.error_code, r.error, r.answer, r.finish_reason]).toEqual(['question-out-of-vocabulary', 'the question has words the model\'s vocabulary (65 tokens) cannot represent: "image"', null, null])
      else expect([r.status, r.finish_reason]).toEqual(['ok', 'stop'])
    }
  })

  it('turns rows without a question into missing-question error rows', async () => {
    const src = join(dir, 'noq')
    mkdirSync(src, { recursive: true })
    const out = join(dir, 'noq-out')
    // the scenes' test shard has a question column; a shard without it: keep only id and image via DuckDB
    await duckQuery(`COPY (SELECT id, image, CASE WHEN id LIKE '%1' THEN NULL ELSE question END AS question FROM read_parquet('fixtures/scenes/test.parquet') LIMIT 12) TO '${src}/part.parquet' (FORMAT parquet)`)
    const result = runCli(['vqa', src, '-o', out, ...model])
    expect(result.code).toBe(0)
    const rows = await duckQuery(`SELECT id, status, error_code FROM read_parquet('${out}/*.parquet')`)
    expect(rows).toHaveLength(12)
    for (const r of rows) expect(r.error_code ?? 'ok').toBe(String(r.id).endsWith('1') ? 'missing-question' : 'ok')
  })

  it('captions clips (video-caption on a frames column) and writes embeddings', async () => {
    const video = join(dir, 'video')
    expect(runCli(['video-caption', 'fixtures/scenes/video.parquet', '-o', video, ...model, '--limit', '4']).code).toBe(0)
    const clips = await duckQuery(`SELECT caption, status FROM read_parquet('${video}/*.parquet')`)
    expect(clips.map((r) => r.status)).toEqual(['ok', 'ok', 'ok', 'ok'])
    const embed = join(dir, 'embed')
    expect(runCli(['embed', 'fixtures/scenes/test.parquet', '-o', embed, ...model, '--limit', '5']).code).toBe(0)
    const vectors = await duckQuery(`SELECT len(embedding)::int AS d, list_sum(list_transform(embedding, x -> x * x))::double AS n FROM read_parquet('${embed}/*.parquet')`)
    const dims = JSON.parse(readFileSync(join(MODEL, 'manifest.json'), 'utf8')).dims
    for (const v of vectors) {
      expect(v.d).toBe(dims.d_visual)
      expect(v.n as number).toBeCloseTo(1, 4)
    }
  })

  it('--help shows each pipeline\'s own defaults (vqa generates 8 tokens, caption 32)', () => {
    const line = (pipeline: string) => runCli([pipeline, '--help']).stdout.split('\n').find((l) => l.includes('--max-new-tokens'))
    expect(line('vqa')).toMatch(/--max-new-tokens <n> +most generated tokens per text \(default 8\)$/)
    expect(line('caption')).toMatch(/--max-new-tokens <n> +most generated tokens per text \(default 32\)$/)
  })

  it('explains model problems: a missing folder, a corrupt graph, a provider that cannot start', async () => {
    const missing = runCli(['caption', 'fixtures/shards', '-o', join(dir, 'x1'), '--model', join(dir, 'nowhere')])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toMatch(/ModelManifestError.*manifest\.json/)
    const corrupt = join(dir, 'corrupt-model')
    mkdirSync(corrupt)
    for (const f of readdirSync(MODEL)) if (f.endsWith('.onnx') || f.endsWith('.json') || f.endsWith('.txt')) copyFileSync(join(MODEL, f), join(corrupt, f))
    writeFileSync(join(corrupt, 'resampler.onnx'), 'not a graph')
    const bad = runCli(['caption', 'fixtures/shards', '-o', join(dir, 'x2'), '--model', corrupt])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/graphs\.resampler\.sha256/)
    const fallback = runCli(['caption', 'fixtures/scenes/test.parquet', '-o', join(dir, 'x3'), ...model, '--limit', '2', '--provider', 'cuda'])
    expect(fallback.code).toBe(0)
    expect(fallback.stderr).toMatch(/execution provider cuda cannot start .*running on cpu/)
    const strict = runCli(['caption', 'fixtures/scenes/test.parquet', '-o', join(dir, 'x4'), ...model, '--limit', '2', '--provider', 'cuda', '--strict-provider'])
    expect(strict.code).toBe(6)
    expect(strict.stderr).toMatch(/execution provider cuda cannot start/)
    const badFlag = runCli(['caption', 'fixtures/shards', '-o', join(dir, 'x5'), ...model, '--inference-threads', '0'])
    expect(badFlag.code).toBe(2)
    expect(badFlag.stderr).toMatch(/PipelineConfigError: inferenceThreads: /)
  })
})
