/**
 * Robustness against apache/parquet-testing (read from ../shared, never copied into the repo): every file
 * in data/ reads or fails with ShardReadError, every file in bad_data/ fails with ShardReadError; none
 * crashes or hangs the process. The row counts of the files that read are pinned, so a stricter reader
 * cannot quietly read less than before.
 */
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

import { readShards, type ShardRecord } from '../../operators/read-shards.js'
import { openParquet } from '../../src/parquet/file.js'
import { ParquetReader } from '../../src/parquet/reader.js'
import { summarizeColumns } from '../../src/parquet/schema.js'
import type { ErrorRecord, ShardNotice } from '../../src/records.js'
import { PARQUET_TESTING, collect } from '../helpers/util.js'

const present = existsSync(join(PARQUET_TESTING, 'data'))
if (!present) {
  console.warn(`NOTICE: skipping apache/parquet-testing robustness tests: ${PARQUET_TESTING} not found (it is in the developers' ../shared checkout, not in a user's clone)`)
}

/** Parser threads shared by every file here (a reader per file would start threads 37 times). */
const reader = new ParquetReader({ parsers: 2 })
afterAll(() => reader.close())

/** Reads every row and every column of a file through readShards. */
async function readAll(file: string): Promise<ShardRecord[]> {
  let keep: string[] = []
  try {
    const opened = await openParquet(file, { reader })
    keep = summarizeColumns(opened.metadata).map((c) => c.name)
    await opened.close()
  } catch {
    // unreadable footers are reported by readShards itself
  }
  return collect(readShards([file], { requireImage: false, keep, reader }))
}

function failures(records: ShardRecord[]): string[] {
  return records.flatMap((r) => {
    if (r.kind === 'shard-notice') return (r as ShardNotice).error ? [(r as ShardNotice).error!.name] : []
    if (r.kind === 'error') return [(r as ErrorRecord).code === 'shard-read' ? 'ShardReadError' : (r as ErrorRecord).code]
    return []
  })
}

/** bad_data files that current readers (DuckDB, Arrow after its fix) read correctly. */
const READABLE_BAD_DATA = new Set(['ARROW-GH-43605.parquet'])

describe.skipIf(!present)('apache/parquet-testing', () => {
  const dataDir = join(PARQUET_TESTING, 'data')
  const badDir = join(PARQUET_TESTING, 'bad_data')
  const dataFiles = present ? readdirSync(dataDir).filter((f) => f.includes('.parquet')) : []
  const badFiles = present ? readdirSync(badDir).filter((f) => f.endsWith('.parquet')) : []

  it.each(dataFiles)('data/%s reads, or fails with ShardReadError', async (file) => {
    const records = await readAll(join(dataDir, file))
    expect(records.length).toBeGreaterThan(0)
    for (const failure of failures(records)) expect(failure).toBe('ShardReadError')
  })

  it.each(badFiles)('bad_data/%s fails with ShardReadError and does not crash', async (file) => {
    const records = await readAll(join(badDir, file))
    const found = failures(records)
    if (READABLE_BAD_DATA.has(file)) {
      expect(found).toEqual([])
      return
    }
    expect(found.length).toBeGreaterThan(0)
    for (const failure of found) expect(failure).toBe('ShardReadError')
  })

  it('reads every file it read before parsing moved to parser threads, with the same row counts', async () => {
    // Rows read per file by evflow before issue 17 (hyparquet on the main thread), every column kept.
    const counts: Record<string, number> = {
      'alltypes_dictionary.parquet': 2,
      'alltypes_plain.parquet': 8,
      'alltypes_plain.snappy.parquet': 2,
      'binary.parquet': 12,
      'byte_stream_split.zstd.parquet': 300,
      'concatenated_gzip_members.parquet': 513,
      'datapage_v1-corrupt-checksum.parquet': 5120,
      'datapage_v2.snappy.parquet': 5,
      'delta_byte_array.parquet': 1000,
      'delta_length_byte_array.parquet': 1000,
      'dict-page-offset-zero.parquet': 39,
      'fixed_length_byte_array.parquet': 1000,
      'fixed_length_decimal.parquet': 24,
      'hadoop_lz4_compressed.parquet': 4,
      'int32_with_null_pages.parquet': 1000,
      'int96_from_spark.parquet': 6,
      'list_columns.parquet': 3,
      'lz4_raw_compressed.parquet': 4,
      'nested_lists.snappy.parquet': 3,
      'nested_maps.snappy.parquet': 6,
      'nulls.snappy.parquet': 8,
      'page_v2_empty_compressed.parquet': 10,
      'repeated_no_annotation.parquet': 6,
      'rle_boolean_encoding.parquet': 68,
      'unknown-logical-type.parquet': 3,
    }
    for (const [file, rows] of Object.entries(counts)) {
      const records = await readAll(join(dataDir, file))
      expect(records.filter((r) => r.kind === 'image-row'), file).toHaveLength(rows)
      expect(records.filter((r) => r.kind !== 'image-row'), file).toEqual([])
    }
  })
})
