import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { parquetWriteBuffer } from 'hyparquet-writer'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { InputNotFoundError, PipelineConfigError } from '../../../src/errors.js'
import { ciderD, corpusBleu, evaluateOutputs, questionType } from '../../../app/eval/index.js'
import { answerQuestion } from '../../../scenes/grammar.js'
import type { Scene } from '../../../scenes/scene.js'
import { writeBuffer } from '../../helpers/shards.js'
import { tempDir } from '../../helpers/util.js'
import { fixtureRows, writeOutput, writeReference, type OutputRow, type ReferenceRow } from './shards.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-eval-')))
afterAll(() => cleanup())

/** Caption outputs for the first 20 test images: one error of each attribute, an error row, an unparsable caption, a missing row, an extra id. */
const CAPTION_EDITS: Record<number, string> = {
  3: 'two large red circles', // three large red circles → count
  6: 'a large blue cross on the right', // yellow → colour
  9: 'a picture of a triangle', // not in the grammar
  12: 'a large purple star on the left', // on the right → position
  13: 'a small purple square on the right', // diamond → shape
  18: 'a large purple circle on the left', // small → size
}
const ERROR_ROW = 19
const MISSING_ROW = 10

function captionOutputs(refs: readonly ReferenceRow[]): OutputRow[] {
  const out: OutputRow[] = []
  for (const [i, r] of refs.entries()) {
    if (i === MISSING_ROW) continue
    if (i === ERROR_ROW) out.push({ id: r.id, status: 'error', error_code: 'corrupt', caption: null })
    else out.push({ id: r.id, status: 'ok', caption: CAPTION_EDITS[i] ?? r.caption })
  }
  out.push({ id: 'not-a-reference-id', status: 'ok', caption: 'a small red circle in the center' })
  return out
}

describe('evaluateOutputs: captions', () => {
  it('joins by id, scores exact match, BLEU-4 and CIDEr-D with error rows as wrong, and breaks errors down by attribute', async () => {
    const refs = await fixtureRows('test.parquet', 20)
    writeReference(join(dir, 'cap-ref', 'test.parquet'), refs)
    writeOutput(join(dir, 'cap-out', 'test.parquet'), captionOutputs(refs), ['caption'])
    mkdirSync(join(dir, 'cap-out', '_evflow'), { recursive: true })

    const report = await evaluateOutputs({ outDir: join(dir, 'cap-out'), reference: [join(dir, 'cap-ref')] })
    expect(report.join).toBe('id')
    expect(report.rows).toEqual({
      output: 20,
      reference: 20,
      evaluated: 19,
      ok: 18,
      error: 1,
      errorCodes: { corrupt: 1 },
      missingFromOutput: 1,
      notInReference: 1,
      duplicateReferenceIds: 0,
    })
    expect(report.vqa).toBeNull()
    const c = report.caption!
    expect(c).toMatchObject({ rows: 19, ok: 18, error: 1, exactMatches: 12 })
    expect(c.exactMatch).toBeCloseTo(12 / 19, 12)

    const pairs = refs
      .map((r, i) => ({ i, reference: r.caption, candidate: i === ERROR_ROW ? null : (CAPTION_EDITS[i] ?? r.caption) }))
      .filter((p) => p.i !== MISSING_ROW)
    expect(c.bleu4).toBeCloseTo(corpusBleu(pairs).bleu, 12)
    expect(c.ciderD).toBeCloseTo(ciderD(pairs).cider, 12)
    expect(c.bleu4).toBeGreaterThan(0.5)
    expect(c.bleu4).toBeLessThan(1)
    expect(c.ciderD).toBeLessThan(ciderD(pairs.map((p) => ({ ...p, candidate: p.reference }))).cider)

    const objects = refs
      .filter((_, i) => i !== MISSING_ROW && i !== ERROR_ROW && i !== 9)
      .reduce((n, r) => n + (JSON.parse(r.scene) as Scene).objects.length, 0)
    expect(c.breakdown).toEqual({
      captions: 18,
      imageCaptions: 18,
      videoCaptions: 0,
      parsed: 17,
      unparsed: 1,
      objects,
      correct: 12,
      attributes: {
        color: { errors: 1, captions: 1 },
        shape: { errors: 1, captions: 1 },
        size: { errors: 1, captions: 1 },
        count: { errors: 1, captions: 1 },
        position: { errors: 1, captions: 1 },
        motion: { errors: 0, captions: 0 },
      },
    })
  })

  it('scores video captions, with motion errors', async () => {
    const refs = await fixtureRows('video.parquet', 4)
    writeReference(join(dir, 'vid-ref', 'video.parquet'), refs)
    const outputs: OutputRow[] = refs.map((r, i) => ({
      id: r.id,
      status: 'ok',
      caption: i === 1 ? r.caption.replace('moves down', 'moves up') : r.caption,
    }))
    writeOutput(join(dir, 'vid-out', 'video.parquet'), outputs, ['caption'])
    const report = await evaluateOutputs({ outDir: join(dir, 'vid-out'), reference: [join(dir, 'vid-ref', 'video.parquet')] })
    expect(report.caption).toMatchObject({ rows: 4, exactMatches: 3 })
    expect(report.caption!.breakdown).toMatchObject({ videoCaptions: 4, parsed: 4, correct: 3, attributes: { motion: { errors: 1, captions: 1 }, color: { errors: 0 } } })
  })

  it('joins by row order within same-named shards when there is no id column, honouring a --rows slice name', async () => {
    const refs = await fixtureRows('test.parquet', 20)
    writeReference(join(dir, 'order-ref', 'test.parquet'), refs)
    const slice = refs.slice(5, 10).map((r, i): OutputRow => ({ status: 'ok', caption: i === 0 ? 'two large purple circles' : r.caption }))
    writeOutput(join(dir, 'order-out', 'test.rows-5-10.parquet'), slice, ['caption'], false)
    const report = await evaluateOutputs({ outDir: join(dir, 'order-out'), reference: [join(dir, 'order-ref')] })
    expect(report.join).toBe('row-order')
    expect(report.idColumn).toBeNull()
    expect(report.rows).toMatchObject({ evaluated: 5, missingFromOutput: 15, notInReference: 0 })
    // reference row 5 is "two large purple squares": only the shape is wrong, so the join is by position
    expect(report.caption).toMatchObject({ exactMatches: 4 })
    expect(report.caption!.breakdown!.attributes.shape).toEqual({ errors: 2, captions: 1 })
  })
})

describe('evaluateOutputs: VQA', () => {
  it('scores answers against the reference answer, or the scene for another question; accuracy per question type', async () => {
    const refs = await fixtureRows('vqa.parquet', 10)
    writeReference(join(dir, 'vqa-ref', 'vqa.parquet'), refs)
    const scene8 = JSON.parse(refs[8].scene) as Scene
    const other = ['how many circles are there?', 'how many squares are there?', 'is there a red star?'].find(
      (q) => answerQuestion(scene8, q) !== refs[8].answer,
    )!
    const outputs: OutputRow[] = refs.map((r, i) => {
      if (i === 2) return { id: r.id, status: 'ok', question: r.question, answer: r.answer === 'yes' ? 'no' : 'yes' }
      if (i === 5) return { id: r.id, status: 'error', error_code: 'missing-question', question: r.question, answer: null }
      if (i === 8) return { id: r.id, status: 'ok', question: other, answer: answerQuestion(scene8, other) }
      if (i === 9) return { id: r.id, status: 'ok', question: 'what is the meaning of life?', answer: 'yes' }
      return { id: r.id, status: 'ok', question: r.question, answer: ` ${r.answer.toUpperCase()} ` }
    })
    writeOutput(join(dir, 'vqa-out', 'vqa.parquet'), outputs, ['question', 'answer'])
    const report = await evaluateOutputs({ outDir: join(dir, 'vqa-out'), reference: [join(dir, 'vqa-ref')] })
    expect(report.caption).toBeNull()
    const v = report.vqa!
    expect(v).toMatchObject({ rows: 9, ok: 8, error: 1, correct: 7, unscorable: 1 })
    expect(v.accuracy).toBeCloseTo(7 / 9, 12)

    const expected: Record<string, { rows: number; correct: number }> = {}
    outputs.slice(0, 9).forEach((o, i) => {
      const t = (expected[questionType(o.question!)] ??= { rows: 0, correct: 0 })
      t.rows++
      if (i !== 2 && i !== 5) t.correct++
    })
    expect(Object.fromEntries(Object.entries(v.byType).map(([t, s]) => [t, { rows: s!.rows, correct: s!.correct }]))).toEqual(expected)
    expect(Object.keys(v.byType).length).toBeGreaterThanOrEqual(3)
    expect(v.byFinishReason).toBeNull() // the output has no finish_reason column
  })

  it('gives exact match and accuracy per finish reason when the output has finish_reason (ok rows only)', async () => {
    const refs = await fixtureRows('test.parquet', 6)
    writeReference(join(dir, 'finish-ref', 'test.parquet'), refs)
    // rows 0-2 end at the end token (two right), rows 3-4 are cut at the limit (both wrong), row 5 is an error row
    const outputs: OutputRow[] = refs.map((r, i) =>
      i === 5
        ? { id: r.id, status: 'error', error_code: 'corrupt', finish_reason: null }
        : { id: r.id, status: 'ok', caption: i === 1 || i >= 3 ? `${r.caption} and a red star` : r.caption, finish_reason: i < 3 ? 'stop' : 'length' },
    )
    writeOutput(join(dir, 'finish-out', 'test.parquet'), outputs, ['caption', 'finish_reason'])
    const report = await evaluateOutputs({ outDir: join(dir, 'finish-out'), reference: [join(dir, 'finish-ref')] })
    expect(report.caption!.byFinishReason).toEqual({
      stop: { rows: 3, correct: 2, accuracy: 2 / 3 },
      length: { rows: 2, correct: 0, accuracy: 0 },
    })
    expect(report.caption!.exactMatches).toBe(2)

    const vqaRefs = await fixtureRows('vqa.parquet', 4)
    writeReference(join(dir, 'finish-vqa-ref', 'vqa.parquet'), vqaRefs)
    writeOutput(
      join(dir, 'finish-vqa-out', 'vqa.parquet'),
      vqaRefs.map((r, i) => ({ id: r.id, status: 'ok', question: r.question, answer: i === 3 ? 'three three three' : r.answer, finish_reason: i === 3 ? 'length' : 'stop' })),
      ['question', 'answer', 'finish_reason'],
    )
    const vqa = await evaluateOutputs({ outDir: join(dir, 'finish-vqa-out'), reference: [join(dir, 'finish-vqa-ref')] })
    expect(vqa.vqa!.byFinishReason).toEqual({ stop: { rows: 3, correct: 3, accuracy: 1 }, length: { rows: 1, correct: 0, accuracy: 0 } })
  })
})

describe('evaluateOutputs: errors', () => {
  it('a missing output folder or reference: InputNotFoundError', async () => {
    await expect(evaluateOutputs({ outDir: join(dir, 'nope'), reference: ['fixtures/scenes/test.parquet'] })).rejects.toBeInstanceOf(InputNotFoundError)
    const refs = await fixtureRows('test.parquet', 2)
    writeOutput(join(dir, 'err-out', 'test.parquet'), refs.map((r) => ({ id: r.id, status: 'ok', caption: r.caption })), ['caption'])
    await expect(evaluateOutputs({ outDir: join(dir, 'err-out'), reference: [join(dir, 'nope.parquet')] })).rejects.toBeInstanceOf(InputNotFoundError)
  })

  it('an output with no result column (e.g. a scan): PipelineConfigError naming what it has', async () => {
    writeBuffer(
      join(dir, 'scan-out', 'test.parquet'),
      parquetWriteBuffer({ columnData: [{ name: 'id', data: ['a'], type: 'STRING' }, { name: 'status', data: ['ok'], type: 'STRING' }, { name: 'width', data: [3], type: 'INT32' }] }),
    )
    const run = evaluateOutputs({ outDir: join(dir, 'scan-out'), reference: ['fixtures/scenes/test.parquet'] })
    await expect(run).rejects.toBeInstanceOf(PipelineConfigError)
    await expect(run).rejects.toThrow(/no result column to evaluate/)
  })

  it('no id in common: PipelineConfigError with an example of each side', async () => {
    const refs = await fixtureRows('vqa.parquet', 3)
    writeOutput(join(dir, 'ids-out', 'vqa.parquet'), refs.map((r) => ({ id: r.id, status: 'ok', question: r.question, answer: r.answer })), ['question', 'answer'])
    const run = evaluateOutputs({ outDir: join(dir, 'ids-out'), reference: ['fixtures/scenes/test.parquet'] })
    await expect(run).rejects.toBeInstanceOf(PipelineConfigError)
    await expect(run).rejects.toThrow(/test-vqa-3000001-0000000-q0.*test-caption-3000000-0000000/)
  })
})
