/**
 * The Parquet reader: a small pool of parser threads ({@link ./reader-thread.ts}) with a watchdog. The
 * main thread opens files and sends tasks (inspect a footer, decode one row group); it never interprets a
 * byte of a Parquet file itself, so its event loop keeps turning (signals, progress, lock renewal) whatever
 * a file holds.
 *
 * Budgets:
 * - time: a task (one footer, or one row group) that has not finished within `readTimeoutMs` is abandoned,
 *   its thread terminated and replaced; the task fails with reason `timeout`;
 * - memory: each thread's V8 heap is capped at `readMemoryMb`, and a row group whose pages claim more than
 *   that (compressed + uncompressed bytes) is not decoded at all; both fail the row group with reason
 *   `memory`, never the process.
 */
import { existsSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { Piscina } from 'piscina'

import { PipelineConfigError, ShardReadError, describeError } from '../errors.js'
import type { FileFacts, FileRef, ImageBlock, InspectTask, ReaderFailure, ReaderTask, ReadTask, RowBlock } from './reader-thread.js'
import type { ImageColumnLayout } from './schema.js'

export type { BinaryBlock, FileFacts, ImageBlock, RowBlock, RowGroupFacts } from './reader-thread.js'

/** The time and memory budgets of parsing. */
export interface ReadBudget {
  /**
   * Most milliseconds one footer or one row group may take to parse; past it the parser thread is
   * terminated and replaced, and the row group's rows become `shard-read` error rows (a footer: the shard
   * fails). Default 30000.
   */
  readTimeoutMs?: number
  /**
   * Memory budget of one parse, in MiB: the parser thread's heap limit, and the most bytes a row group's
   * selected column chunks may claim (compressed + uncompressed) before it is decoded. Default 512.
   */
  readMemoryMb?: number
}

/** Testing only: make a parse of a matching file spin (as a parser stuck in a loop would). */
export interface DebugSpin {
  readonly stage: 'inspect' | 'read'
  /** Substring of the file's path. */
  readonly match: string
  readonly ms: number
}

export interface ParquetReaderOptions extends ReadBudget {
  /** Parser threads, which is also how many parses run at once. Default 2. */
  threads?: number
  /** Testing only. Default: none. */
  debugSpin?: DebugSpin
}

export const DEFAULT_READ_TIMEOUT_MS = 30_000
export const DEFAULT_READ_MEMORY_MB = 512

/** An open input file and what its footer and page headers say. Close it when done. */
export interface ParquetSource extends FileFacts {
  readonly path: string
  /** Key of this open in the threads' footer caches. */
  readonly fileId: number
  /** The descriptor the parser threads read (owned by this source). */
  readonly handle: FileHandle
  close(): Promise<void>
}

/** Rows `[start, end)` (absolute within the row group) of some top-level columns. */
export interface RowGroupRequest {
  readonly rowGroup: number
  readonly start: number
  readonly end: number
  readonly columns: readonly string[]
  /** The image column, returned as transferred buffers (and also as plain values when `alsoAsValues`, for a kept image column). */
  readonly image?: { readonly column: string; readonly layout: ImageColumnLayout; readonly alsoAsValues?: boolean }
}

/** A parse that overran a budget. */
export interface ReadIncident {
  readonly path: string
  readonly rowGroup?: number
  readonly reason: 'timeout' | 'memory'
  readonly message: string
}

/** The compiled thread: next to this file in dist/, or dist/src/parquet/reader-thread.js when running from sources. */
function threadFile(): string {
  const here = fileURLToPath(import.meta.url)
  const compiled = here.endsWith('.ts') ? here.replace(/\/src\/parquet\/reader\.ts$/, '/dist/src/parquet/reader-thread.js') : here.replace(/reader\.js$/, 'reader-thread.js')
  if (!existsSync(compiled)) throw new ShardReadError('reader', `Parquet parser thread not found at ${compiled}; run npm run build`)
  return compiled
}

class TaskTimeout extends Error {}

export class ParquetReader {
  readonly threads: number
  readonly timeoutMs: number
  readonly memoryMb: number
  private readonly debugSpin: DebugSpin | undefined
  private pool: Piscina | undefined
  private closed = false
  private nextFileId = 1
  private running = 0
  private readonly waiting: (() => void)[] = []
  private readonly controllers = new Set<AbortController>()
  /** Parses that overran a budget, in the order they happened. */
  readonly incidents: ReadIncident[] = []

  constructor(options: ParquetReaderOptions = {}) {
    ParquetReader.validate(options)
    this.threads = options.threads ?? 2
    this.timeoutMs = options.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS
    this.memoryMb = options.readMemoryMb ?? DEFAULT_READ_MEMORY_MB
    this.debugSpin = options.debugSpin
  }

  /** Throws `PipelineConfigError` naming the first bad option. */
  static validate(options: ParquetReaderOptions): void {
    const { threads, readTimeoutMs, readMemoryMb } = options
    if (threads !== undefined && (!Number.isInteger(threads) || threads < 1 || threads > 64)) {
      throw new PipelineConfigError('readThreads', `must be an integer in [1, 64], got ${threads}`)
    }
    if (readTimeoutMs !== undefined && (!Number.isFinite(readTimeoutMs) || readTimeoutMs < 1 || readTimeoutMs > 24 * 3600 * 1000)) {
      throw new PipelineConfigError('readTimeoutMs', `must be a number of milliseconds in [1, 86400000], got ${readTimeoutMs}`)
    }
    if (readMemoryMb !== undefined && (!Number.isFinite(readMemoryMb) || readMemoryMb < 16 || readMemoryMb > 1024 * 1024)) {
      throw new PipelineConfigError('readMemoryMb', `must be a number of MiB in [16, 1048576], got ${readMemoryMb}`)
    }
  }

  /** Started on first use, so that a reader that is never used costs nothing. */
  private piscina(): Piscina {
    if (this.closed) throw new ShardReadError('reader', 'the Parquet reader is closed')
    this.pool ??= new Piscina({
      filename: threadFile(),
      minThreads: 1,
      maxThreads: this.threads,
      idleTimeout: Number.POSITIVE_INFINITY,
      concurrentTasksPerWorker: 1,
      resourceLimits: { maxOldGenerationSizeMb: this.memoryMb, maxYoungGenerationSizeMb: Math.min(64, Math.max(8, this.memoryMb / 16)) },
    })
    return this.pool
  }

  /** Waits for a free thread, so that a task's time budget starts when it starts running, not when queued. */
  private async slot(): Promise<void> {
    if (this.running < this.threads) {
      this.running += 1
      return
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve))
  }

  private release(): void {
    const next = this.waiting.shift()
    if (next) next()
    else this.running -= 1
  }

  /**
   * Runs a task under the time budget, counted from when the task starts running in a thread (the thread
   * writes its start time into `started`): a thread still starting (after a replacement, on a loaded
   * machine) does not eat the task's budget. Rejects with `TaskTimeout`, or with the thread's error (e.g.
   * out of memory).
   */
  private async run(task: InspectTask | ReadTask): Promise<unknown> {
    await this.slot()
    const controller = new AbortController()
    this.controllers.add(controller)
    const started = new BigInt64Array(new SharedArrayBuffer(8))
    const queued = Date.now()
    let timer: NodeJS.Timeout | undefined
    const check = () => {
      const at = Number(Atomics.load(started, 0))
      const now = Date.now()
      // Not started yet: look again soon (a thread that never starts is given up after a minute).
      if (at === 0 && now - queued < 60_000 + this.timeoutMs) {
        timer = setTimeout(check, 50)
        return
      }
      const left = (at === 0 ? queued : at) + this.timeoutMs - now
      if (left > 0) timer = setTimeout(check, left)
      else controller.abort(new TaskTimeout())
    }
    timer = setTimeout(check, this.timeoutMs)
    try {
      const pool = this.piscina()
      return await pool.run({ ...task, started } as ReaderTask, { signal: controller.signal })
    } catch (error) {
      if (controller.signal.aborted && controller.signal.reason instanceof TaskTimeout) throw controller.signal.reason
      throw error
    } finally {
      clearTimeout(timer)
      this.controllers.delete(controller)
      this.release()
    }
  }

  private spin(stage: DebugSpin['stage'], path: string): number | undefined {
    const spin = this.debugSpin
    return spin && spin.stage === stage && path.includes(spin.match) ? spin.ms : undefined
  }

  /**
   * Opens a file, parses its footer and establishes each row group's row count (in a parser thread).
   * Throws `ShardReadError` naming the file when it cannot be used (not Parquet, a footer that is invalid
   * or was not parsed within the time budget, a row group whose row count cannot be established).
   */
  async open(path: string, options: { withMetadata?: boolean } = {}): Promise<ParquetSource> {
    let handle: FileHandle
    try {
      handle = await open(path, 'r')
    } catch (cause) {
      throw new ShardReadError(path, `cannot open: ${describeError(cause)}`, undefined, { cause })
    }
    try {
      const { size } = await handle.stat()
      const file: FileRef = { fileId: this.nextFileId++, fd: handle.fd, path, byteLength: size }
      const spin = this.spin('inspect', path)
      let result: unknown
      try {
        result = await this.run({ kind: 'inspect', file, withMetadata: options.withMetadata ?? false, ...(spin ? { debugSpinMs: spin } : {}) })
      } catch (error) {
        throw this.taskError(error, path)
      }
      const facts = result as FileFacts | ReaderFailure
      if ('failed' in facts) throw new ShardReadError(path, facts.message)
      return { ...facts, path, fileId: file.fileId, handle, close: () => handle.close() }
    } catch (error) {
      await handle.close().catch(() => {})
      if (error instanceof ShardReadError) throw error
      throw new ShardReadError(path, describeError(error), undefined, { cause: error })
    }
  }

  /** Decodes some rows of one row group. Throws `ShardReadError` (with the row group) when it cannot. */
  async read(source: ParquetSource, request: RowGroupRequest): Promise<RowBlock> {
    const facts = source.rowGroups[request.rowGroup]
    if (!facts) throw new ShardReadError(source.path, 'no such row group', request.rowGroup)
    const spin = this.spin('read', source.path)
    const task: ReadTask = {
      kind: 'read',
      file: { fileId: source.fileId, fd: source.handle.fd, path: source.path, byteLength: source.byteLength },
      footerHash: source.footerHash,
      rowGroup: request.rowGroup,
      rows: facts.rows,
      start: request.start,
      end: request.end,
      columns: request.columns,
      ...(request.image ? { image: request.image } : {}),
      maxBytes: this.memoryMb * 1024 * 1024,
      ...(spin ? { debugSpinMs: spin } : {}),
    }
    let result: unknown
    try {
      result = await this.run(task)
    } catch (error) {
      throw this.taskError(error, source.path, request.rowGroup)
    }
    const block = result as RowBlock | ReaderFailure
    if ('failed' in block) {
      if (block.message.startsWith('memory:')) this.incidents.push({ path: source.path, rowGroup: request.rowGroup, reason: 'memory', message: block.message })
      throw new ShardReadError(source.path, block.message, request.rowGroup, { reason: block.message.startsWith('memory:') ? 'memory' : 'corrupt' })
    }
    return block
  }

  /** The error for a task that failed in the pool: a timeout, the thread's heap limit, or a thread crash. */
  private taskError(error: unknown, path: string, rowGroup?: number): ShardReadError {
    const what = rowGroup === undefined ? 'the footer' : 'the row group'
    if (error instanceof TaskTimeout) {
      const message = `timeout: ${what} was not parsed within ${formatSeconds(this.timeoutMs)} (the parser thread was stopped; raise --read-timeout if the file is only very large)`
      this.incidents.push({ path, ...(rowGroup === undefined ? {} : { rowGroup }), reason: 'timeout', message })
      return new ShardReadError(path, message, rowGroup, { reason: 'timeout' })
    }
    if ((error as { code?: string })?.code === 'ERR_WORKER_OUT_OF_MEMORY') {
      const message = `memory: parsing ${what} exceeded the read memory budget of ${this.memoryMb} MiB (the parser thread was stopped; raise --read-memory)`
      this.incidents.push({ path, ...(rowGroup === undefined ? {} : { rowGroup }), reason: 'memory', message })
      return new ShardReadError(path, message, rowGroup, { cause: error, reason: 'memory' })
    }
    if (this.closed) return new ShardReadError(path, 'the Parquet reader was closed', rowGroup, { cause: error })
    return new ShardReadError(path, `parser thread failed: ${describeError(error)}`, rowGroup, { cause: error })
  }

  /** Terminates the parser threads (a parse in progress is abandoned). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const c of this.controllers) c.abort(new Error('the Parquet reader was closed'))
    const pool = this.pool
    this.pool = undefined
    if (pool) await pool.destroy().catch(() => {})
    for (const wake of this.waiting.splice(0)) wake()
  }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`
}

/** A `RowBlock`'s image column as per-row values (views into the transferred buffers: no copy). */
export function imageCells(image: ImageBlock, rows: number): { image: Uint8Array | null; imagePath: string | null; frames?: (Uint8Array | null)[] | null }[] {
  const views = (block: { buffers: ArrayBuffer[]; buffer: Int32Array; offset: Float64Array; length: Float64Array }, i: number): Uint8Array | null =>
    block.buffer[i] < 0 ? null : new Uint8Array(block.buffers[block.buffer[i]], block.offset[i], block.length[i])
  const cells: { image: Uint8Array | null; imagePath: string | null; frames?: (Uint8Array | null)[] | null }[] = new Array(rows)
  switch (image.layout) {
    case 'binary':
      for (let i = 0; i < rows; i++) cells[i] = { image: views(image.bytes, i), imagePath: null }
      break
    case 'hf-struct':
      for (let i = 0; i < rows; i++) {
        const path = image.paths[i]
        cells[i] = { image: views(image.bytes, i), imagePath: typeof path === 'string' ? path : path instanceof Uint8Array ? Buffer.from(path).toString('utf8') : null }
      }
      break
    case 'frames': {
      let next = 0
      for (let i = 0; i < rows; i++) {
        const count = image.counts[i]
        if (count < 0) {
          cells[i] = { image: null, imagePath: null }
          continue
        }
        const frames: (Uint8Array | null)[] = new Array(count)
        for (let f = 0; f < count; f++) frames[f] = views(image.frames, next++)
        cells[i] = { image: null, imagePath: null, frames }
      }
      break
    }
  }
  return cells
}
