/**
 * Streaming a Parquet file to disk with hyparquet-writer, one row group at a time, through an async file
 * handle. The bytes are hashed as they are written; the file only ever exists under a temporary name
 * until its owner renames it (see `commit.ts`).
 */
import { createHash, type Hash } from 'node:crypto'
import { rmSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import type { KeyValue, SchemaElement } from 'hyparquet'
import { ByteWriter, ParquetWriter, type ColumnSource } from 'hyparquet-writer'

import { ShardWriteError } from '../errors.js'

/** A ByteWriter that hands its bytes to an async sink at every row group instead of growing. */
class FlushingByteWriter extends ByteWriter {
  private pending: Promise<void> = Promise.resolve()

  constructor(private readonly sink: (chunk: Uint8Array) => Promise<void>) {
    super(1 << 20)
  }

  flush(): Promise<void> {
    if (this.index > 0) {
      const chunk = new Uint8Array(this.buffer.slice(0, this.index))
      this.index = 0
      this.pending = this.pending.then(() => this.sink(chunk))
    }
    return this.pending
  }

  override finish(): Promise<void> {
    return this.flush()
  }
}

export interface ParquetFileResult {
  readonly bytes: number
  readonly sha256: string
  readonly rows: number
}

export class ParquetFileWriter {
  private rows = 0
  private bytes = 0
  private closed = false

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly writer: ParquetWriter,
    private readonly hash: Hash,
  ) {}

  /** Creates `path` (which must not exist) and writes the Parquet header. */
  static async create(path: string, schema: SchemaElement[], kvMetadata: KeyValue[], createdBy: string): Promise<ParquetFileWriter> {
    let handle: FileHandle
    try {
      handle = await open(path, 'wx')
    } catch (cause) {
      throw new ShardWriteError(path, `cannot create: ${(cause as Error).message}`, { cause })
    }
    const hash = createHash('sha256')
    let self: ParquetFileWriter | undefined
    const sink = async (chunk: Uint8Array) => {
      hash.update(chunk)
      let done = 0
      while (done < chunk.byteLength) {
        const { bytesWritten } = await handle.write(chunk, done, chunk.byteLength - done)
        done += bytesWritten
      }
      if (self) self.bytes += chunk.byteLength
    }
    const byteWriter = new FlushingByteWriter(sink)
    const writer = new ParquetWriter({ writer: byteWriter, schema, kvMetadata, createdBy, codec: 'SNAPPY' })
    self = new ParquetFileWriter(path, handle, writer, hash)
    return self
  }

  /** Writes `columns` (equal lengths, in schema order) as one row group. */
  async writeRowGroup(columns: ColumnSource[]): Promise<void> {
    const count = columns[0]?.data.length ?? 0
    if (count === 0) return
    try {
      await this.writer.write({ columnData: columns, rowGroupSize: count })
    } catch (cause) {
      throw new ShardWriteError(this.path, `writing a row group failed: ${(cause as Error).message}`, { cause })
    }
    this.rows += count
  }

  /** Writes the footer, syncs and closes the file. */
  async finish(): Promise<ParquetFileResult> {
    try {
      await this.writer.finish()
      await this.handle.sync()
    } catch (cause) {
      throw new ShardWriteError(this.path, `finishing failed: ${(cause as Error).message}`, { cause })
    } finally {
      this.closed = true
      await this.handle.close().catch(() => {})
    }
    return { bytes: this.bytes, sha256: this.hash.digest('hex'), rows: this.rows }
  }

  /** Closes and deletes the file (synchronous delete, so it also works from teardown code). */
  abort(): void {
    if (!this.closed) {
      this.closed = true
      void this.handle.close().catch(() => {})
    }
    rmSync(this.path, { force: true })
  }
}
