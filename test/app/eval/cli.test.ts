import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { runCli } from '../../helpers/cli.js'
import { tempDir } from '../../helpers/util.js'
import { fixtureRows, writeOutput, writeReference } from './shards.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-eval-cli-')))
afterAll(() => cleanup())

describe('evflow eval', () => {
  it('prints a table of rows, caption metrics and errors by attribute; --json prints the report as JSON', async () => {
    const refs = await fixtureRows('test.parquet', 8)
    writeReference(join(dir, 'ref', 'test.parquet'), refs)
    writeOutput(
      join(dir, 'out', 'test.parquet'),
      refs.map((r, i) =>
        i === 7
          ? { id: r.id, status: 'error', error_code: 'corrupt' }
          : { id: r.id, status: 'ok', caption: i === 6 ? 'a large blue cross on the right' : r.caption },
      ),
      ['caption'],
    )
    const result = runCli(['eval', join(dir, 'out'), '--reference', join(dir, 'ref')])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/joined by 'id'/)
    expect(result.stdout).toMatch(/^rows: 8 evaluated: 7 ok, 1 error \(corrupt 1\); error rows count as wrong$/m)
    expect(result.stdout).toMatch(/^ {2}exact match +75\.00% +6\/8$/m)
    expect(result.stdout).toMatch(/^ {2}BLEU-4 +0\.\d{4} /m)
    expect(result.stdout).toMatch(/^ {2}CIDEr-D +\d\.\d{4} /m)
    expect(result.stdout).toMatch(/^ {4}colour +1 +1 +14\.3%$/m)
    expect(result.stdout).toMatch(/^ {4}position +0 +0 +0\.0%$/m)
    expect(result.stdout).not.toMatch(/motion|vqa:/)
    const json = runCli(['eval', join(dir, 'out'), '--reference', join(dir, 'ref'), '--json'])
    expect(json.code).toBe(0)
    const report = JSON.parse(json.stdout)
    expect(report).toMatchObject({ join: 'id', rows: { evaluated: 8, error: 1 }, caption: { exactMatches: 6, breakdown: { attributes: { color: { errors: 1 } } }, byFinishReason: null }, vqa: null })
  })

  it('prints VQA accuracy per question type; --json prints JSON only', async () => {
    const refs = await fixtureRows('vqa.parquet', 6)
    writeReference(join(dir, 'vqa-ref', 'vqa.parquet'), refs)
    writeOutput(join(dir, 'vqa-out', 'vqa.parquet'), refs.map((r, i) => ({ id: r.id, status: 'ok', question: r.question, answer: i === 0 ? 'purple' : r.answer })), ['question', 'answer'])
    const result = runCli(['eval', join(dir, 'vqa-out'), '--reference', join(dir, 'vqa-ref', 'vqa.parquet')])
    expect(result.code).toBe(0)
    expect(result.stdout).toMatch(/^vqa: 6 questions \(6 ok, 0 error\)$/m)
    expect(result.stdout).toMatch(/^ {2}accuracy +83\.33% +5\/6$/m)
    expect(result.stdout).toMatch(/^ {4}type +questions +correct +accuracy$/m)
    const json = runCli(['eval', join(dir, 'vqa-out'), '--reference', join(dir, 'vqa-ref'), '--json'])
    expect(JSON.parse(json.stdout)).toMatchObject({ vqa: { rows: 6, correct: 5 }, caption: null })
  })

  it('exits 2 with one clear line for a missing folder, an output without results, no shared ids', async () => {
    const missing = runCli(['eval', join(dir, 'nope'), '--reference', 'fixtures/scenes/test.parquet'])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toBe(`evflow: InputNotFoundError: ${join(dir, 'nope')}: no such output folder\n`)

    const scan = runCli(['scan', 'fixtures/scenes/vqa.parquet', '-o', join(dir, 'scan'), '--limit', '4'])
    expect(scan.code).toBe(0)
    const noResult = runCli(['eval', join(dir, 'scan'), '--reference', 'fixtures/scenes/vqa.parquet'])
    expect(noResult.code).toBe(2)
    expect(noResult.stderr).toMatch(/^evflow: PipelineConfigError: out: .*no result column to evaluate/)
    expect(noResult.stderr.trim().split('\n')).toHaveLength(1)

    const noIds = runCli(['eval', join(dir, 'vqa-out'), '--reference', 'fixtures/scenes/test.parquet'])
    expect(noIds.code).toBe(2)
    expect(noIds.stderr).toMatch(/^evflow: PipelineConfigError: reference: no 'id' of .* is in the reference/)

    const noReference = runCli(['eval', join(dir, 'vqa-out')])
    expect(noReference.code).toBe(2)
    expect(noReference.stderr).toMatch(/--reference/)
  })

  it('--help explains the metrics, the join and the exit codes', () => {
    const help = runCli(['eval', '--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toMatch(/--reference <inputs\.\.\.>/)
    expect(help.stdout).toMatch(/CIDEr-D/)
    expect(help.stdout).toMatch(/Exit codes: 0 ok \(scored\), 2 bad usage/)
    expect(runCli(['--help']).stdout).toMatch(/^ {2}eval \[options\] <out>/m)
  })
})
