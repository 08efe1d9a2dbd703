import { Observable, type OperatorFunction } from 'rxjs'

import { PipelineConfigError, ShardWriteError, describeError } from '../src/errors.js'
import type { InFlight } from '../src/engine/in-flight.js'
import { acquireFolderLock, type FolderLock } from '../src/engine/lock.js'
import type { RunMetrics } from '../src/engine/metrics.js'
import {
  commitShard,
  ensureLayout,
  outputLayout,
  tempPath,
  type CompletionRecord,
  type OutputLayout,
} from '../src/parquet/commit.js'
import { planOutputColumns, schemaOf, type OutputColumn, type PlannedColumn } from '../src/parquet/output-schema.js'
import { ParquetFileWriter } from '../src/parquet/writer.js'
import type { ErrorRecord, KeyedRecord, ShardInfo, ShardNotice } from '../src/records.js'

export type { OutputColumn } from '../src/parquet/output-schema.js'

export interface WriteShardsOptions<R> {
  /** Result columns written for ok rows (null on error rows). Default: none. */
  columns?: readonly OutputColumn<R>[]
  /** Hash of the resolved config; stored in each completion record, it decides what a rerun skips. Default `''`. */
  configHash?: string
  /** The resolved config, stored in each output file's key-value metadata. Default: none. */
  config?: unknown
  /**
   * The in-flight bound shared with `readShards`. A row is released when it reaches the row-group buffer:
   * the buffer holds only its output values (never pixels), at most `rowGroupSize` rows per open shard.
   * Default: none.
   */
  inFlight?: InFlight
  /** Rows per output row group. A content setting: it does not depend on the in-flight bound. Default 1000. */
  rowGroupSize?: number
  /** Take the output folder's lock so two runs cannot write it at once. Default true. */
  lock?: boolean
  /** Run metrics; counted under `writeShards`. */
  metrics?: RunMetrics
  /** Version string written as the files' `created_by`. Default `evflow`. */
  createdBy?: string
}

/** What `writeShards` emits per shard. */
export type ShardCommit =
  | ({ readonly status: 'committed' } & CompletionRecord)
  | { readonly status: 'failed'; readonly shard: string; readonly input: string; readonly error: string }

type Incoming<R> = R | ErrorRecord | ShardNotice

interface ShardState {
  readonly info: ShardInfo
  readonly kept: { from: string; column: PlannedColumn }[]
  readonly columns: PlannedColumn[]
  readonly tmp: string
  writer?: ParquetFileWriter
  /** Serialises this shard's file operations. */
  chain: Promise<void>
  /** Next ordinal (row - rowStart) to append. */
  next: number
  readonly pending: Map<number, KeyedRecord>
  /** Output values of the next row group, one array per row. */
  buffer: unknown[][]
  ok: number
  errors: number
}

/**
 * Writes one output Parquet shard per input shard into `outDir` and commits it atomically.
 *
 * Use as the sink of a pipeline. Each shard is written under `_evflow/tmp/`, one row group at a time, rows
 * in input order (a reorder buffer), and renamed to `<outDir>/<shard>.parquet` when its last row has arrived,
 * with a completion record in `_evflow/commits/` (rows in / ok / error, input fingerprint, config hash).
 * Output rows: the kept columns, `status` (`ok` | `error`), `error`, `error_code`, then `columns`.
 *
 * In → out: N rows of a shard → 1 `ShardCommit` (`committed`, or `failed` for an unreadable shard).
 * On unsubscribe or error, shards in progress are deleted, never left looking complete.
 * Errors: `PipelineConfigError` for bad options; `OutputLockedError` when another run holds the folder;
 * `ShardWriteError` when writing fails or a shard's rows did not all arrive before the source completed.
 *
 * @example
 * readShards('in/').pipe(decodeImages(), writeShards('out/', { columns: [{ name: 'width', type: 'INT32', value: (r) => r.info.width }] }))
 */
export function writeShards<R extends KeyedRecord>(
  outDir: string,
  options: WriteShardsOptions<R> = {},
): OperatorFunction<Incoming<R>, ShardCommit> {
  const requested = options.rowGroupSize ?? 1000
  if (!Number.isInteger(requested) || requested < 1) {
    throw new PipelineConfigError('rowGroupSize', `must be a positive integer, got ${requested}`)
  }
  if (typeof outDir !== 'string' || outDir.length === 0) throw new PipelineConfigError('outDir', 'must be a folder path')
  const rowGroupSize = requested
  const columns = options.columns ?? []
  const configHash = options.configHash ?? ''
  const createdBy = options.createdBy ?? 'evflow'
  const kv = [
    { key: 'evflow.config_hash', value: configHash },
    ...(options.config === undefined ? [] : [{ key: 'evflow.config', value: JSON.stringify(options.config) }]),
  ]

  return (source) =>
    new Observable<ShardCommit>((subscriber) => {
      const layout: OutputLayout = outputLayout(outDir)
      const stage = options.metrics?.stage('writeShards')
      const shards = new Map<string, ShardState>()
      let lock: FolderLock | undefined
      let closed = false
      let upstreamDone = false
      let outstanding = 0

      const fail = (error: unknown) => {
        if (closed) return
        closed = true
        abortAll()
        lock?.release()
        subscriber.error(error)
      }
      const abortAll = () => {
        for (const state of shards.values()) {
          try {
            state.writer?.abort()
          } catch {
            // best effort: teardown must not throw
          }
        }
        shards.clear()
      }
      const maybeComplete = () => {
        if (closed || !upstreamDone || outstanding > 0) return
        if (shards.size > 0) {
          const missing = [...shards.values()].map((s) => `${s.info.name}: ${s.next + s.pending.size} of ${s.info.rows} rows`)
          fail(new ShardWriteError(outDir, `source completed before every row arrived (${missing.join('; ')})`))
          return
        }
        closed = true
        lock?.release()
        subscriber.complete()
      }
      /** Runs `step` after the shard's previous file operations. */
      const enqueue = (state: ShardState, step: () => Promise<void>) => {
        outstanding += 1
        state.chain = state.chain.then(step).then(
          () => {
            outstanding -= 1
            maybeComplete()
          },
          (error: unknown) => {
            outstanding -= 1
            fail(error)
          },
        )
      }

      const stateFor = (info: ShardInfo): ShardState => {
        let state = shards.get(info.name)
        if (state) return state
        const planned = planOutputColumns(info.kept, columns)
        const all = [...planned.kept.map((k) => k.column), ...planned.status, ...planned.results]
        const created: ShardState = {
          info,
          kept: planned.kept,
          columns: all,
          tmp: tempPath(layout, info.name, '.parquet'),
          chain: Promise.resolve(),
          next: 0,
          pending: new Map(),
          buffer: [],
          ok: 0,
          errors: 0,
        }
        shards.set(info.name, created)
        enqueue(created, async () => {
          const metaKv = [...kv, { key: 'evflow.input_fingerprint', value: info.fingerprint }]
          created.writer = await ParquetFileWriter.create(created.tmp, schemaOf(all), metaKv, createdBy)
        })
        return created
      }

      const writeBuffered = (state: ShardState) => {
        const rows = state.buffer
        state.buffer = []
        if (rows.length === 0) return
        enqueue(state, async () => {
          if (closed) return
          const started = performance.now()
          await state.writer!.writeRowGroup(toColumns(state, rows))
          stage?.busy(performance.now() - started)
          stage?.out(rows.length)
        })
      }

      const finishShard = (state: ShardState) => {
        writeBuffered(state)
        enqueue(state, async () => {
          if (closed) return
          const started = performance.now()
          const result = await state.writer!.finish()
          const record: CompletionRecord = {
            version: 1,
            shard: state.info.name,
            input: state.info.path,
            rowStart: state.info.rowStart,
            rowEnd: state.info.rowEnd,
            rowsIn: state.info.rows,
            rowsOk: state.ok,
            rowsError: state.errors,
            inputFingerprint: state.info.fingerprint,
            configHash,
            output: `${state.info.name}.parquet`,
            outputBytes: result.bytes,
            outputSha256: result.sha256,
            committedAt: new Date().toISOString(),
          }
          await commitShard(layout, state.tmp, record)
          stage?.busy(performance.now() - started)
          shards.delete(state.info.name)
          if (!closed) subscriber.next({ status: 'committed', ...record })
        })
      }

      const onRecord = (record: KeyedRecord) => {
        const state = stateFor(record.source)
        const ordinal = record.key.row - state.info.rowStart
        if (ordinal < 0 || ordinal >= state.info.rows || ordinal < state.next || state.pending.has(ordinal)) {
          fail(new ShardWriteError(outDir, `${state.info.name}: unexpected or duplicate row ${record.key.row}`))
          return
        }
        stage?.in()
        state.pending.set(ordinal, record)
        while (state.pending.has(state.next)) {
          const next = state.pending.get(state.next)!
          state.pending.delete(state.next)
          state.next += 1
          if (next.kind === 'error') state.errors += 1
          else state.ok += 1
          state.buffer.push(rowValues(state, next, columns))
          options.inFlight?.release(next.key)
          if (state.buffer.length >= rowGroupSize) writeBuffered(state)
        }
        if (state.next === state.info.rows) finishShard(state)
      }

      const onNotice = (notice: ShardNotice) => {
        if (notice.error) {
          subscriber.next({ status: 'failed', shard: notice.source.name, input: notice.source.path, error: notice.error.message })
          return
        }
        finishShard(stateFor(notice.source))
      }

      try {
        ensureLayout(layout)
        if (options.lock !== false) lock = acquireFolderLock(layout.lock, outDir)
      } catch (error) {
        subscriber.error(error)
        return
      }

      const subscription = source.subscribe({
        next: (record) => {
          if (closed) return
          try {
            if (record.kind === 'shard-notice') onNotice(record as ShardNotice)
            else onRecord(record as KeyedRecord)
          } catch (error) {
            fail(error instanceof ShardWriteError ? error : new ShardWriteError(outDir, describeError(error), { cause: error }))
          }
        },
        error: (error: unknown) => fail(error),
        complete: () => {
          upstreamDone = true
          maybeComplete()
        },
      })
      return () => {
        subscription.unsubscribe()
        if (!closed) {
          closed = true
          abortAll()
          lock?.release()
        }
      }
    })
}

/** The output values of one row, in column order: kept, status, error, error_code, results. */
function rowValues<R>(state: ShardState, r: KeyedRecord, results: readonly OutputColumn<R>[]): unknown[] {
  const values: unknown[] = state.kept.map(({ from, column }) => column.convert(r.kept[from]))
  const error = r.kind === 'error' ? (r as ErrorRecord) : undefined
  values.push(error ? 'error' : 'ok', error ? error.message : null, error ? error.code : null)
  const planned = state.columns.slice(state.kept.length + 3)
  results.forEach((column, i) => values.push(error ? null : planned[i].convert(column.value(r as unknown as R))))
  return values
}

/** Column arrays of one row group from its rows' values. */
function toColumns(state: ShardState, rows: readonly unknown[][]) {
  return state.columns.map((column, i) => ({ name: column.name, data: rows.map((row) => row[i]) })) as Parameters<ParquetFileWriter['writeRowGroup']>[0]
}
