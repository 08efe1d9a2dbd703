import { Observable } from 'rxjs'

import { ShardReadError, describeError } from '../src/errors.js'
import type { InFlight } from '../src/engine/in-flight.js'
import type { RunMetrics } from '../src/engine/metrics.js'
import { openParquet, type OpenParquet } from '../src/parquet/file.js'
import { summarizeColumns } from '../src/parquet/schema.js'
import {
  planShards,
  readSlice,
  rowGroupSlices,
  validateSelection,
  type PlannedShard,
  type ShardColumns,
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

export interface ReadShardsOptions extends ShardSelection, ShardColumns {
  /**
   * Bound on records between this source and the sink, shared with `writeShards({ inFlight })`: the reader
   * waits for the sink before reading on. Default: none (the reader only yields between row groups).
   */
  inFlight?: InFlight
  /** Shards for which this returns true are not read (how a rerun resumes). Default: read all. */
  skip?: (shard: ShardInfo) => boolean | Promise<boolean>
  /** Run metrics; the reader counts under `readShards`. */
  metrics?: RunMetrics
}

export type ShardRecord = ImageRow | ErrorRecord | ShardNotice

/**
 * Reads Parquet shards row group by row group and emits one record per selected row.
 *
 * Use it as the source of every pipeline. `inputs` are files, folders (searched recursively for
 * `*.parquet`) and glob patterns, or a plan made by `planShards`. Rows are read from a file handle one
 * row group at a time, only the needed columns (image, id, kept), binary values as `Uint8Array`.
 *
 * Out: 1 `ImageRow` per selected row, in file order; a row that cannot be read (its row group is corrupt, or
 * the shard has no usable image column) becomes an `ErrorRecord` with code `shard-read` or `missing`; a
 * shard with no rows to emit (empty, or unreadable footer) gives one `ShardNotice`.
 * Errors: a malformed shard never errors the stream (see above); only bad options throw
 * `PipelineConfigError` (at subscription) and a missing input throws `InputNotFoundError`.
 *
 * @example
 * readShards('data/', { imageColumn: 'image', keep: ['url'] }).pipe(decodeImages({ size: 64 }))
 */
export function readShards(
  inputs: string | readonly string[] | readonly PlannedShard[],
  options: ReadShardsOptions = {},
): Observable<ShardRecord> {
  validateSelection(options)
  return new Observable<ShardRecord>((subscriber) => {
    let stopped = false
    let open: OpenParquet | undefined
    const stage = options.metrics?.stage('readShards')

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
      try {
        open = await openParquet(info.path)
      } catch (error) {
        const message = describeError(error)
        await emit({ kind: 'shard-notice', source: info, error: { name: 'ShardReadError', message } })
        return
      }
      const file = open
      const present = new Set(summarizeColumns(file.metadata).map((c) => c.name))
      const columns = [info.imageColumn, ...info.kept.map((k) => k.name)].filter(
        (c): c is string => c !== undefined && present.has(c),
      )
      for (const slice of rowGroupSlices(file, info)) {
        if (stopped) return
        const started = performance.now()
        let rows: Record<string, unknown>[] | undefined
        let failure: string | undefined
        try {
          rows = await readSlice(file, slice, [...new Set(columns)])
        } catch (error) {
          failure = error instanceof ShardReadError ? error.message : describeError(error)
        }
        stage?.busy(performance.now() - started)
        for (let row = slice.start; row < slice.end; row++) {
          if (stopped) return
          const key = { shard: info.name, rowGroup: slice.rowGroup, row }
          const values = rows?.[row - slice.start]
          const kept = keptValues(info, values)
          const id = info.idColumn === undefined ? null : (values?.[info.idColumn] ?? null)
          if (failure !== undefined) {
            await emit(toErrorRecord({ kind: 'image-row', key, source: info, kept, id }, 'readShards', 'shard-read', failure))
            continue
          }
          if (planned.imageProblem !== undefined) {
            await emit(toErrorRecord({ kind: 'image-row', key, source: info, kept, id }, 'readShards', 'missing', planned.imageProblem))
            continue
          }
          const cell = info.imageColumn === undefined ? null : values?.[info.imageColumn]
          if (Array.isArray(cell)) {
            const frames = cell.map((f: unknown) => (f instanceof Uint8Array ? f : null))
            await emit({ kind: 'image-row', key, source: info, kept, id, image: null, frames, imagePath: null })
            continue
          }
          const { image, imagePath } = imageCell(cell)
          await emit({ kind: 'image-row', key, source: info, kept, id, image, imagePath })
        }
        // Let the event loop turn between row groups even without an in-flight bound.
        await new Promise<void>((resolve) => setImmediate(resolve))
      }
      open = undefined
      await file.close().catch(() => {})
    }

    const run = async () => {
      const planned = isPlan(inputs) ? inputs : await planShards(typeof inputs === 'string' ? [inputs] : (inputs as string[]), options)
      for (const shard of planned) {
        if (stopped) return
        await readOne(shard)
      }
    }

    run().then(
      () => {
        if (!stopped) subscriber.complete()
      },
      (error: unknown) => {
        if (!stopped) subscriber.error(error)
      },
    )
    return () => {
      stopped = true
      void open?.close().catch(() => {})
    }
  })
}

function isPlan(inputs: unknown): inputs is readonly PlannedShard[] {
  return Array.isArray(inputs) && inputs.length > 0 && typeof inputs[0] === 'object' && inputs[0] !== null && 'plan' in inputs[0]
}

function keptValues(info: ShardInfo, values: Record<string, unknown> | undefined): Record<string, unknown> {
  const kept: Record<string, unknown> = {}
  for (const column of info.kept) kept[column.name] = values?.[column.name] ?? null
  return kept
}

/** The bytes of an image cell: binary, or a Hugging Face `{bytes, path}` struct. */
function imageCell(cell: unknown): { image: Uint8Array | null; imagePath: string | null } {
  if (cell instanceof Uint8Array) return { image: cell, imagePath: null }
  if (cell !== null && typeof cell === 'object') {
    const struct = cell as { bytes?: unknown; path?: unknown }
    const image = struct.bytes instanceof Uint8Array ? struct.bytes : null
    const imagePath = typeof struct.path === 'string' ? struct.path : struct.path instanceof Uint8Array ? Buffer.from(struct.path).toString('utf8') : null
    return { image, imagePath }
  }
  return { image: null, imagePath: null }
}
