/**
 * Planning a run's shards (footers only: row counts, selected ranges, fingerprints, columns) and reading
 * the rows of one row group at a time.
 */
import { createHash } from 'node:crypto'
import { parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

import { PipelineConfigError, ShardReadError, describeError } from '../errors.js'
import type { ShardInfo } from '../records.js'
import { fileRows, openParquet, rowGroupRanges, type OpenParquet } from './file.js'
import { outputNames, resolveInputs } from './inputs.js'
import { chooseImageColumn, keptColumns, summarizeColumns, type ColumnSummary } from './schema.js'

export interface ShardSelection {
  /** Only these row groups, `[start, end)` (to split a big shard). */
  rowGroups?: readonly [number, number]
  /** Only these rows, `[start, end)` absolute within each file (to split a big shard). */
  rows?: readonly [number, number]
  /** At most this many rows over the whole run (the first shards in order). */
  limit?: number
}

export interface ShardColumns {
  /** Column holding the image bytes. Default: auto-detected (the only binary column, or one named `image`, ...). */
  imageColumn?: string
  /** Set to false when the pipeline reads no image. Default true. */
  requireImage?: boolean
  /** Column holding row ids, kept in the output. Default: `id` when the file has one. */
  idColumn?: string
  /** Columns copied unchanged to the output. Default: none (besides the id column). */
  keep?: readonly string[]
}

export type ShardPlan =
  | { readonly ok: true; readonly info: ShardInfo }
  | { readonly ok: false; readonly info: ShardInfo; readonly error: ShardReadError }

/** Image column problems found while planning: every row of the shard becomes an error row. */
export interface PlannedShard {
  readonly plan: ShardPlan
  readonly imageProblem?: string
  /** The file's top-level columns (for the planning checks, `pipelines/check-plan.ts`); absent when unreadable. */
  readonly columns?: readonly ColumnSummary[]
}

export function validateSelection(selection: ShardSelection): void {
  const check = (field: string, range?: readonly [number, number]) => {
    if (range === undefined) return
    const [start, end] = range
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start) {
      throw new PipelineConfigError(field, `must be [start, end) with 0 <= start <= end, got [${range.join(', ')}]`)
    }
  }
  check('rowGroups', selection.rowGroups)
  check('rows', selection.rows)
  if (selection.rowGroups && selection.rows) throw new PipelineConfigError('rows', 'give rows or rowGroups, not both')
  if (selection.limit !== undefined && (!Number.isInteger(selection.limit) || selection.limit < 0)) {
    throw new PipelineConfigError('limit', `must be a non-negative integer, got ${selection.limit}`)
  }
}

/** Opens every input's footer and plans what will be read. Unreadable files give failed plans, not throws. */
export async function planShards(
  inputs: readonly string[],
  options: ShardSelection & ShardColumns = {},
): Promise<PlannedShard[]> {
  validateSelection(options)
  const files = await resolveInputs(inputs)
  const names = outputNames(files)
  const planned: PlannedShard[] = []
  let remaining = options.limit ?? Infinity
  for (const [index, path] of files.entries()) {
    let file: OpenParquet | undefined
    try {
      file = await openParquet(path)
      const { info, imageProblem, columns } = describeShard(file, names[index], index, options, remaining)
      remaining -= info.rows
      planned.push({ plan: { ok: true, info }, columns, ...(imageProblem === undefined ? {} : { imageProblem }) })
    } catch (error) {
      const readError = error instanceof ShardReadError ? error : new ShardReadError(path, describeError(error), undefined, { cause: error })
      planned.push({ plan: { ok: false, info: failedInfo(path, names[index], index), error: readError } })
    } finally {
      await file?.close().catch(() => {})
    }
  }
  return planned
}

function failedInfo(path: string, name: string, index: number): ShardInfo {
  return { path, name, index, rowStart: 0, rowEnd: 0, rows: 0, rowGroups: 0, fileBytes: 0, fingerprint: '', kept: [] }
}

function describeShard(
  file: OpenParquet,
  baseName: string,
  index: number,
  options: ShardSelection & ShardColumns,
  remaining: number,
): { info: ShardInfo; imageProblem?: string; columns: ColumnSummary[] } {
  const { metadata } = file
  const groups = rowGroupRanges(metadata)
  const total = fileRows(metadata)
  let rowStart = 0
  let rowEnd = total
  if (options.rowGroups) {
    const [g0, g1] = options.rowGroups
    const first = Math.min(g0, groups.length)
    const last = Math.min(g1, groups.length)
    rowStart = first < groups.length ? groups[first].start : total
    rowEnd = last > first ? groups[last - 1].end : rowStart
  } else if (options.rows) {
    rowStart = Math.min(options.rows[0], total)
    rowEnd = Math.min(options.rows[1], total)
  }
  rowEnd = Math.max(rowStart, Math.min(rowEnd, rowStart + Math.max(0, remaining)))
  const partial = rowStart !== 0 || rowEnd !== total
  const name = partial ? `${baseName}.rows-${rowStart}-${rowEnd}` : baseName

  const columns = summarizeColumns(metadata)
  let imageColumn: string | undefined
  let imageProblem: string | undefined
  if (options.requireImage !== false) {
    const choice = chooseImageColumn(columns, options.imageColumn)
    if ('column' in choice) imageColumn = choice.column
    else imageProblem = choice.problem
  }
  const idColumn = options.idColumn ?? (columns.some((c) => c.name === 'id') ? 'id' : undefined)
  const keepNames = [...new Set([...(idColumn === undefined ? [] : [idColumn]), ...(options.keep ?? [])])]
  const fingerprint = createHash('sha256').update(file.footerHash).update(`${rowStart}:${rowEnd}`).digest('hex')
  const info: ShardInfo = {
    path: file.path,
    name,
    index,
    rowStart,
    rowEnd,
    rows: rowEnd - rowStart,
    rowGroups: groups.filter((g) => g.end > rowStart && g.start < rowEnd).length,
    fileBytes: file.byteLength,
    fingerprint,
    ...(imageColumn === undefined ? {} : { imageColumn }),
    ...(idColumn === undefined ? {} : { idColumn }),
    kept: keptColumns(metadata, keepNames),
  }
  return imageProblem === undefined ? { info, columns } : { info, imageProblem, columns }
}

/** One slice of rows to read: the part of a row group inside the shard's selection. */
export interface RowGroupSlice {
  readonly rowGroup: number
  readonly start: number
  readonly end: number
}

export function rowGroupSlices(file: OpenParquet, info: ShardInfo): RowGroupSlice[] {
  return rowGroupRanges(file.metadata)
    .map((g, rowGroup) => ({ rowGroup, start: Math.max(g.start, info.rowStart), end: Math.min(g.end, info.rowEnd) }))
    .filter((s) => s.end > s.start)
}

/** Reads the rows of one slice as objects, binary columns as `Uint8Array` (hyparquet with `utf8: false`). */
export async function readSlice(
  file: OpenParquet,
  slice: RowGroupSlice,
  columns: readonly string[],
): Promise<Record<string, unknown>[]> {
  try {
    const rows = await parquetReadObjects({
      file: file.buffer,
      metadata: file.metadata,
      columns: [...columns],
      rowStart: slice.start,
      rowEnd: slice.end,
      utf8: false,
      compressors,
    })
    if (rows.length !== slice.end - slice.start) {
      throw new Error(`expected ${slice.end - slice.start} rows, decoded ${rows.length}`)
    }
    return rows as Record<string, unknown>[]
  } catch (cause) {
    throw new ShardReadError(file.path, describeError(cause), slice.rowGroup, { cause })
  }
}
