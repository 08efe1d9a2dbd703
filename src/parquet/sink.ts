/**
 * One output shard being written: a reorder buffer (rows arrive in any order, are appended in input order),
 * row groups of a fixed size streamed to a temporary file, and the commit (rename into place + completion
 * record) once every row of the shard has arrived. `writeShards` is the glue that routes records to one
 * `ShardSink` per shard.
 */
import type { KeyValue } from 'hyparquet'

import type { StageMetrics } from '../engine/metrics.js'
import { ShardWriteError } from '../errors.js'
import type { ErrorRecord, KeyedRecord, RowKey, ShardInfo } from '../records.js'
import { commitShard, tempPath, type CompletionRecord, type OutputLayout } from './commit.js'
import { planOutputColumns, schemaOf, type OutputColumn, type PlannedColumn } from './output-schema.js'
import { ParquetFileWriter } from './writer.js'

export interface ShardSinkOptions<R> {
  readonly layout: OutputLayout
  readonly info: ShardInfo
  /** Result columns written for ok rows (null on error rows). */
  readonly columns: readonly OutputColumn<R>[]
  /** Stored in the completion record. */
  readonly configHash: string
  /** Key-value metadata of the file; the sink adds `evflow.input_fingerprint`. */
  readonly kv: readonly KeyValue[]
  /** The file's `created_by`. */
  readonly createdBy: string
  /** Rows per row group. */
  readonly rowGroupSize: number
  /** Counts rows in, rows written and busy time. */
  readonly metrics?: StageMetrics
  /** Called when a row's output values reach the row-group buffer: its record can be let go. */
  readonly onBuffered?: (key: RowKey) => void
  /** Called once, with the first failure of a file operation running in the background. */
  readonly onError: (error: unknown) => void
}

export class ShardSink<R extends KeyedRecord> {
  readonly info: ShardInfo
  private readonly kept: { from: string; column: PlannedColumn }[]
  private readonly all: PlannedColumn[]
  private readonly tmp: string
  private writer?: ParquetFileWriter
  /** Serialises this shard's file operations. */
  private chain: Promise<void>
  /** Next ordinal (row - rowStart) to append. */
  private next = 0
  private readonly pending = new Map<number, KeyedRecord>()
  /** Output values of the next row group, one array per row. */
  private buffer: unknown[][] = []
  private ok = 0
  private errors = 0
  /** The first failure of a file operation; later operations are skipped. */
  private failure: unknown
  private aborted = false
  private committing?: Promise<CompletionRecord>

  /** Starts the shard: its temporary file is created in the background. */
  constructor(private readonly options: ShardSinkOptions<R>) {
    this.info = options.info
    const planned = planOutputColumns(options.info.kept, options.columns)
    this.kept = planned.kept
    this.all = [...planned.kept.map((k) => k.column), ...planned.status, ...planned.results]
    this.tmp = tempPath(options.layout, options.info.name, '.parquet')
    const kv = [...options.kv, { key: 'evflow.input_fingerprint', value: options.info.fingerprint }]
    this.chain = Promise.resolve()
    this.enqueue(async () => {
      this.writer = await ParquetFileWriter.create(this.tmp, schemaOf(this.all), kv, options.createdBy)
    })
  }

  /** Rows received so far (appended or waiting in the reorder buffer). */
  get received(): number {
    return this.next + this.pending.size
  }

  /** Whether every row of the shard has been appended. */
  get complete(): boolean {
    return this.next === this.info.rows
  }

  /**
   * Takes one row of the shard (ok or error record), in any order; rows are appended in input order and
   * written a row group at a time. Throws `ShardWriteError` for a row outside the shard or seen before.
   * Returns whether the shard is now complete.
   */
  push(record: KeyedRecord): boolean {
    const ordinal = record.key.row - this.info.rowStart
    if (ordinal < 0 || ordinal >= this.info.rows || ordinal < this.next || this.pending.has(ordinal)) {
      throw new ShardWriteError(this.options.layout.outDir, `${this.info.name}: unexpected or duplicate row ${record.key.row}`)
    }
    this.options.metrics?.in()
    this.pending.set(ordinal, record)
    while (this.pending.has(this.next)) {
      const next = this.pending.get(this.next)!
      this.pending.delete(this.next)
      this.next += 1
      if (next.kind === 'error') this.errors += 1
      else this.ok += 1
      this.buffer.push(this.rowValues(next))
      this.options.onBuffered?.(next.key)
      if (this.buffer.length >= this.options.rowGroupSize) this.writeBuffered()
    }
    return this.complete
  }

  /**
   * Writes what is buffered, the footer, renames the file into place and writes its completion record.
   * Call once every row has arrived (an empty shard: at once). Resolves with the record.
   */
  commit(): Promise<CompletionRecord> {
    if (this.committing) return this.committing
    if (!this.complete) {
      return Promise.reject(new ShardWriteError(this.options.layout.outDir, `${this.info.name}: commit before every row arrived (${this.received} of ${this.info.rows})`))
    }
    this.writeBuffered()
    this.committing = new Promise<CompletionRecord>((resolve, reject) => {
      this.enqueue(
        async () => {
          const started = performance.now()
          const result = await this.writer!.finish()
          const { info } = this
          const record: CompletionRecord = {
            version: 1,
            shard: info.name,
            input: info.path,
            rowStart: info.rowStart,
            rowEnd: info.rowEnd,
            rowsIn: info.rows,
            rowsOk: this.ok,
            rowsError: this.errors,
            inputFingerprint: info.fingerprint,
            configHash: this.options.configHash,
            output: `${info.name}.parquet`,
            outputBytes: result.bytes,
            outputSha256: result.sha256,
            committedAt: new Date().toISOString(),
          }
          await commitShard(this.options.layout, this.tmp, record)
          this.options.metrics?.busy(performance.now() - started)
          resolve(record)
        },
        reject,
      )
    })
    return this.committing
  }

  /** Stops writing and deletes the temporary file (synchronous, so it also works from teardown code). */
  abort(): void {
    this.aborted = true
    try {
      this.writer?.abort()
    } catch {
      // best effort: teardown must not throw
    }
    // A file still being created is deleted once it exists.
    this.chain = this.chain.then(() => this.writer?.abort()).catch(() => {})
  }

  private writeBuffered(): void {
    const rows = this.buffer
    this.buffer = []
    if (rows.length === 0) return
    this.enqueue(async () => {
      const started = performance.now()
      await this.writer!.writeRowGroup(this.toColumns(rows))
      this.options.metrics?.busy(performance.now() - started)
      this.options.metrics?.out(rows.length)
    })
  }

  /** Runs `step` after the shard's previous file operations; a failure is reported once, later steps skipped. */
  private enqueue(step: () => Promise<void>, onFailure?: (error: unknown) => void): void {
    this.chain = this.chain.then(async () => {
      if (this.failure !== undefined || this.aborted) {
        onFailure?.(this.failure ?? new ShardWriteError(this.options.layout.outDir, `${this.info.name}: aborted`))
        return
      }
      try {
        await step()
      } catch (error) {
        this.failure = error
        onFailure?.(error)
        if (!this.aborted) this.options.onError(error)
      }
    })
  }

  /** The output values of one row, in column order: kept, status, error, error_code, results. */
  private rowValues(r: KeyedRecord): unknown[] {
    const values: unknown[] = this.kept.map(({ from, column }) => column.convert(r.kept[from]))
    const error = r.kind === 'error' ? (r as ErrorRecord) : undefined
    values.push(error ? 'error' : 'ok', error ? error.message : null, error ? error.code : null)
    const planned = this.all.slice(this.kept.length + 3)
    this.options.columns.forEach((column, i) => values.push(error ? null : planned[i].convert(column.value(r as unknown as R))))
    return values
  }

  /** Column arrays of one row group from its rows' values. */
  private toColumns(rows: readonly unknown[][]) {
    return this.all.map((column, i) => ({ name: column.name, data: rows.map((row) => row[i]) })) as Parameters<ParquetFileWriter['writeRowGroup']>[0]
  }
}
