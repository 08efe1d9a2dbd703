/**
 * Planning a run's shards (footers and row counts, established in parser processes: see
 * {@link ParquetReader}): selected ranges, fingerprints, columns; and the row-group slices to read.
 */
import { createHash } from 'node:crypto'

import { PipelineConfigError, ShardReadError, describeError } from '../errors.js'
import type { ShardInfo } from '../records.js'
import { nameShards, resolveInputs } from './inputs.js'
import { ParquetReader, type ParquetReaderOptions, type ParquetSource, type ReadBudget } from './reader.js'
import { chooseImageColumn, keptColumns, type ColumnSummary } from './schema.js'

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

/** How planning and reading parse files: a reader to share, or the budgets of a reader of their own. */
export interface ShardReading extends ReadBudget {
  /**
   * Parser processes to use (never closed by the callee). Default: a reader of the callee's own, with the
   * budgets above, closed when done.
   */
  reader?: ParquetReader
  /** Testing only: see {@link ParquetReaderOptions.debugSpin}. */
  debugSpin?: ParquetReaderOptions['debugSpin']
}

/** The {@link ShardReading} fields of `options` (to pass them on). */
export function readingOf(options: ShardReading): ShardReading {
  return {
    ...(options.reader === undefined ? {} : { reader: options.reader }),
    ...(options.readTimeoutMs === undefined ? {} : { readTimeoutMs: options.readTimeoutMs }),
    ...(options.readMemoryMb === undefined ? {} : { readMemoryMb: options.readMemoryMb }),
    ...(options.debugSpin === undefined ? {} : { debugSpin: options.debugSpin }),
  }
}

/** A reader for `options`: the one given (not to be closed), or a new one (to be closed by the caller). */
export function readerFor(options: ShardReading, parsers: number): { reader: ParquetReader; owned: boolean } {
  if (options.reader) return { reader: options.reader, owned: false }
  return {
    reader: new ParquetReader({
      parsers,
      ...(options.readTimeoutMs === undefined ? {} : { readTimeoutMs: options.readTimeoutMs }),
      ...(options.readMemoryMb === undefined ? {} : { readMemoryMb: options.readMemoryMb }),
      ...(options.debugSpin === undefined ? {} : { debugSpin: options.debugSpin }),
    }),
    owned: true,
  }
}

/**
 * Opens every input's footer (in parser processes, several at once) and plans what will be read.
 * Unreadable files give failed plans, not throws.
 */
export async function planShards(
  inputs: readonly string[],
  options: ShardSelection & ShardColumns & ShardReading = {},
): Promise<PlannedShard[]> {
  validateSelection(options)
  ParquetReader.validate(options)
  const files = await resolveInputs(inputs)
  // Names are given over the whole plan at the end; until then a shard's name is its selection suffix.
  const names = files.map(() => '')
  const { reader, owned } = readerFor(options, 2)
  try {
    // Footers are parsed a few at a time; the plan is then made in input order (the limit is run-wide).
    const opened: Promise<ParquetSource | ShardReadError>[] = []
    let next = 0
    const openNext = (): void => {
      const path = files[next++]
      opened.push(
        reader.open(path).then(
          async (source) => {
            await source.close().catch(() => {})
            return source
          },
          (error: unknown) => (error instanceof ShardReadError ? error : new ShardReadError(path, describeError(error), undefined, { cause: error })),
        ),
      )
    }
    for (let i = 0; i < Math.min(reader.parsers, files.length); i++) openNext()
    const planned: PlannedShard[] = []
    let remaining = options.limit ?? Infinity
    for (const [index, path] of files.entries()) {
      const result = await opened[index]
      if (next < files.length) openNext()
      if (result instanceof ShardReadError) {
        planned.push({ plan: { ok: false, info: failedInfo(path, names[index], index), error: result } })
        continue
      }
      const { info, imageProblem, columns } = describeShard(result, names[index], index, options, remaining)
      remaining -= info.rows
      planned.push({ plan: { ok: true, info }, columns, ...(imageProblem === undefined ? {} : { imageProblem }) })
    }
    return nameShards(planned)
  } finally {
    if (owned) await reader.close()
  }
}

function failedInfo(path: string, name: string, index: number): ShardInfo {
  return { path, name, index, rowStart: 0, rowEnd: 0, rows: 0, rowGroups: 0, fileBytes: 0, fingerprint: '', kept: [] }
}

function describeShard(
  file: ParquetSource,
  baseName: string,
  index: number,
  options: ShardSelection & ShardColumns,
  remaining: number,
): { info: ShardInfo; imageProblem?: string; columns: readonly ColumnSummary[] } {
  const groups = rowGroupRanges(file)
  const total = groups.length === 0 ? 0 : groups[groups.length - 1].end
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

  const columns = file.columns
  let imageColumn: string | undefined
  let imageProblem: string | undefined
  if (options.requireImage !== false) {
    const choice = chooseImageColumn(columns, options.imageColumn)
    if ('column' in choice) imageColumn = choice.column
    else imageProblem = choice.problem
  }
  const idColumn = options.idColumn ?? (columns.some((c) => c.name === 'id') ? 'id' : undefined)
  const keepNames = [...new Set([...(idColumn === undefined ? [] : [idColumn]), ...(options.keep ?? [])])]
  const fingerprint = shardFingerprint(file.footerHash, rowStart, rowEnd)
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
    kept: keptColumns(file.fields, keepNames),
  }
  return imageProblem === undefined ? { info, columns } : { info, imageProblem, columns }
}

/** One slice of rows to read: the part of a row group inside the shard's selection. */
export interface RowGroupSlice {
  readonly rowGroup: number
  readonly start: number
  readonly end: number
}

/** Row offsets of each row group, `[start, end)` absolute within the file, from the established row counts. */
export function rowGroupRanges(file: Pick<ParquetSource, 'rowGroups'>): { start: number; end: number }[] {
  const ranges: { start: number; end: number }[] = []
  let start = 0
  for (const group of file.rowGroups) {
    ranges.push({ start, end: start + group.rows })
    start += group.rows
  }
  return ranges
}

/** The slices of the shard's selection, one per row group it overlaps. */
export function rowGroupSlices(file: Pick<ParquetSource, 'rowGroups'>, info: ShardInfo): RowGroupSlice[] {
  return rowGroupRanges(file)
    .map((g, rowGroup) => ({ rowGroup, start: Math.max(g.start, info.rowStart), end: Math.min(g.end, info.rowEnd) }))
    .filter((s) => s.end > s.start)
}

/** The fingerprint of a shard: the file's size and footer, and the selected range. */
export function shardFingerprint(footerHash: string, rowStart: number, rowEnd: number): string {
  return createHash('sha256').update(footerHash).update(`${rowStart}:${rowEnd}`).digest('hex')
}
