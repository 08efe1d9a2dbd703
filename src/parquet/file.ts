/**
 * Opening Parquet files in the evflow process for tools that need the footer (`inspect`, `submit`,
 * `eval`): the footer is parsed and checked in a parser process; an AsyncBuffer over a file handle reads
 * only the byte ranges asked for. Pipelines read through {@link ParquetReader} instead, which also decodes
 * pages in its parsers.
 */
import { open, type FileHandle } from 'node:fs/promises'
import type { AsyncBuffer, FileMetaData } from 'hyparquet'

import { ShardReadError, describeError } from '../errors.js'
import { ParquetReader, type ParquetSource, type ReadBudget, type RowGroupFacts } from './reader.js'

/** Largest single read we allow a (possibly malformed) footer to ask for. */
const MAX_SLICE_BYTES = 1024 * 1024 * 1024

export interface OpenParquet {
  readonly path: string
  readonly byteLength: number
  readonly buffer: AsyncBuffer
  readonly metadata: FileMetaData
  /** sha256 of the file size and the footer bytes. */
  readonly footerHash: string
  /** Each row group's row count as established from its page headers (see docs/reliability.md). */
  readonly rowGroups: readonly RowGroupFacts[]
  close(): Promise<void>
}

/** An AsyncBuffer reading byte ranges from an open file handle, with bounds checks. */
export function fileHandleBuffer(handle: FileHandle, byteLength: number, path: string): AsyncBuffer {
  return {
    byteLength,
    async slice(start: number, end?: number): Promise<ArrayBuffer> {
      const stop = end ?? byteLength
      if (!Number.isFinite(start) || !Number.isFinite(stop) || start < 0 || stop > byteLength || stop < start) {
        throw new ShardReadError(path, `read out of bounds [${start}, ${stop}) of a ${byteLength}-byte file (corrupt footer?)`)
      }
      const size = stop - start
      if (size > MAX_SLICE_BYTES) {
        throw new ShardReadError(path, `refusing a ${size}-byte read (corrupt footer?)`)
      }
      const out = new ArrayBuffer(size)
      let done = 0
      while (done < size) {
        const { bytesRead } = await handle.read(new Uint8Array(out, done), 0, size - done, start + done)
        if (bytesRead === 0) throw new ShardReadError(path, `unexpected end of file at byte ${start + done}`)
        done += bytesRead
      }
      return out
    },
  }
}

/**
 * Opens a Parquet file and parses its footer in a parser process (under the read budgets: see
 * {@link ParquetReader}); the footer comes back already checked. Throws `ShardReadError` naming the file.
 * Pass `reader` to reuse its parsers; otherwise a one-parser reader is started and stopped.
 */
export async function openParquet(path: string, options: ReadBudget & { reader?: ParquetReader } = {}): Promise<OpenParquet> {
  const reader = options.reader ?? new ParquetReader({ parsers: 1, ...budgetOf(options) })
  let source: ParquetSource
  try {
    source = await reader.open(path, { withMetadata: true })
    await source.close()
  } finally {
    if (!options.reader) await reader.close()
  }
  let handle: FileHandle
  try {
    handle = await open(path, 'r')
  } catch (cause) {
    throw new ShardReadError(path, `cannot open: ${describeError(cause)}`, undefined, { cause })
  }
  return {
    path,
    byteLength: source.byteLength,
    buffer: fileHandleBuffer(handle, source.byteLength, path),
    metadata: source.metadata!,
    footerHash: source.footerHash,
    rowGroups: source.rowGroups,
    close: () => handle.close(),
  }
}

function budgetOf(options: ReadBudget): ReadBudget {
  return {
    ...(options.readTimeoutMs === undefined ? {} : { readTimeoutMs: options.readTimeoutMs }),
    ...(options.readMemoryMb === undefined ? {} : { readMemoryMb: options.readMemoryMb }),
  }
}

/** Rows in the file: the sum of its row groups. */
export function fileRows(metadata: FileMetaData): number {
  return metadata.row_groups.reduce((n, g) => n + Number(g.num_rows), 0)
}

/** Row offsets of each row group: `[start, end)` absolute within the file. */
export function rowGroupRanges(metadata: FileMetaData): { start: number; end: number }[] {
  const ranges: { start: number; end: number }[] = []
  let start = 0
  for (const group of metadata.row_groups) {
    const end = start + Number(group.num_rows)
    ranges.push({ start, end })
    start = end
  }
  return ranges
}
