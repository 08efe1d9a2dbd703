/**
 * The schema and column values of evflow's output shards: the kept input columns, then `status`, `error`,
 * `error_code`, then the pipeline's result columns.
 */
import type { SchemaElement } from 'hyparquet'

import type { KeptColumn } from '../records.js'

/** Types a result column can have. `FLOAT_LIST` is `list<float>` (embeddings). */
export type OutputType = 'STRING' | 'INT32' | 'INT64' | 'FLOAT' | 'DOUBLE' | 'BOOLEAN' | 'BYTE_ARRAY' | 'JSON' | 'FLOAT_LIST'

/** A result column: its name, type and how to compute it from an ok record. */
export interface OutputColumn<R> {
  readonly name: string
  readonly type: OutputType
  readonly value: (record: R) => unknown
}

export const STATUS_COLUMNS = ['status', 'error', 'error_code'] as const

/** A column of the output, in schema order, with how to turn a record's value into a Parquet value. */
export interface PlannedColumn {
  readonly name: string
  readonly elements: SchemaElement[]
  readonly convert: (value: unknown) => unknown
}

/**
 * A value for a JSON column. hyparquet-writer serialises JSON columns itself (`JSON.stringify`), so this
 * returns a JSON-ready value, not text: bigints become numbers (strings when unsafe), bytes base64.
 */
function jsonValue(value: unknown): unknown {
  if (value === null || value === undefined) return null
  return JSON.parse(
    JSON.stringify(value, (_key, v: unknown) => {
      if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()
      if (v instanceof Uint8Array) return Buffer.from(v).toString('base64')
      return v
    }),
  ) as unknown
}

/** A kept JSON column's value: JSON text as read is parsed back (written once, not quoted again). */
function keptJsonValue(value: unknown): unknown {
  if (typeof value !== 'string') return jsonValue(value)
  try {
    return JSON.parse(value) as unknown
  } catch {
    return value
  }
}

const identity = (v: unknown) => (v === undefined ? null : v)

function toBigInt(v: unknown): unknown {
  if (v === null || v === undefined) return null
  if (typeof v === 'number') return BigInt(Math.trunc(v))
  return v
}

function resultColumn(name: string, type: OutputType): PlannedColumn {
  const optional = 'OPTIONAL' as const
  switch (type) {
    case 'STRING':
      return { name, elements: [{ name, type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: optional }], convert: identity }
    case 'JSON':
      return { name, elements: [{ name, type: 'BYTE_ARRAY', converted_type: 'JSON', repetition_type: optional }], convert: jsonValue }
    case 'INT64':
      return { name, elements: [{ name, type: 'INT64', repetition_type: optional }], convert: toBigInt }
    case 'FLOAT_LIST':
      return {
        name,
        elements: [
          { name, repetition_type: optional, converted_type: 'LIST', num_children: 1 },
          { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
          { name: 'element', type: 'FLOAT', repetition_type: 'REQUIRED' },
        ],
        convert: (v) => (v === null || v === undefined ? null : Array.from(v as ArrayLike<number>)),
      }
    default:
      return { name, elements: [{ name, type, repetition_type: optional }], convert: identity }
  }
}

/** Kept columns keep their type when it round-trips exactly; others are written as JSON text. */
function keptColumn(name: string, column: KeptColumn): PlannedColumn {
  const el = column.element
  const logical = el?.logical_type?.type ?? el?.converted_type
  const plain =
    el !== undefined &&
    el.type !== undefined &&
    ((['BOOLEAN', 'FLOAT', 'DOUBLE'].includes(el.type) && logical === undefined) ||
      (el.type === 'INT32' && (logical === undefined || logical === 'INT_32')) ||
      (el.type === 'INT64' && (logical === undefined || logical === 'INT_64')) ||
      (el.type === 'BYTE_ARRAY' && (logical === undefined || logical === 'UTF8' || logical === 'STRING' || logical === 'JSON')))
  if (!plain || !el) {
    return { name, elements: [{ name, type: 'BYTE_ARRAY', converted_type: 'JSON', repetition_type: 'OPTIONAL' }], convert: jsonValue }
  }
  const element: SchemaElement = { name, type: el.type, repetition_type: 'OPTIONAL' }
  if (el.converted_type !== undefined) element.converted_type = el.converted_type
  if (el.logical_type !== undefined) element.logical_type = el.logical_type
  const convert = el.type === 'BYTE_ARRAY' && logical === 'JSON' ? keptJsonValue : identity
  return { name, elements: [element], convert }
}

/** The output columns of a shard, and the input name each kept column reads from. */
export function planOutputColumns<R>(
  kept: readonly KeptColumn[],
  results: readonly OutputColumn<R>[],
): { kept: { from: string; column: PlannedColumn }[]; status: PlannedColumn[]; results: PlannedColumn[] } {
  const reserved = new Set<string>([...STATUS_COLUMNS, ...results.map((r) => r.name)])
  const keptPlanned = kept.map((k) => {
    const name = reserved.has(k.name) ? `input_${k.name}` : k.name
    return { from: k.name, column: keptColumn(name, k) }
  })
  const status: PlannedColumn[] = [
    { name: 'status', elements: [{ name: 'status', type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'REQUIRED' }], convert: identity },
    resultColumn('error', 'STRING'),
    resultColumn('error_code', 'STRING'),
  ]
  return { kept: keptPlanned, status, results: results.map((r) => resultColumn(r.name, r.type)) }
}

/** The full Parquet schema (root first) for planned columns. */
export function schemaOf(columns: readonly PlannedColumn[]): SchemaElement[] {
  return [{ name: 'root', num_children: columns.length }, ...columns.flatMap((c) => c.elements)]
}
