/**
 * Opening Parquet files for reading: an AsyncBuffer over one file handle (reads only the byte ranges
 * hyparquet asks for, never the whole file), the footer, and a content fingerprint.
 */
import { createHash } from 'node:crypto'
import { open, type FileHandle } from 'node:fs/promises'
import { parquetMetadata, type AsyncBuffer, type FileMetaData } from 'hyparquet'

import { ShardReadError } from '../errors.js'

/** Largest single read we allow a (possibly malformed) footer to ask for. */
const MAX_SLICE_BYTES = 1024 * 1024 * 1024

export interface OpenParquet {
  readonly path: string
  readonly byteLength: number
  readonly buffer: AsyncBuffer
  readonly metadata: FileMetaData
  /** sha256 of the file size and the footer bytes. */
  readonly footerHash: string
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

/** Opens a Parquet file and parses its footer. Throws `ShardReadError` naming the file. */
export async function openParquet(path: string): Promise<OpenParquet> {
  let handle: FileHandle
  try {
    handle = await open(path, 'r')
  } catch (cause) {
    throw new ShardReadError(path, `cannot open: ${(cause as Error).message}`, undefined, { cause })
  }
  try {
    const { size } = await handle.stat()
    if (size < 12) throw new ShardReadError(path, `not a Parquet file (${size} bytes)`)
    const buffer = fileHandleBuffer(handle, size, path)
    const tail = new Uint8Array(await buffer.slice(size - 8, size))
    const magic = String.fromCharCode(...tail.subarray(4))
    if (magic !== 'PAR1') {
      throw new ShardReadError(path, magic === 'PARE' ? 'encrypted Parquet files are not supported' : 'not a Parquet file (no PAR1 footer magic)')
    }
    const footerLength = new DataView(tail.buffer).getUint32(0, true)
    if (footerLength + 8 > size - 4) throw new ShardReadError(path, `footer length ${footerLength} exceeds the file size ${size}`)
    const footer = new Uint8Array(await buffer.slice(size - 8 - footerLength, size))
    const footerHash = createHash('sha256').update(String(size)).update(footer).digest('hex')
    let metadata: FileMetaData
    try {
      metadata = parquetMetadata(footer)
    } catch (cause) {
      throw new ShardReadError(path, `invalid footer: ${(cause as Error).message}`, undefined, { cause })
    }
    validateMetadata(path, metadata)
    return {
      path,
      byteLength: size,
      buffer,
      metadata,
      footerHash,
      close: () => handle.close(),
    }
  } catch (error) {
    await handle.close().catch(() => {})
    if (error instanceof ShardReadError) throw error
    throw new ShardReadError(path, (error as Error).message ?? String(error), undefined, { cause: error })
  }
}

/**
 * Rejects footers whose row counts cannot be trusted (they drive the one-row-out-per-row-in invariant).
 * The row groups' counts are authoritative: some writers leave the file-level `num_rows` at 0.
 */
function validateMetadata(path: string, metadata: FileMetaData): void {
  let total = 0n
  for (const [i, group] of metadata.row_groups.entries()) {
    const rows = BigInt(group.num_rows)
    if (rows < 0n) throw new ShardReadError(path, `row group ${i} has a negative row count`)
    total += rows
  }
  if (total > BigInt(Number.MAX_SAFE_INTEGER)) throw new ShardReadError(path, 'row count too large')
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
