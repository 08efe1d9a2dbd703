/**
 * Prompts (src/model/prompts.ts): the manifest's templates resolved against the vocabulary, a row's
 * questions, and the plan of a batch's samples (which rows generate, which become error rows).
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

import { ModelManifestError } from '../../src/errors.js'
import { compilePrompt, planPrompts, promptIds, questionsOf } from '../../src/model/prompts.js'
import { WordTokenizer } from '../../src/model/tokenizer.js'
import { ROOT } from '../helpers/cli.js'
import { batchRows } from '../helpers/model.js'

const tokenizer = WordTokenizer.fromText(readFileSync(join(ROOT, 'fixtures', 'scenes', 'vocab.txt'), 'utf8'), { splitPunctuation: ['?'] })
const id = (token: string) => tokenizer.tokenId(token)!
const caption = compilePrompt(['<bos>'], tokenizer, 'prompts.caption')
const vqa = compilePrompt(['<bos>', '{question}', '<sep>'], tokenizer, 'prompts.vqa')

describe('compilePrompt and promptIds', () => {
  it('resolves the special tokens around the question slot', () => {
    expect(caption).toEqual({ before: [id('<bos>')], asks: false, after: [] })
    expect(vqa).toEqual({ before: [id('<bos>')], asks: true, after: [id('<sep>')] })
    expect(promptIds(vqa, 'is there a star?', tokenizer)).toEqual([id('<bos>'), id('is'), id('there'), id('a'), id('star'), id('?'), id('<sep>')])
    expect(promptIds(caption, 'ignored', tokenizer)).toEqual([id('<bos>')])
  })

  it('names the template entry whose token is not in the vocabulary', () => {
    const error = (() => {
      try {
        compilePrompt(['<bos>', '{question}', '<end-of-question>'], tokenizer, 'prompts.vqa')
      } catch (e) {
        return e
      }
    })()
    expect(error).toBeInstanceOf(ModelManifestError)
    expect((error as ModelManifestError).field).toBe('prompts.vqa.2')
  })
})

describe('questionsOf', () => {
  it('keeps the non-blank questions, in order', () => {
    expect(questionsOf('what?')).toEqual(['what?'])
    expect(questionsOf(['a?', ' ', '', 'b?'])).toEqual(['a?', 'b?'])
    expect([questionsOf(null), questionsOf(undefined), questionsOf('  ')]).toEqual([[], [], []])
  })
})

describe('planPrompts', () => {
  it('captions: one sample per row, reading the row\'s memory', () => {
    const rows = batchRows([1, 3])
    const plan = planPrompts(rows, { template: caption, tokenizer, maxPositions: 64, stage: 'decodeText' })
    expect(plan.samples).toEqual([{ memoryRow: 0, prompt: [id('<bos>')] }, { memoryRow: 1, prompt: [id('<bos>')] }])
    expect(plan.planned).toEqual([{ row: rows[0], prompts: [null], first: 0 }, { row: rows[1], prompts: [null], first: 1 }])
    expect(plan.refused).toEqual([])
  })

  it('questions: one sample per question of a row, all on its memory; rows without one refused', () => {
    const rows = batchRows([1, 1, 1])
    const asked = ['is there a star?', null, ['how many circles are there?', 'is there a star?']]
    const plan = planPrompts(rows, { template: vqa, tokenizer, questions: (row) => asked[row.key.row], maxPositions: 64, stage: 'decodeText' })
    expect(plan.samples.map((s) => s.memoryRow)).toEqual([0, 2, 2])
    expect(plan.planned.map((p) => [p.row.id, p.prompts, p.first])).toEqual([
      ['row-0', ['is there a star?'], 0],
      ['row-2', ['how many circles are there?', 'is there a star?'], 1],
    ])
    expect(plan.refused.map((r) => [r.id, r.code, r.stage, r.message])).toEqual([['row-1', 'missing-question', 'decodeText', 'the row has no question']])
  })

  it('refuses a row whose longest prompt leaves no position to generate', () => {
    const rows = batchRows([1, 1])
    const plan = planPrompts(rows, { template: vqa, tokenizer, questions: (row) => (row.key.row === 0 ? 'a a a' : 'a'), maxPositions: 5, stage: 'decodeText' })
    expect(plan.samples).toEqual([{ memoryRow: 1, prompt: [id('<bos>'), id('a'), id('<sep>')] }])
    expect(plan.refused.map((r) => [r.id, r.code, r.message])).toEqual([['row-0', 'stage-failed', "a prompt of 5 tokens leaves no room in the decoder's 5 positions"]])
  })

  it('refuses a row whose question has words outside a word-level vocabulary (question-out-of-vocabulary), naming them', () => {
    const rows = batchRows([1, 1, 1])
    const asked = ['what is in the image?', 'is there a red star?', ['how many circles?', 'WHAT about Zebras?']]
    const plan = planPrompts(rows, { template: vqa, tokenizer, questions: (row) => asked[row.key.row], maxPositions: 24, stage: 'decodeText' })
    expect(plan.planned.map((p) => p.row.id)).toEqual(['row-1'])
    expect(plan.refused.map((r) => [r.id, r.code, r.message])).toEqual([
      ['row-0', 'question-out-of-vocabulary', 'the question has words the model\'s vocabulary (65 tokens) cannot represent: "image"'],
      ['row-2', 'question-out-of-vocabulary', 'the question has words the model\'s vocabulary (65 tokens) cannot represent: "about", "Zebras"'],
    ])
    // words are matched as the tokenizer encodes them: case folded, '?' split off
    expect(tokenizer.unknownWords('WHAT color IS the star?')).toEqual([])
    expect(tokenizer.unknownWords('<unk> star star? <bos>')).toEqual(['<unk>'])
  })
})
