import { Observable, type OperatorFunction } from 'rxjs'

import { PipelineConfigError, ShardWriteError, describeError } from '../src/errors.js'
import type { InFlight } from '../src/engine/in-flight.js'
import { acquireFolderLock, type FolderLock } from '../src/engine/lock.js'
import type { RunMetrics } from '../src/engine/metrics.js'
import { ensureLayout, outputLayout, type CompletionRecord, type OutputLayout } from '../src/parquet/commit.js'
import type { OutputColumn } from '../src/parquet/output-schema.js'
import { ShardSink } from '../src/parquet/sink.js'
import type { ErrorRecord, KeyedRecord, RowKey, ShardInfo, ShardNotice } from '../src/records.js'

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

/**
 * Writes one output Parquet shard per input shard into `outDir` and commits it atomically.
 *
 * Use as the sink of a pipeline. Each shard is written under `_evflow/tmp/`, one row group at a time, rows
 * in input order (a reorder buffer), and renamed to `<outDir>/<shard>.parquet` when its last row has arrived,
 * with a completion record in `_evflow/commits/` (rows in / ok / error, input fingerprint, config hash).
 * Output rows: the kept columns, `status` (`ok` | `error`), `error`, `error_code`, then `columns`.
 *
 * The operator is glue: each shard's reorder buffer, row groups and commit are a `ShardSink`
 * (`src/parquet/sink.ts`); this routes records to them, holds the folder lock and emits the commits.
 *
 * In → out: N rows of a shard → 1 `ShardCommit` (`committed`, or `failed` for an unreadable shard).
 * On unsubscribe or error, shards in progress are deleted, never left looking complete.
 * Errors: `PipelineConfigError` for bad options; `OutputLockedError` when another run holds the folder;
 * `UnsafeOutputError` when the output path is not a folder or something under its `_evflow/` is a symlink;
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
      const sinks = new Map<string, ShardSink<R>>()
      let lock: FolderLock | undefined
      let closed = false
      let upstreamDone = false
      /** Commits in progress. */
      let committing = 0

      const abortAll = () => {
        for (const sink of sinks.values()) sink.abort()
        sinks.clear()
      }
      const fail = (error: unknown) => {
        if (closed) return
        closed = true
        abortAll()
        lock?.release()
        subscriber.error(error)
      }
      const maybeComplete = () => {
        if (closed || !upstreamDone || committing > 0) return
        if (sinks.size > 0) {
          const missing = [...sinks.values()].map((s) => `${s.info.name}: ${s.received} of ${s.info.rows} rows`)
          fail(new ShardWriteError(outDir, `source completed before every row arrived (${missing.join('; ')})`))
          return
        }
        closed = true
        lock?.release()
        subscriber.complete()
      }

      const sinkFor = (info: ShardInfo): ShardSink<R> => {
        let sink = sinks.get(info.name)
        if (!sink) {
          sink = new ShardSink<R>({
            layout,
            info,
            columns,
            configHash,
            kv,
            createdBy,
            rowGroupSize,
            ...(stage === undefined ? {} : { metrics: stage }),
            ...(options.inFlight === undefined ? {} : { onBuffered: (key: RowKey) => options.inFlight!.release(key) }),
            onError: fail,
          })
          sinks.set(info.name, sink)
        }
        return sink
      }
      const commit = (sink: ShardSink<R>) => {
        committing += 1
        sink.commit().then(
          (record) => {
            committing -= 1
            sinks.delete(sink.info.name)
            if (!closed) subscriber.next({ status: 'committed', ...record })
            maybeComplete()
          },
          (error: unknown) => {
            committing -= 1
            fail(error)
          },
        )
      }

      const onNotice = (notice: ShardNotice) => {
        if (notice.error) {
          subscriber.next({ status: 'failed', shard: notice.source.name, input: notice.source.path, error: notice.error.message })
          return
        }
        commit(sinkFor(notice.source))
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
            else {
              const sink = sinkFor((record as KeyedRecord).source)
              if (sink.push(record as KeyedRecord)) commit(sink)
            }
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
