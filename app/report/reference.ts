/**
 * The reference text of each gallery row, for `--reference`: the reference caption (or the one the scenes
 * grammar derives from `scene`), or the ground-truth answer of the row's question, and whether the output
 * matches it (`isExactMatch`, the rule `evflow eval` scores with). Rows are joined by id as `evflow eval`
 * joins them; without ids, a row is the reference row at the same input file and row. The reference shards
 * are streamed one row group at a time, keeping only the rows asked for.
 */
import { realpath } from 'node:fs/promises'
import { parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

import { answerQuestion, captionOf } from '../../scenes/grammar.js'
import type { Scene } from '../../scenes/scene.js'
import { describeError } from '../../src/errors.js'
import { openParquet, rowGroupRanges } from '../../src/parquet/file.js'
import { resolveInputs } from '../../src/parquet/inputs.js'
import { summarizeColumns } from '../../src/parquet/schema.js'
import { isExactMatch, normalizeText } from '../../src/text/metrics.js'
import type { SampledRow } from './read-output.js'
import { rowKey } from './thumbnails.js'

export interface ReferenceText {
  /** What the row is compared with: `caption` or `answer`. */
  readonly kind: 'caption' | 'answer'
  readonly text: string
  readonly match: boolean
}

const REFERENCE_COLUMNS = ['caption', 'question', 'answer', 'scene']

const asText = (value: unknown): string | null => {
  if (value === null || value === undefined) return null
  if (typeof value === 'string') return value
  if (value instanceof Uint8Array) return Buffer.from(value).toString('utf8')
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value)
  return JSON.stringify(value)
}

function asScene(value: unknown): Scene | null {
  let v = value
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v)
    } catch {
      return null
    }
  }
  if (!v || typeof v !== 'object') return null
  const scene = v as Partial<Scene>
  return (scene.kind === 'image' || scene.kind === 'video') && Array.isArray(scene.objects) ? (scene as Scene) : null
}

/** The reference of one output row from its reference row, or null when there is none to compare with. */
function referenceOf(row: SampledRow, ref: Record<string, unknown>): ReferenceText | null {
  const scene = asScene(ref.scene)
  if (row.fields.caption !== undefined) {
    const truth = asText(ref.caption) ?? (scene === null ? null : captionOf(scene))
    return truth === null ? null : { kind: 'caption', text: truth, match: isExactMatch(row.fields.caption, truth) }
  }
  if (row.fields.answer !== undefined) {
    const refQuestion = asText(ref.question)
    const question = row.fields.question ?? refQuestion
    if (question === null) return null
    let truth: string | null = null
    if (refQuestion !== null && normalizeText(refQuestion) === normalizeText(question)) truth = asText(ref.answer)
    if (truth === null && scene !== null) truth = answerQuestion(scene, question.trim().toLowerCase().replace(/\s+/g, ' '))
    return truth === null ? null : { kind: 'answer', text: truth, match: isExactMatch(row.fields.answer, truth) }
  }
  return null
}

/**
 * Reference texts for `rows` (keyed by `rowKey`), from the `reference` files, folders or globs. Throws
 * `InputNotFoundError` when a reference is missing; an unreadable reference shard is skipped and named in
 * `problems`.
 */
export async function referenceTexts(
  rows: readonly SampledRow[],
  reference: readonly string[],
  idColumn: string,
): Promise<{ texts: Map<string, ReferenceText>; problems: string[] }> {
  const files = await resolveInputs(reference)
  const texts = new Map<string, ReferenceText>()
  const problems: string[] = []
  const byId = new Map<string, SampledRow[]>()
  for (const row of rows) if (row.id !== null) byId.set(row.id, [...(byId.get(row.id) ?? []), row])
  // Rows without an id are matched by input file and row.
  const byPlace = new Map<string, SampledRow[]>()
  for (const row of rows) {
    if (row.id !== null) continue
    const place = `${await realpath(row.input).catch(() => row.input)}\u0000${row.inputRow}`
    byPlace.set(place, [...(byPlace.get(place) ?? []), row])
  }
  const seenIds = new Set<string>()
  for (const path of files) {
    if (byId.size === seenIds.size && byPlace.size === 0) break
    let file
    try {
      file = await openParquet(path)
    } catch (error) {
      problems.push(describeError(error))
      continue
    }
    try {
      const present = new Set(summarizeColumns(file.metadata).map((c) => c.name))
      const columns = [idColumn, ...REFERENCE_COLUMNS].filter((c) => present.has(c))
      const hasId = present.has(idColumn)
      const real = await realpath(path).catch(() => path)
      for (const g of rowGroupRanges(file.metadata)) {
        if (g.end === g.start) continue
        const values = (await parquetReadObjects({ file: file.buffer, metadata: file.metadata, columns, rowStart: g.start, rowEnd: g.end, compressors })) as Record<string, unknown>[]
        for (const [i, ref] of values.entries()) {
          let matched: SampledRow[] | undefined
          if (hasId) {
            const id = asText(ref[idColumn])
            if (id !== null && !seenIds.has(id)) {
              matched = byId.get(id)
              // The first reference row of an id is used, as `evflow eval` does.
              if (matched) seenIds.add(id)
            }
          }
          const place = byPlace.get(`${real}\u0000${g.start + i}`)
          for (const row of [...(matched ?? []), ...(place ?? [])]) {
            const text = referenceOf(row, ref)
            if (text) texts.set(rowKey(row), text)
          }
        }
      }
    } catch (error) {
      problems.push(`${path}: ${describeError(error)}`)
    } finally {
      await file.close().catch(() => {})
    }
  }
  return { texts, problems }
}
