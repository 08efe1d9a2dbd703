import { Observable } from 'rxjs'

import { PipelineConfigError, ShardReadError, describeError } from '../src/errors.js'
import type { InFlight } from '../src/engine/in-flight.js'
import type { RunMetrics } from '../src/engine/metrics.js'
import { imageCells, ParquetReader, type ParquetSource, type RowBlock } from '../src/parquet/reader.js'
import {
  planShards,
  readerFor,
  rowGroupRanges,
  rowGroupSlices,
  shardFingerprint,
  validateSelection,
  type PlannedShard,
  type ShardColumns,
  type ShardReading,
  type ShardSelection,
} from '../src/parquet/shards.js'
import {
  recordBytes,
  toErrorRecord,
  type ErrorRecord,
  type ImageRow,
  type ShardInfo,
  type ShardNotice,
} from '../src/records.js'

export interface ReadShardsOptions extends ShardSelection, ShardColumns, ShardReading {
  /**
   * Bound on records between this source and the sink, shared with `writeShards({ inFlight })`: the reader
   * waits for the sink before reading on. Default: none (the reader only yields between row groups).
   */
  inFlight?: InFlight
  /** Shards for which this returns true are not read (how a rerun resumes). Default: read all. */
  skip?: (shard: ShardInfo) => boolean | Promise<boolean>
  /** Run metrics; the reader counts under `readShards`. */
  metrics?: RunMetrics
  /**
   * Shards read at once (each by its own parser process). Rows of one shard stay in order; rows of
   * different shards interleave, so that a shard whose parsing stalls (until its time budget) does not
   * hold back the others. Default 2.
   */
  concurrency?: number
}

export type ShardRecord = ImageRow | ErrorRecord | ShardNotice

/**
 * Reads Parquet shards row group by row group and emits one record per selected row.
 *
 * Use it as the source of every pipeline. `inputs` are files, folders (searched recursively for
 * `*.parquet`) and glob patterns, or a plan made by `planShards`. Every byte of a file is parsed in parser
 * processes (see `ParquetReader`), one row group per task, under a time budget (`readTimeoutMs`, default
 * 30 s) and a memory budget (`readMemoryMb`, default 512 MiB); only the needed columns (image, id, kept) are
 * decoded, binary values arrive as `Uint8Array` views into transferred buffers. `concurrency` shards are
 * read at once; rows of one shard are emitted in file order.
 *
 * Out: 1 `ImageRow` per selected row. A row that cannot be read becomes an `ErrorRecord`: code
 * `shard-read` when its row group is damaged (the count of rows comes from the page headers, not from a
 * footer that may lie), cannot be decoded, or overran a budget (the message starts `timeout:` or
 * `memory:`); code `missing` when the shard has no usable image column. A shard with no rows to emit (empty,
 * or a footer that is unreadable or was not parsed in time) gives one `ShardNotice`.
 * Errors: a malformed shard never errors the stream (see above); only bad options throw
 * `PipelineConfigError` (at once) and a missing input throws `InputNotFoundError`. On unsubscribe the
 * parser processes are killed, whatever they are parsing.
 *
 * @example
 * readShards('data/', { imageColumn: 'image', keep: ['url'] }).pipe(decodeImages({ size: 64 }))
 */
export function readShards(
  inputs: string | readonly string[] | readonly PlannedShard[],
  options: ReadShardsOptions = {},
): Observable<ShardRecord> {
  validateSelection(options)
  ParquetReader.validate(options)
  const concurrency = options.concurrency ?? 2
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new PipelineConfigError('concurrency', `must be an integer in [1, 64], got ${concurrency}`)
  }
  return new Observable<ShardRecord>((subscriber) => {
    let stopped = false
    const stage = options.metrics?.stage('readShards')
    const { reader, owned } = readerFor(options, concurrency)
    const open = new Set<ParquetSource>()
    const closeSource = async (source: ParquetSource) => {
      if (!open.delete(source)) return
      await source.close().catch(() => {})
    }

    const emit = async (record: ShardRecord): Promise<void> => {
      if (options.inFlight && record.kind !== 'shard-notice') {
        await options.inFlight.acquire(record.key, recordBytes(record))
      }
      if (stopped) return
      if (stage) {
        stage.in()
        stage.out()
        if (record.kind === 'error') stage.errors += 1
      }
      subscriber.next(record)
    }

    const readOne = async (planned: PlannedShard): Promise<void> => {
      const { plan } = planned
      if (!plan.ok) {
        await emit({ kind: 'shard-notice', source: plan.info, error: { name: plan.error.name, message: plan.error.message } })
        return
      }
      const info = plan.info
      if (options.skip && (await options.skip(info))) return
      if (info.rows === 0) {
        await emit({ kind: 'shard-notice', source: info })
        return
      }
      let source: ParquetSource
      try {
        source = await reader.open(info.path)
      } catch (error) {
        if (stopped) return
        await emit({ kind: 'shard-notice', source: info, error: { name: 'ShardReadError', message: describeError(error) } })
        return
      }
      open.add(source)
      try {
        if (shardFingerprint(source.footerHash, info.rowStart, info.rowEnd) !== info.fingerprint) {
          const error = new ShardReadError(info.path, 'the file changed since the run was planned (its footer differs); rerun to plan it again')
          await emit({ kind: 'shard-notice', source: info, error: { name: error.name, message: error.message } })
          return
        }
        const present = new Set(source.columns.map((c) => c.name))
        const columns = [...new Set([info.imageColumn, ...info.kept.map((k) => k.name)])].filter((c): c is string => c !== undefined && present.has(c))
        const layout = source.columns.find((c) => c.name === info.imageColumn)?.image
        const alsoAsValues = info.kept.some((k) => k.name === info.imageColumn)
        const image =
          info.imageColumn !== undefined && layout !== undefined && planned.imageProblem === undefined ? { column: info.imageColumn, layout, alsoAsValues } : undefined
        const groupStarts = rowGroupRanges(source).map((g) => g.start)
        for (const slice of rowGroupSlices(source, info)) {
          if (stopped) return
          const started = performance.now()
          const facts = source.rowGroups[slice.rowGroup]
          let block: RowBlock | undefined
          let failure: string | undefined
          const damaged = facts.problem ?? columns.map((c) => facts.columns?.[c]).find((p) => p !== undefined)
          if (damaged !== undefined) {
            failure = new ShardReadError(info.path, facts.problem ?? `damaged: ${damaged}`, slice.rowGroup).message
          } else if (columns.length > 0) {
            try {
              const offset = groupStarts[slice.rowGroup]
              block = await reader.read(source, { rowGroup: slice.rowGroup, start: slice.start - offset, end: slice.end - offset, columns, ...(image ? { image } : {}) })
            } catch (error) {
              if (stopped) return
              failure = describeError(error)
            }
          }
          stage?.busy(performance.now() - started)
          const cells = block?.image ? imageCells(block.image, block.rows) : undefined
          for (let row = slice.start; row < slice.end; row++) {
            if (stopped) return
            const key = { shard: info.name, rowGroup: slice.rowGroup, row }
            const i = row - slice.start
            const kept = keptValues(info, block, i)
            const id = info.idColumn === undefined ? null : (block?.values[info.idColumn]?.[i] ?? null)
            if (failure !== undefined) {
              await emit(toErrorRecord({ kind: 'image-row', key, source: info, kept, id }, 'readShards', 'shard-read', failure))
              continue
            }
            if (planned.imageProblem !== undefined) {
              await emit(toErrorRecord({ kind: 'image-row', key, source: info, kept, id }, 'readShards', 'missing', planned.imageProblem))
              continue
            }
            const cell = cells?.[i] ?? { image: null, imagePath: null }
            await emit({ kind: 'image-row', key, source: info, kept, id, ...cell } as ImageRow)
          }
          // Let the event loop turn between row groups even without an in-flight bound.
          await new Promise<void>((resolve) => setImmediate(resolve))
        }
      } finally {
        await closeSource(source)
      }
    }

    const run = async () => {
      const planned = isPlan(inputs)
        ? inputs
        : await planShards(typeof inputs === 'string' ? [inputs] : (inputs as string[]), { ...options, reader })
      // Lanes take shards in plan order; each reads its shard's row groups one after another.
      let next = 0
      const lane = async () => {
        while (!stopped && next < planned.length) await readOne(planned[next++])
      }
      await Promise.all(Array.from({ length: Math.min(concurrency, planned.length) }, lane))
    }

    run()
      .finally(async () => {
        if (owned) await reader.close()
      })
      .then(
        () => {
          if (!stopped) subscriber.complete()
        },
        (error: unknown) => {
          if (!stopped) subscriber.error(error)
        },
      )
    return () => {
      stopped = true
      // Kills the parsers at once (a stuck parse included) and closes the files: a lane may wait forever for
      // an in-flight slot that the torn-down sink will never release. (A parser handles a close only between
      // tasks, so a shared reader's parse in progress is not disturbed.)
      void (async () => {
        if (owned) await reader.close()
        for (const source of [...open]) await closeSource(source)
      })()
    }
  })
}

function isPlan(inputs: unknown): inputs is readonly PlannedShard[] {
  return Array.isArray(inputs) && inputs.length > 0 && typeof inputs[0] === 'object' && inputs[0] !== null && 'plan' in inputs[0]
}

function keptValues(info: ShardInfo, block: RowBlock | undefined, i: number): Record<string, unknown> {
  const kept: Record<string, unknown> = {}
  for (const column of info.kept) kept[column.name] = block?.values[column.name]?.[i] ?? null
  return kept
}
