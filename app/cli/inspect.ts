/** `evflow inspect <shard>`: schema, row groups, row counts and which column holds images. */
import { stat } from 'node:fs/promises'

import { InputNotFoundError } from '../../src/errors.js'
import { fileRows, openParquet } from '../../src/parquet/file.js'
import { chooseImageColumn, summarizeColumns, type ColumnSummary } from '../../src/parquet/schema.js'

export interface ShardDescription {
  readonly file: string
  readonly bytes: number
  readonly rows: number
  readonly createdBy: string | null
  readonly columns: readonly ColumnSummary[]
  readonly imageColumn: string | null
  readonly imageColumnProblem: string | null
  readonly rowGroups: readonly { index: number; rows: number; compressedBytes: number; uncompressedBytes: number }[]
  readonly keyValueMetadata: readonly string[]
}

/**
 * Describes one Parquet file. Throws `InputNotFoundError` (exit 2, as the run commands) for a path that does
 * not exist or is a folder, `ShardReadError` (exit 3) for a file that is not readable Parquet.
 */
export async function describeShardFile(path: string): Promise<ShardDescription> {
  const info = await stat(path).catch(() => undefined)
  if (!info) throw new InputNotFoundError(path, 'no such file')
  if (info.isDirectory()) throw new InputNotFoundError(path, 'is a folder: evflow inspect reads one Parquet file (e.g. evflow inspect fixtures/scenes/test.parquet)')
  const file = await openParquet(path)
  try {
    const { metadata } = file
    const columns = summarizeColumns(metadata)
    const choice = chooseImageColumn(columns)
    return {
      file: path,
      bytes: file.byteLength,
      rows: fileRows(metadata),
      createdBy: metadata.created_by ?? null,
      columns,
      imageColumn: 'column' in choice ? choice.column : null,
      imageColumnProblem: 'problem' in choice ? choice.problem : null,
      rowGroups: metadata.row_groups.map((g, index) => ({
        index,
        rows: Number(g.num_rows),
        compressedBytes: g.columns.reduce((n, c) => n + Number(c.meta_data?.total_compressed_size ?? 0), 0),
        uncompressedBytes: g.columns.reduce((n, c) => n + Number(c.meta_data?.total_uncompressed_size ?? 0), 0),
      })),
      keyValueMetadata: (metadata.key_value_metadata ?? []).map((kv) => kv.key),
    }
  } finally {
    await file.close()
  }
}

export function formatDescription(d: ShardDescription): string {
  const lines = [`${d.file}`, `  ${d.rows} rows in ${d.rowGroups.length} row group(s), ${d.bytes} bytes, written by ${d.createdBy ?? 'unknown'}`]
  lines.push(`  image column: ${d.imageColumn ?? `none (${d.imageColumnProblem})`}`)
  lines.push('  columns:')
  for (const c of d.columns) {
    const type = c.logical ? `${c.type}/${c.logical}` : c.type
    const mark = c.image ? `  <- image (${c.image})` : ''
    lines.push(`    ${c.name}: ${type}${c.nullable ? '' : ' not null'}${mark}`)
  }
  lines.push('  row groups:')
  const shown = d.rowGroups.slice(0, 20)
  for (const g of shown) lines.push(`    #${g.index}: ${g.rows} rows, ${g.compressedBytes} bytes compressed (${g.uncompressedBytes} uncompressed)`)
  if (d.rowGroups.length > shown.length) lines.push(`    ... ${d.rowGroups.length - shown.length} more`)
  if (d.keyValueMetadata.length > 0) lines.push(`  key-value metadata: ${d.keyValueMetadata.join(', ')}`)
  return `${lines.join('\n')}\n`
}
