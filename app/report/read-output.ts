/**
 * One streaming pass over a run's committed output: row counts, error rows grouped by code with a few
 * examples each, finish reasons and a confidence histogram when those columns exist, and a seeded sample of
 * ok rows (plus the least confident rows and rows cut at the token limit). Each output row group is read
 * once, only the columns the report shows (never embeddings); memory does not grow with the output's size.
 */
import { readFile, readdir, lstat } from 'node:fs/promises'
import { join } from 'node:path'
import { parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

import { ShardReadError, describeError } from '../../src/errors.js'
import { outputLayout, type CompletionRecord } from '../../src/parquet/commit.js'
import { openParquet, rowGroupRanges } from '../../src/parquet/file.js'
import { summarizeColumns } from '../../src/parquet/schema.js'
import { Reservoir, Smallest, seededRandom } from './sample.js'

/** Output columns holding the mean / minimum token log-probability of the generated text (first present wins). */
export const MEAN_LOGPROB_COLUMNS = ['mean_logprob', 'logprob_mean', 'avg_logprob', 'mean_log_prob', 'logprob'] as const
export const MIN_LOGPROB_COLUMNS = ['min_logprob', 'logprob_min', 'min_log_prob'] as const
export const FINISH_REASON_COLUMN = 'finish_reason'
/** Columns every output has (not shown as fields). */
const STATUS_COLUMNS = ['status', 'error', 'error_code']
/** Longest text kept per field of a sampled row. */
const MAX_FIELD_CHARS = 400
/** Distinct error codes tracked; the rest are counted under `other`. */
const MAX_ERROR_CODES = 100

export interface CommittedShard {
  readonly record: CompletionRecord
  /** Absolute path of the output shard. */
  readonly output: string
}

/** Where an output row came from: its output shard and the input row it was made from. */
export interface RowRef {
  readonly shard: string
  /** Row index within the output shard. */
  readonly row: number
  /** Absolute row index within the input file (`record.rowStart + row`). */
  readonly inputRow: number
  readonly input: string
  readonly id: string | null
}

export interface SampledRow extends RowRef {
  /** The row's scalar columns as text (result columns first), truncated. */
  readonly fields: Readonly<Record<string, string>>
  readonly meanLogprob: number | null
  readonly minLogprob: number | null
  readonly finishReason: string | null
  /** Why it is in the gallery: the seeded sample, the least confident rows, rows cut at the token limit. */
  readonly pools: readonly ('sample' | 'lowest' | 'length')[]
}

export interface ErrorExample extends RowRef {
  readonly message: string
}

export interface ErrorGroup {
  readonly code: string
  readonly count: number
  readonly examples: readonly ErrorExample[]
}

export interface OutputScan {
  readonly shards: readonly CommittedShard[]
  /** Output files present without a completion record (not read). */
  readonly uncommitted: readonly string[]
  /** Completion records that could not be used, with why. */
  readonly problems: readonly string[]
  readonly rows: { readonly total: number; readonly ok: number; readonly error: number }
  readonly errors: readonly ErrorGroup[]
  /** Scalar columns of the output (beyond id and status), in schema order. */
  readonly columns: readonly string[]
  readonly idColumn: string | null
  readonly meanLogprobColumn: string | null
  readonly minLogprobColumn: string | null
  readonly finishReasonColumn: string | null
  readonly finishReasons: Readonly<Record<string, number>>
  /** Ok rows by exp(mean log-probability) in 20 bins over [0, 1] (null without the column). */
  readonly confidenceHistogram: readonly number[] | null
  readonly gallery: readonly SampledRow[]
  /** The `evflow.config` stored in the first output shard. */
  readonly config: Record<string, unknown> | null
  /** Output row groups read, per output file: each exactly once. */
  readonly rowGroupsRead: Readonly<Record<string, number>>
}

export interface ScanOptions {
  readonly sample: number
  readonly seed: number
  /** Examples kept per error code. Default 4. */
  readonly examplesPerCode?: number
  /** Least-confident and length-cut rows added to the gallery, each. Default ceil(sample / 4). */
  readonly extra?: number
}

/** The completion records of `outDir`, sorted by shard name, and output files without one. */
export async function committedShards(outDir: string): Promise<{ shards: CommittedShard[]; uncommitted: string[]; problems: string[] }> {
  const layout = outputLayout(outDir)
  const problems: string[] = []
  let names: string[] = []
  try {
    if (!(await lstat(layout.commitsDir)).isSymbolicLink()) names = (await readdir(layout.commitsDir)).filter((n) => n.endsWith('.json'))
    else problems.push(`${layout.commitsDir} is a symbolic link: not followed`)
  } catch {
    // no commits folder: nothing committed
  }
  const shards: CommittedShard[] = []
  for (const name of names.sort()) {
    try {
      const record = JSON.parse(await readFile(join(layout.commitsDir, name), 'utf8')) as CompletionRecord
      if (typeof record.shard !== 'string' || typeof record.output !== 'string' || typeof record.input !== 'string' || !Number.isInteger(record.rowStart)) {
        problems.push(`${name}: not a completion record`)
        continue
      }
      if (record.output.includes('/') || record.output.includes('\\') || record.output.startsWith('.')) {
        problems.push(`${name}: output name ${JSON.stringify(record.output)} is not a file of the folder`)
        continue
      }
      shards.push({ record, output: join(outDir, record.output) })
    } catch (error) {
      problems.push(`${name}: ${describeError(error)}`)
    }
  }
  shards.sort((a, b) => a.record.shard.localeCompare(b.record.shard))
  const recorded = new Set(shards.map((s) => s.record.output))
  let files: string[] = []
  try {
    files = (await readdir(outDir)).filter((f) => f.endsWith('.parquet') && !recorded.has(f))
  } catch {
    files = []
  }
  return { shards, uncommitted: files.sort(), problems }
}

const text = (value: unknown): string | null => {
  if (value === null || value === undefined) return null
  if (typeof value === 'string') return value
  if (typeof value === 'bigint' || typeof value === 'number' || typeof value === 'boolean') return String(value)
  if (value instanceof Uint8Array) return `<${value.byteLength} bytes>`
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))
}

const clip = (s: string) => (s.length > MAX_FIELD_CHARS ? `${s.slice(0, MAX_FIELD_CHARS)}…` : s)

const num = (value: unknown): number | null => {
  if (typeof value === 'number' && Number.isFinite(value)) return value
  if (typeof value === 'bigint') return Number(value)
  return null
}

/** Reads every committed output shard once and gathers what the report shows. */
export async function scanOutput(outDir: string, options: ScanOptions): Promise<OutputScan> {
  const { shards, uncommitted, problems } = await committedShards(outDir)
  const random = seededRandom(options.seed)
  const extra = options.extra ?? Math.ceil(options.sample / 4)
  const perCode = options.examplesPerCode ?? 4
  const sample = new Reservoir<SampledRow>(options.sample, random)
  const lowest = new Smallest<SampledRow>(extra)
  const cut = new Reservoir<SampledRow>(extra, random)
  const groups = new Map<string, { count: number; examples: Reservoir<ErrorExample> }>()
  const finishReasons: Record<string, number> = {}
  let histogram: number[] | null = null
  let total = 0
  let ok = 0
  let error = 0
  let config: Record<string, unknown> | null = null
  let columns: string[] | null = null
  let idColumn: string | null = null
  let meanColumn: string | null = null
  let minColumn: string | null = null
  let finishColumn: string | null = null
  const rowGroupsRead: Record<string, number> = {}
  const usable: CommittedShard[] = []

  for (const shard of shards) {
    const { record } = shard
    let file
    try {
      file = await openParquet(shard.output)
    } catch (cause) {
      problems.push(`${record.output}: ${describeError(cause)}`)
      continue
    }
    try {
      if (config === null) config = storedConfig(file.metadata.key_value_metadata)
      const present = summarizeColumns(file.metadata)
      const scalar = present.filter((c) => c.type !== 'list' && c.type !== 'map' && c.type !== 'group').map((c) => c.name)
      const wantedId = idColumnOf(config) ?? 'id'
      const shardId = scalar.includes(wantedId) ? wantedId : null
      const shardColumns = scalar.filter((c) => !STATUS_COLUMNS.includes(c) && c !== shardId)
      if (columns === null) {
        columns = orderFields(shardColumns)
        idColumn = shardId
        meanColumn = MEAN_LOGPROB_COLUMNS.find((c) => scalar.includes(c)) ?? null
        minColumn = MIN_LOGPROB_COLUMNS.find((c) => scalar.includes(c)) ?? null
        finishColumn = scalar.includes(FINISH_REASON_COLUMN) ? FINISH_REASON_COLUMN : null
        if (meanColumn !== null) histogram = new Array<number>(20).fill(0)
      }
      const read = [...new Set([...STATUS_COLUMNS, ...(shardId ? [shardId] : []), ...shardColumns])].filter((c) => scalar.includes(c))
      let row = 0
      for (const group of rowGroupRanges(file.metadata)) {
        if (group.end === group.start) continue
        let rows: Record<string, unknown>[]
        try {
          rows = (await parquetReadObjects({ file: file.buffer, metadata: file.metadata, columns: read, rowStart: group.start, rowEnd: group.end, compressors })) as Record<string, unknown>[]
        } catch (cause) {
          throw new ShardReadError(shard.output, describeError(cause), undefined, { cause })
        }
        rowGroupsRead[record.output] = (rowGroupsRead[record.output] ?? 0) + 1
        for (const values of rows) {
          const ref: RowRef = { shard: record.shard, row, inputRow: record.rowStart + row, input: record.input, id: shardId === null ? null : text(values[shardId]) }
          row += 1
          total += 1
          if (text(values.status) === 'error') {
            error += 1
            let code = text(values.error_code) || 'unknown'
            if (!groups.has(code) && groups.size >= MAX_ERROR_CODES) code = 'other'
            let g = groups.get(code)
            if (!g) {
              g = { count: 0, examples: new Reservoir<ErrorExample>(perCode, random) }
              groups.set(code, g)
            }
            g.count += 1
            g.examples.offer(() => ({ ...ref, message: clip(text(values.error) ?? '') }))
            continue
          }
          ok += 1
          const mean = meanColumn === null ? null : num(values[meanColumn])
          const min = minColumn === null ? null : num(values[minColumn])
          const finish = finishColumn === null ? null : text(values[finishColumn])
          if (finish !== null) finishReasons[finish] = (finishReasons[finish] ?? 0) + 1
          if (histogram !== null && mean !== null) histogram[Math.min(19, Math.max(0, Math.floor(Math.exp(mean) * 20)))] += 1
          const make = (): SampledRow => {
            const fields: Record<string, string> = {}
            for (const c of columns ?? shardColumns) {
              const v = text(values[c])
              if (v !== null) fields[c] = clip(v)
            }
            return { ...ref, fields, meanLogprob: mean, minLogprob: min, finishReason: finish, pools: [] }
          }
          sample.offer(make)
          if (mean !== null) lowest.offer(mean, make)
          if (finish === 'length') cut.offer(make)
        }
        // Let the event loop turn between row groups.
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
      if (row !== record.rowsIn) problems.push(`${record.output}: ${row} rows, its completion record says ${record.rowsIn}`)
      usable.push(shard)
    } catch (cause) {
      problems.push(`${record.output}: ${describeError(cause)}`)
    } finally {
      await file.close().catch(() => {})
    }
  }

  const gallery = mergePools([
    ['sample', sample.values()],
    ['lowest', lowest.values()],
    ['length', cut.values()],
  ])
  const errors = [...groups.entries()]
    .map(([code, g]) => ({ code, count: g.count, examples: g.examples.values().sort((a, b) => a.shard.localeCompare(b.shard) || a.row - b.row) }))
    .sort((a, b) => b.count - a.count || a.code.localeCompare(b.code))
  return {
    shards: usable,
    uncommitted,
    problems,
    rows: { total, ok, error },
    errors,
    columns: columns ?? [],
    idColumn,
    meanLogprobColumn: meanColumn,
    minLogprobColumn: minColumn,
    finishReasonColumn: finishColumn,
    finishReasons,
    confidenceHistogram: histogram,
    gallery,
    config,
    rowGroupsRead,
  }
}

/** Result columns first (caption, question, answer, ...), then the rest in schema order. */
function orderFields(columns: readonly string[]): string[] {
  const first = ['caption', 'question', 'answer', 'questions', 'answers']
  return [...first.filter((c) => columns.includes(c)), ...columns.filter((c) => !first.includes(c))]
}

/** Rows of several pools, once each (in output order), each with the pools it came from. */
function mergePools(pools: readonly (readonly ['sample' | 'lowest' | 'length', readonly SampledRow[]])[]): SampledRow[] {
  const byKey = new Map<string, { row: SampledRow; pools: Set<'sample' | 'lowest' | 'length'> }>()
  for (const [pool, rows] of pools) {
    for (const row of rows) {
      const key = `${row.shard}\u0000${row.row}`
      const entry = byKey.get(key) ?? { row, pools: new Set() }
      entry.pools.add(pool)
      byKey.set(key, entry)
    }
  }
  return [...byKey.values()]
    .map(({ row, pools: p }) => ({ ...row, pools: [...p] }))
    .sort((a, b) => a.shard.localeCompare(b.shard) || a.row - b.row)
}

function storedConfig(metadata: readonly { key: string; value?: string }[] | undefined): Record<string, unknown> | null {
  const entry = metadata?.find((m) => m.key === 'evflow.config')
  if (!entry?.value) return null
  try {
    const value = JSON.parse(entry.value) as unknown
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : null
  } catch {
    return null
  }
}

function idColumnOf(config: Record<string, unknown> | null): string | null {
  const read = config?.read as { idColumn?: unknown } | undefined
  return typeof read?.idColumn === 'string' ? read.idColumn : null
}
