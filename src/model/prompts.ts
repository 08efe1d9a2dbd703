/**
 * Prompts from the manifest's templates (`prompts.caption`, `prompts.vqa`): a template names special tokens
 * (`<bos>`, `<sep>`) and holds the `{question}` slot for VQA. `compilePrompt` resolves the names against the
 * tokenizer once (an unknown token is a `ModelManifestError` when the package loads); `planPrompts` turns the
 * rows of a batch into generation samples, and the rows that cannot be asked (no question, a question with
 * words the vocabulary cannot represent, a prompt too long) into error rows;
 * `generatedTexts` turns the generated sequences back into one record per row. Pure functions.
 */
import { ModelManifestError } from '../errors.js'
import { toErrorRecord, type BatchRow, type ErrorRecord, type GeneratedText } from '../records.js'
import type { GeneratedSequence, GenerationSample } from './generate.js'
import { QUESTION_SLOT } from './manifest.js'
import type { TextTokenizer } from './tokenizer.js'

/** A template resolved to token ids: `before`, the question's tokens (VQA), `after`. */
export interface PromptTemplate {
  readonly before: readonly number[]
  /** Whether the template has the `{question}` slot. */
  readonly asks: boolean
  readonly after: readonly number[]
}

/** Resolves a manifest template (`field` names it in errors) against the tokenizer's vocabulary. */
export function compilePrompt(parts: readonly string[], tokenizer: TextTokenizer, field: string): PromptTemplate {
  const slot = parts.indexOf(QUESTION_SLOT)
  const ids = (range: readonly string[], offset: number) =>
    range.map((part, i) => {
      const id = tokenizer.tokenId(part)
      if (id === undefined) throw new ModelManifestError(`${field}.${offset + i}`, `the prompt token ${part} is not in the vocabulary`)
      return id
    })
  if (slot < 0) return { before: ids(parts, 0), asks: false, after: [] }
  return { before: ids(parts.slice(0, slot), 0), asks: true, after: ids(parts.slice(slot + 1), slot + 1) }
}

/** The prompt's token ids: the template around the question's tokens (a template without a slot ignores it). */
export function promptIds(template: PromptTemplate, question: string | null, tokenizer: TextTokenizer): number[] {
  if (!template.asks) return [...template.before]
  return [...template.before, ...tokenizer.encode(question ?? ''), ...template.after]
}

/** What a row asks: one question, several, or none (`null`, `undefined`, empty or blank strings). */
export type Asked = string | readonly string[] | null | undefined

/** The non-blank questions of `asked`, in order. */
export function questionsOf(asked: Asked): string[] {
  const list = typeof asked === 'string' ? [asked] : (asked ?? [])
  return list.filter((q) => typeof q === 'string' && q.trim() !== '')
}

/** A row that generates: its prompts (null for a caption) and the index of its first sample. */
export interface PlannedRow {
  readonly row: BatchRow
  readonly prompts: readonly (string | null)[]
  readonly first: number
}

export interface PromptPlan {
  readonly planned: readonly PlannedRow[]
  /** One per prompt, in row order; `memoryRow` is the row's index in the batch. */
  readonly samples: readonly GenerationSample[]
  /**
   * Rows without a question (`missing-question`), with a question the vocabulary cannot represent
   * (`question-out-of-vocabulary`), or whose prompt leaves no room to generate (`stage-failed`).
   */
  readonly refused: readonly ErrorRecord[]
}

export interface PlanPromptsOptions {
  /** The template: the caption template when `questions` is absent, else the VQA template. */
  readonly template: PromptTemplate
  readonly tokenizer: TextTokenizer
  /** A row's questions (VQA). Absent: one caption prompt per row. */
  readonly questions?: ((row: BatchRow) => Asked) | undefined
  /** The decoder's positions (`dims.max_text_len`): a prompt must leave at least one for a generated token. */
  readonly maxPositions: number
  /** The operator named in error rows. */
  readonly stage: string
}

/** The generation samples of a batch's rows (in row order), and the rows that cannot be asked. */
export function planPrompts(rows: readonly BatchRow[], options: PlanPromptsOptions): PromptPlan {
  const planned: PlannedRow[] = []
  const samples: GenerationSample[] = []
  const refused: ErrorRecord[] = []
  rows.forEach((row, memoryRow) => {
    let prompts: (string | null)[] = [null]
    if (options.questions) {
      const questions = questionsOf(options.questions(row))
      if (questions.length === 0) {
        refused.push(toErrorRecord(row, options.stage, 'missing-question', 'the row has no question'))
        return
      }
      prompts = questions
      const unknown = unknownWordsOf(questions, options.tokenizer)
      if (unknown.length > 0) {
        refused.push(toErrorRecord(row, options.stage, 'question-out-of-vocabulary', outOfVocabularyMessage(unknown, options.tokenizer)))
        return
      }
    }
    const ids = prompts.map((question) => promptIds(options.template, question, options.tokenizer))
    const longest = Math.max(...ids.map((p) => p.length))
    if (longest >= options.maxPositions) {
      refused.push(toErrorRecord(row, options.stage, 'stage-failed', `a prompt of ${longest} tokens leaves no room in the decoder's ${options.maxPositions} positions`))
      return
    }
    planned.push({ row, prompts, first: samples.length })
    for (const prompt of ids) samples.push({ memoryRow, prompt })
  })
  return { planned, samples, refused }
}

/** The words of `questions` the tokenizer cannot represent, in order, without repeats. */
export function unknownWordsOf(questions: readonly string[], tokenizer: TextTokenizer): string[] {
  return [...new Set(questions.flatMap((q) => tokenizer.unknownWords?.(q) ?? []))]
}

/** Why a question is refused: the words the vocabulary lacks (at most 8 named). */
export function outOfVocabularyMessage(words: readonly string[], tokenizer: TextTokenizer): string {
  const named = words.slice(0, 8).map((w) => JSON.stringify(w)).join(', ')
  const more = words.length > 8 ? ` and ${words.length - 8} more` : ''
  return `the question has words the model's vocabulary (${tokenizer.vocabSize} tokens) cannot represent: ${named}${more}`
}

/** One `GeneratedText` per planned row: a `Generation` per prompt, from `sequences` (in sample order). */
export function generatedTexts(planned: readonly PlannedRow[], sequences: readonly GeneratedSequence[], tokenizer: TextTokenizer): GeneratedText[] {
  return planned.map(({ row, prompts, first }) => ({
    kind: 'generated-text',
    key: row.key,
    source: row.source,
    kept: row.kept,
    id: row.id,
    generations: prompts.map((prompt, i) => {
      const { tokens, finish, logprobs } = sequences[first + i]
      return { prompt, text: tokenizer.decode(tokens), tokens, finish, logprobs }
    }),
  }))
}
