/**
 * `evaluateOutputs`: scores a run's output folder against the reference shards it was made from —
 * caption exact match, BLEU-4 and CIDEr-D, VQA accuracy, and errors by attribute from the scene ground
 * truth (see `metrics.ts` and `breakdown.ts` for the definitions).
 *
 * Joining: output rows are matched to reference rows by the id column (`id` unless `idColumn` says
 * otherwise), which every pipeline keeps when the input has one. Only when the output or the reference has
 * no id column are rows matched by order, within shards of the same name (an output shard is named after
 * its input file, `<stem>.parquet`, or `<stem>.rows-START-END.parquet` for a `--rows` slice, whose first
 * row is reference row START). Several output rows may share an id (many questions per image): each is
 * scored. Error rows (`status = 'error'`) count as wrong in every metric and are reported with their
 * codes; the attribute breakdown covers ok rows only. Rows on one side only are reported, not scored.
 * When the output has `finish_reason` (evflow's text pipelines write it), exact match and VQA accuracy are
 * also given per finish reason, over the ok rows: `stop` (the model ended the text) and `length` (the token
 * limit cut it), which is where a model's confident-looking nonsense tends to show.
 */
import { stat } from 'node:fs/promises'
import { basename } from 'node:path'
import { parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

import { answerQuestion, captionOf } from '../../scenes/grammar.js'
import type { Scene } from '../../scenes/scene.js'
import { InputNotFoundError, PipelineConfigError, ShardReadError, describeError } from '../../src/errors.js'
import { openParquet } from '../../src/parquet/file.js'
import { outputNames, resolveInputs } from '../../src/parquet/inputs.js'
import { ATTRIBUTES, QUESTION_TYPES, checkCaption, questionType, type Attribute, type EvalQuestionType } from '../../scenes/score.js'
import { ciderD, corpusBleu, isExactMatch, normalizeText, type BleuResult, type TextPair } from '../../src/text/metrics.js'

export * from '../../src/text/metrics.js'
export * from '../../scenes/score.js'

export interface EvaluateOptions {
  /** A run's output folder (`<out>/*.parquet`; `_evflow/` is ignored). */
  readonly outDir: string
  /** Reference Parquet files, folders or globs: the inputs of the run, with `caption` / `question` / `answer` / `scene`. */
  readonly reference: readonly string[]
  /** Column joining the two sides. Default `id`. */
  readonly idColumn?: string
}

export interface RowCounts {
  /** Rows in the output shards. */
  readonly output: number
  /** Rows in the reference shards. */
  readonly reference: number
  /** Output rows matched to a reference row (ok + error). */
  readonly evaluated: number
  readonly ok: number
  readonly error: number
  /** Error rows by `error_code` (`unknown` when empty). */
  readonly errorCodes: Readonly<Record<string, number>>
  /** Reference rows no output row matched. */
  readonly missingFromOutput: number
  /** Output rows matching no reference row. */
  readonly notInReference: number
  /** Reference rows whose id repeats an earlier one (the first is used). */
  readonly duplicateReferenceIds: number
}

export interface AttributeCount {
  /** Objects with this attribute wrong (for `count`: objects said but absent, plus objects present but not said). */
  readonly errors: number
  /** Captions with at least one such error. */
  readonly captions: number
}

export interface CaptionBreakdown {
  /** Ok captions scored against a scene (`imageCaptions` + `videoCaptions`). */
  readonly captions: number
  readonly imageCaptions: number
  readonly videoCaptions: number
  /** Of those, captions in the grammar, and the others (not scored by attribute). */
  readonly parsed: number
  readonly unparsed: number
  /** Scene objects in the parsed captions' scenes. */
  readonly objects: number
  /** Parsed captions with no attribute error. */
  readonly correct: number
  readonly attributes: Readonly<Record<Attribute, AttributeCount>>
}

/** Ok rows by how their text ended (`finish_reason`), and how many of them are right. */
export type FinishReasonAccuracy = Readonly<Partial<Record<'stop' | 'length', QuestionTypeAccuracy>>>

export interface CaptionReport {
  /** Rows scored (ok + error), each with one reference caption. */
  readonly rows: number
  readonly ok: number
  readonly error: number
  readonly exactMatches: number
  /** Fractions in [0, 1]. */
  readonly exactMatch: number
  readonly bleu4: number
  readonly bleu: BleuResult
  /** CIDEr-D, 0-10 (×10 as in coco-caption). */
  readonly ciderD: number
  /** Null when the reference has no scene column. */
  readonly breakdown: CaptionBreakdown | null
  /** Exact match of the ok rows per finish reason; null when the output has no `finish_reason` column. */
  readonly byFinishReason: FinishReasonAccuracy | null
}

export interface QuestionTypeAccuracy {
  readonly rows: number
  readonly correct: number
  readonly accuracy: number
}

export interface VqaReport {
  /** Questions scored (ok + error), each with a ground-truth answer. */
  readonly rows: number
  readonly ok: number
  readonly error: number
  readonly correct: number
  /** Fraction in [0, 1]. */
  readonly accuracy: number
  /** Questions without a ground-truth answer (not the reference row's question and not answerable from its scene). */
  readonly unscorable: number
  readonly byType: Readonly<Partial<Record<EvalQuestionType, QuestionTypeAccuracy>>>
  /** Accuracy of the ok rows per finish reason; null when the output has no `finish_reason` column. */
  readonly byFinishReason: FinishReasonAccuracy | null
}

export interface EvalReport {
  readonly outDir: string
  readonly outputFiles: readonly string[]
  readonly referenceFiles: readonly string[]
  /** How rows were joined: by the id column, or by row order within same-named shards. */
  readonly join: 'id' | 'row-order'
  readonly idColumn: string | null
  readonly rows: RowCounts
  /** Null when the output has no `caption` column. */
  readonly caption: CaptionReport | null
  /** Null when the output has no `answer` column. */
  readonly vqa: VqaReport | null
}

// ----------------------------------------------------------------------------------------------- reading

type Row = Record<string, unknown>

interface Shard {
  readonly path: string
  readonly columns: ReadonlySet<string>
  readonly rows: Row[]
}

const OUTPUT_COLUMNS = ['status', 'error', 'error_code', 'caption', 'question', 'answer', 'finish_reason']
const FINISH_REASONS = ['stop', 'length'] as const
const REFERENCE_COLUMNS = ['caption', 'question', 'answer', 'scene']

async function readShard(path: string, wanted: readonly string[]): Promise<Shard> {
  const file = await openParquet(path)
  try {
    const top = new Set<string>()
    const schema = file.metadata.schema
    // Top-level columns only: children of the root, skipping nested elements.
    let i = 1
    while (i < schema.length) {
      top.add(schema[i].name)
      i = skipElement(schema, i)
    }
    const columns = wanted.filter((c) => top.has(c))
    const rows = columns.length === 0
      ? new Array<Row>(Number(file.metadata.num_rows)).fill({})
      : ((await parquetReadObjects({ file: file.buffer, metadata: file.metadata, columns, compressors })) as Row[])
    return { path, columns: new Set(columns), rows }
  } catch (cause) {
    if (cause instanceof ShardReadError) throw cause
    throw new ShardReadError(path, describeError(cause), undefined, { cause })
  } finally {
    await file.close().catch(() => {})
  }
}

/** Index of the schema element after element `i` and all its descendants. */
function skipElement(schema: readonly { num_children?: number }[], i: number): number {
  let next = i + 1
  for (let c = 0; c < (schema[i].num_children ?? 0); c++) next = skipElement(schema, next)
  return next
}

const decoder = new TextDecoder()

function asText(value: unknown): string | null {
  if (value === null || value === undefined) return null
  if (typeof value === 'string') return value
  if (value instanceof Uint8Array) return decoder.decode(value)
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value)
  return JSON.stringify(value)
}

function asScene(value: unknown): Scene | null {
  let v = value
  if (typeof v === 'string' || v instanceof Uint8Array) {
    try {
      v = JSON.parse(asText(v) as string)
    } catch {
      return null
    }
  }
  if (!v || typeof v !== 'object') return null
  const scene = v as Partial<Scene>
  return (scene.kind === 'image' || scene.kind === 'video') && Array.isArray(scene.objects) ? (scene as Scene) : null
}

// ------------------------------------------------------------------------------------------------- joining

interface Joined {
  readonly out: Row
  readonly ref: Row
}

function joinById(outputs: readonly Shard[], references: readonly Shard[], idColumn: string) {
  const byId = new Map<string, Row>()
  let duplicates = 0
  for (const shard of references) {
    for (const row of shard.rows) {
      const id = asText(row[idColumn])
      if (id === null) continue
      if (byId.has(id)) duplicates++
      else byId.set(id, row)
    }
  }
  const joined: Joined[] = []
  const seen = new Set<string>()
  let notInReference = 0
  const examples: string[] = []
  for (const shard of outputs) {
    for (const row of shard.rows) {
      const id = asText(row[idColumn])
      const ref = id === null ? undefined : byId.get(id)
      if (ref === undefined) {
        notInReference++
        if (examples.length < 1 && id !== null) examples.push(id)
        continue
      }
      seen.add(id as string)
      joined.push({ out: row, ref })
    }
  }
  const referenceRows = references.reduce((n, s) => n + s.rows.length, 0)
  return { joined, notInReference, missingFromOutput: referenceRows - duplicates - seen.size, duplicates, example: examples[0], refExample: byId.keys().next().value }
}

const SLICE = /\.rows-(\d+)-(\d+)$/

function joinByOrder(outputs: readonly Shard[], references: readonly Shard[]) {
  const refNames = outputNames(references.map((s) => s.path))
  const byName = new Map(references.map((s, i) => [refNames[i], s]))
  const used = new Map<Shard, Set<number>>()
  const joined: Joined[] = []
  let notInReference = 0
  for (const shard of outputs) {
    let name = basename(shard.path).replace(/\.parquet$/i, '')
    let offset = 0
    const slice = SLICE.exec(name)
    if (slice && !byName.has(name)) {
      offset = Number(slice[1])
      name = name.slice(0, slice.index)
    }
    const ref = byName.get(name)
    if (ref === undefined) {
      notInReference += shard.rows.length
      continue
    }
    const taken = used.get(ref) ?? new Set<number>()
    used.set(ref, taken)
    for (const [i, row] of shard.rows.entries()) {
      const r = offset + i
      if (r >= ref.rows.length) {
        notInReference++
        continue
      }
      taken.add(r)
      joined.push({ out: row, ref: ref.rows[r] })
    }
  }
  const referenceRows = references.reduce((n, s) => n + s.rows.length, 0)
  const covered = [...used.values()].reduce((n, s) => n + s.size, 0)
  return { joined, notInReference, missingFromOutput: referenceRows - covered, refNames }
}

// ------------------------------------------------------------------------------------------------ scoring

const statusOf = (row: Row): 'ok' | 'error' => (asText(row.status) === 'error' ? 'error' : 'ok')

/** Counts ok rows and right ones per finish reason (`stop`, `length`; other values are not counted). */
class FinishTally {
  private readonly counts = new Map<string, { rows: number; correct: number }>()
  add(row: Row, right: boolean): void {
    const reason = asText(row.finish_reason)
    if (reason === null || statusOf(row) !== 'ok') return
    const c = this.counts.get(reason) ?? { rows: 0, correct: 0 }
    c.rows++
    if (right) c.correct++
    this.counts.set(reason, c)
  }
  report(): FinishReasonAccuracy {
    const out: Partial<Record<'stop' | 'length', QuestionTypeAccuracy>> = {}
    for (const reason of FINISH_REASONS) {
      const c = this.counts.get(reason)
      if (c) out[reason] = { rows: c.rows, correct: c.correct, accuracy: c.correct / c.rows }
    }
    return out
  }
}

function scoreCaptions(joined: readonly Joined[], hasScene: boolean, hasFinish: boolean): CaptionReport | null {
  const pairs: TextPair[] = []
  const scenes: (Scene | null)[] = []
  const finish = new FinishTally()
  let ok = 0
  let error = 0
  for (const { out, ref } of joined) {
    const scene = asScene(ref.scene)
    const reference = asText(ref.caption) ?? (scene === null ? null : captionOf(scene))
    if (reference === null) continue
    const isOk = statusOf(out) === 'ok'
    if (isOk) ok++
    else error++
    const pair = { candidate: isOk ? asText(out.caption) : null, reference }
    pairs.push(pair)
    scenes.push(isOk ? scene : null)
    finish.add(out, isExactMatch(pair.candidate, pair.reference))
  }
  if (pairs.length === 0) return null
  const exactMatches = pairs.filter((p) => isExactMatch(p.candidate, p.reference)).length
  const bleu = corpusBleu(pairs)
  return {
    rows: pairs.length,
    ok,
    error,
    exactMatches,
    exactMatch: exactMatches / pairs.length,
    bleu4: bleu.bleu,
    bleu,
    ciderD: ciderD(pairs).cider,
    breakdown: hasScene ? breakdownOf(pairs, scenes) : null,
    byFinishReason: hasFinish ? finish.report() : null,
  }
}

function breakdownOf(pairs: readonly TextPair[], scenes: readonly (Scene | null)[]): CaptionBreakdown {
  const attributes = Object.fromEntries(ATTRIBUTES.map((a) => [a, { errors: 0, captions: 0 }])) as Record<Attribute, { errors: number; captions: number }>
  let imageCaptions = 0
  let videoCaptions = 0
  let parsed = 0
  let unparsed = 0
  let objects = 0
  let correct = 0
  for (const [i, scene] of scenes.entries()) {
    if (scene === null) continue
    if (scene.kind === 'image') imageCaptions++
    else videoCaptions++
    const check = checkCaption(scene, pairs[i].candidate)
    if (!check.parsed) {
      unparsed++
      continue
    }
    parsed++
    objects += check.objects
    let any = false
    for (const a of ATTRIBUTES) {
      if (check.errors[a] === 0) continue
      any = true
      attributes[a].errors += check.errors[a]
      attributes[a].captions++
    }
    if (!any) correct++
  }
  return { captions: imageCaptions + videoCaptions, imageCaptions, videoCaptions, parsed, unparsed, objects, correct, attributes }
}

function scoreAnswers(joined: readonly Joined[], hasFinish: boolean): VqaReport | null {
  const finish = new FinishTally()
  let rows = 0
  let ok = 0
  let error = 0
  let correct = 0
  let unscorable = 0
  const byType = new Map<EvalQuestionType, { rows: number; correct: number }>()
  for (const { out, ref } of joined) {
    const refQuestion = asText(ref.question)
    const question = asText(out.question) ?? refQuestion
    if (question === null) {
      unscorable++
      continue
    }
    let truth: string | null = null
    if (refQuestion !== null && normalizeText(refQuestion) === normalizeText(question)) truth = asText(ref.answer)
    if (truth === null) {
      const scene = asScene(ref.scene)
      truth = scene === null ? null : answerQuestion(scene, question.trim().toLowerCase().replace(/\s+/g, ' '))
    }
    if (truth === null) {
      unscorable++
      continue
    }
    const isOk = statusOf(out) === 'ok'
    const right = isOk && isExactMatch(asText(out.answer), truth)
    rows++
    if (isOk) ok++
    else error++
    if (right) correct++
    finish.add(out, right)
    const type = questionType(question)
    const t = byType.get(type) ?? { rows: 0, correct: 0 }
    t.rows++
    if (right) t.correct++
    byType.set(type, t)
  }
  if (rows === 0 && unscorable === 0) return null
  const types: Partial<Record<EvalQuestionType, QuestionTypeAccuracy>> = {}
  for (const type of QUESTION_TYPES) {
    const t = byType.get(type)
    if (t) types[type] = { rows: t.rows, correct: t.correct, accuracy: t.correct / t.rows }
  }
  return { rows, ok, error, correct, accuracy: rows === 0 ? 0 : correct / rows, unscorable, byType: types, byFinishReason: hasFinish ? finish.report() : null }
}

// ------------------------------------------------------------------------------------------------- entry

/**
 * Scores the output folder `outDir` against `reference`. Throws `InputNotFoundError` (a folder or file
 * missing, no shards) and `PipelineConfigError` (no result column to score, no row in common),
 * `ShardReadError` for an unreadable shard.
 */
export async function evaluateOutputs(options: EvaluateOptions): Promise<EvalReport> {
  const { outDir } = options
  const idColumn = options.idColumn ?? 'id'
  if (options.reference.length === 0) throw new PipelineConfigError('reference', 'give at least one reference shard, folder or glob')
  let info
  try {
    info = await stat(outDir)
  } catch {
    throw new InputNotFoundError(outDir, 'no such output folder')
  }
  if (!info.isDirectory()) throw new InputNotFoundError(outDir, 'not a folder (give the output folder of a run)')
  const outputFiles = await resolveInputs([outDir])
  const referenceFiles = await resolveInputs(options.reference)

  const outputs: Shard[] = []
  for (const f of outputFiles) outputs.push(await readShard(f, [idColumn, ...OUTPUT_COLUMNS]))
  const has = (shards: readonly Shard[], column: string) => shards.some((s) => s.columns.has(column))
  const hasCaption = has(outputs, 'caption')
  const hasAnswer = has(outputs, 'answer')
  if (!hasCaption && !hasAnswer) {
    const seen = [...new Set(outputs.flatMap((s) => [...s.columns]))]
    throw new PipelineConfigError(
      'out',
      `${outDir}: no result column to evaluate (expected 'caption', or 'answer' with 'question'; ` +
        `its shards have ${seen.length === 0 ? 'none of those' : seen.join(', ')}): is it the output of evflow caption, vqa or video-caption?`,
    )
  }
  const references: Shard[] = []
  for (const f of referenceFiles) references.push(await readShard(f, [idColumn, ...REFERENCE_COLUMNS]))
  if (!REFERENCE_COLUMNS.some((c) => has(references, c))) {
    throw new PipelineConfigError('reference', `the reference shards have none of the columns ${REFERENCE_COLUMNS.join(', ')}`)
  }

  const byId = outputs.every((s) => s.columns.has(idColumn)) && references.every((s) => s.columns.has(idColumn))
  let joined: Joined[]
  let notInReference: number
  let missingFromOutput: number
  let duplicateReferenceIds = 0
  const outputRows = outputs.reduce((n, s) => n + s.rows.length, 0)
  if (byId) {
    const j = joinById(outputs, references, idColumn)
    if (j.joined.length === 0 && outputRows > 0) {
      throw new PipelineConfigError(
        'reference',
        `no '${idColumn}' of ${outDir} is in the reference (output e.g. ${JSON.stringify(j.example ?? null)}, reference e.g. ${JSON.stringify(j.refExample ?? null)}): wrong reference shards?`,
      )
    }
    ;({ joined, notInReference, missingFromOutput } = j)
    duplicateReferenceIds = j.duplicates
  } else {
    const j = joinByOrder(outputs, references)
    if (j.joined.length === 0 && outputRows > 0) {
      throw new PipelineConfigError(
        'reference',
        `no '${idColumn}' column on both sides, and no output shard is named after a reference shard (${j.refNames.slice(0, 3).join(', ')}): cannot join rows`,
      )
    }
    ;({ joined, notInReference, missingFromOutput } = j)
  }

  const errorCodes: Record<string, number> = {}
  let error = 0
  for (const { out } of joined) {
    if (statusOf(out) !== 'error') continue
    error++
    const code = asText(out.error_code) || 'unknown'
    errorCodes[code] = (errorCodes[code] ?? 0) + 1
  }
  return {
    outDir,
    outputFiles,
    referenceFiles,
    join: byId ? 'id' : 'row-order',
    idColumn: byId ? idColumn : null,
    rows: {
      output: outputRows,
      reference: references.reduce((n, s) => n + s.rows.length, 0),
      evaluated: joined.length,
      ok: joined.length - error,
      error,
      errorCodes,
      missingFromOutput,
      notInReference,
      duplicateReferenceIds,
    },
    caption: hasCaption ? scoreCaptions(joined, has(references, 'scene'), has(outputs, 'finish_reason')) : null,
    vqa: hasAnswer ? scoreAnswers(joined, has(outputs, 'finish_reason')) : null,
  }
}
