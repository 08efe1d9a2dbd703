/**
 * The Parquet reader: a small pool of parser processes ({@link ./parser-process.ts}) with a watchdog. The
 * evflow process never interprets a byte of a Parquet file itself: it sends tasks (inspect a footer, decode
 * one row group) to parsers, so its event loop keeps turning whatever a file holds (signals, progress, lock
 * renewal), and nothing a file makes a parser do can crash, hang or exhaust it.
 *
 * Budgets:
 * - time: a task (one footer, or one row group) that has not finished within `readTimeoutMs` of starting in
 *   a parser is abandoned and its parser killed (a new one starts on the next task); the task fails with
 *   reason `timeout`;
 * - memory: each parser's V8 heap is capped at `readMemoryMb`, its resident memory is watched (Linux) and
 *   the parser killed past `readMemoryMb` + 128 MiB, and a row group whose pages claim more than
 *   `readMemoryMb` (compressed + uncompressed + 8 bytes per value) is not decoded at all; each fails the
 *   task with reason `memory`, never the evflow process.
 *
 * Parsers are processes, not threads: V8 ends a worker thread past its heap limit gracefully only when the
 * failing allocation is small; a single large one (an array doubling on a hostile run) aborts the whole
 * process. The price is one copy of the decoded bytes over IPC.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { PipelineConfigError, ShardReadError, describeError } from '../errors.js'
import type { FileFacts, ImageBlock, InspectTask, ReaderFailure, ReadTask, RowBlock } from './parser.js'
import type { FromParser, ToParser } from './parser-process.js'
import type { ImageColumnLayout } from './schema.js'

export type { BinaryBlock, FileFacts, ImageBlock, RowBlock, RowGroupFacts } from './parser.js'

/** The time and memory budgets of parsing. */
export interface ReadBudget {
  /**
   * Most milliseconds one footer or one row group may take to parse; past it the parser is killed, and the
   * row group's rows become `shard-read` error rows (a footer: the shard fails). Default 30000.
   */
  readTimeoutMs?: number
  /**
   * Memory budget of one parse, in MiB: a parser's heap limit, its resident memory limit (plus 128 MiB for
   * the process itself), and the most a row group's selected column chunks may claim before they are
   * decoded. Default 512.
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
  /** Parser processes, which is also how many parses run at once. Default 2. */
  parsers?: number
  /** Testing only. Default: none. */
  debugSpin?: DebugSpin
}

export const DEFAULT_READ_TIMEOUT_MS = 30_000
export const DEFAULT_READ_MEMORY_MB = 512
/** Resident memory a parser may use beyond its budget: the Node process itself. */
const PROCESS_ALLOWANCE_MB = 128
/** How often a busy parser's resident memory is read (Linux). */
const RSS_POLL_MS = 25
/** How long a parser may take to start before its task fails (it loads nothing from the input). */
const START_TIMEOUT_MS = 60_000

/** An input file as a parser sees it: what its footer and page headers say. Close it when done. */
export interface ParquetSource extends FileFacts {
  readonly path: string
  /** This open's id in the parsers' open-file caches. */
  readonly fileId: number
  close(): Promise<void>
}

/** Rows `[start, end)` (relative to the row group) of some top-level columns. */
export interface RowGroupRequest {
  readonly rowGroup: number
  readonly start: number
  readonly end: number
  readonly columns: readonly string[]
  /** The image column, returned as page buffers and offsets (and also as plain values when `alsoAsValues`, for a kept image column). */
  readonly image?: { readonly column: string; readonly layout: ImageColumnLayout; readonly alsoAsValues?: boolean }
}

/** A parse that overran a budget. */
export interface ReadIncident {
  readonly path: string
  readonly rowGroup?: number
  readonly reason: 'timeout' | 'memory'
  readonly message: string
}

/** The compiled parser: next to this file in dist/, or dist/src/parquet/parser-process.js when running from sources. */
function parserFile(): string {
  const here = fileURLToPath(import.meta.url)
  const compiled = here.endsWith('.ts') ? here.replace(/\/src\/parquet\/reader\.ts$/, '/dist/src/parquet/parser-process.js') : here.replace(/reader\.js$/, 'parser-process.js')
  if (!existsSync(compiled)) throw new ShardReadError('reader', `Parquet parser not found at ${compiled}; run npm run build`)
  return compiled
}

/** Why a parser ended in the middle of a task. */
type Ended = { readonly why: 'timeout' | 'memory' | 'closed' } | { readonly why: 'exited'; readonly detail: string }

interface Parser {
  readonly child: ChildProcess
  readonly ready: Promise<void>
  /** The end of its stderr (a fatal V8 error prints there). */
  stderr: string
  alive: boolean
  /** Set when this reader kills it, and why. */
  killedFor?: 'timeout' | 'memory' | 'closed'
}

class TaskFailed extends Error {
  constructor(readonly ended: Ended) {
    super(ended.why)
  }
}

export class ParquetReader {
  readonly parsers: number
  readonly timeoutMs: number
  readonly memoryMb: number
  private readonly debugSpin: DebugSpin | undefined
  private readonly pool: Parser[] = []
  private readonly idle: Parser[] = []
  private readonly waiting: ((parser: Parser | undefined) => void)[] = []
  private closed = false
  private nextFileId = 1
  private nextTaskId = 1
  /** Parses that overran a budget, in the order they happened. */
  readonly incidents: ReadIncident[] = []
  /** Highest resident memory a parser of this reader reported or was seen at, in MiB. */
  peakParserRssMiB = 0
  private readonly killAll = () => {
    for (const parser of this.pool) parser.child.kill('SIGKILL')
  }

  /** Process ids of the parsers running now (for diagnostics and memory accounting). */
  get pids(): number[] {
    return this.pool.filter((p) => p.alive && p.child.pid !== undefined).map((p) => p.child.pid!)
  }

  constructor(options: ParquetReaderOptions = {}) {
    ParquetReader.validate(options)
    this.parsers = options.parsers ?? 2
    this.timeoutMs = options.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS
    this.memoryMb = options.readMemoryMb ?? DEFAULT_READ_MEMORY_MB
    this.debugSpin = options.debugSpin
  }

  /** Throws `PipelineConfigError` naming the first bad option. */
  static validate(options: ParquetReaderOptions): void {
    const { parsers, readTimeoutMs, readMemoryMb } = options
    if (parsers !== undefined && (!Number.isInteger(parsers) || parsers < 1 || parsers > 64)) {
      throw new PipelineConfigError('parsers', `must be an integer in [1, 64], got ${parsers}`)
    }
    if (readTimeoutMs !== undefined && (!Number.isFinite(readTimeoutMs) || readTimeoutMs < 1 || readTimeoutMs > 24 * 3600 * 1000)) {
      throw new PipelineConfigError('readTimeoutMs', `must be a number of milliseconds in [1, 86400000], got ${readTimeoutMs}`)
    }
    if (readMemoryMb !== undefined && (!Number.isInteger(readMemoryMb) || readMemoryMb < 16 || readMemoryMb > 1024 * 1024)) {
      throw new PipelineConfigError('readMemoryMb', `must be an integer number of MiB in [16, 1048576], got ${readMemoryMb}`)
    }
  }

  private spawn(): Parser {
    const child = fork(parserFile(), [], {
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      execArgv: [`--max-old-space-size=${this.memoryMb}`, '--max-semi-space-size=16'],
    })
    let markReady!: () => void
    let fail!: (error: Error) => void
    const ready = new Promise<void>((resolve, reject) => {
      markReady = resolve
      fail = reject
    })
    ready.catch(() => {})
    const parser: Parser = { child, ready, stderr: '', alive: true }
    child.stderr!.on('data', (chunk: Buffer) => {
      parser.stderr = (parser.stderr + chunk.toString()).slice(-4096)
    })
    const onReady = (message: FromParser) => {
      if (message.kind !== 'ready') return
      child.off('message', onReady)
      markReady()
    }
    child.on('message', onReady)
    child.on('error', () => {})
    child.once('exit', (code, signal) => {
      parser.alive = false
      fail(new Error(`the parser process exited before it was ready (${signal ?? `code ${code}`})`))
      const at = this.pool.indexOf(parser)
      if (at >= 0) this.pool.splice(at, 1)
      const idle = this.idle.indexOf(parser)
      if (idle >= 0) this.idle.splice(idle, 1)
      if (this.pool.length === 0) process.off('exit', this.killAll)
    })
    if (this.pool.length === 0) process.on('exit', this.killAll)
    this.pool.push(parser)
    return parser
  }

  /** An idle parser, a new one while fewer than `parsers` run, or the next one to be released. */
  private async acquire(): Promise<Parser> {
    if (this.closed) throw new ShardReadError('reader', 'the Parquet reader is closed')
    const idle = this.idle.pop()
    if (idle) return idle
    if (this.pool.length < this.parsers) return this.spawn()
    const parser = await new Promise<Parser | undefined>((resolve) => this.waiting.push(resolve))
    if (!parser) throw new ShardReadError('reader', 'the Parquet reader is closed')
    return parser
  }

  private release(parser: Parser): void {
    if (!parser.alive || this.closed) {
      // A slot freed by a dead parser: the next waiter starts a new one.
      const next = this.waiting.shift()
      if (next && !this.closed) this.acquireFor(next)
      return
    }
    const next = this.waiting.shift()
    if (next) next(parser)
    else this.idle.push(parser)
  }

  private acquireFor(resolve: (parser: Parser | undefined) => void): void {
    if (this.pool.length < this.parsers) resolve(this.spawn())
    else this.waiting.unshift(resolve)
  }

  /**
   * Runs a task in a parser under the budgets. The time budget counts from when the parser starts the task,
   * not while it waits for one or starts up. Rejects with `TaskFailed` when the parser ended mid-task.
   */
  private async run(task: InspectTask | ReadTask): Promise<unknown> {
    const parser = await this.acquire()
    try {
      return await this.runOn(parser, task)
    } finally {
      this.release(parser)
    }
  }

  private async runOn(parser: Parser, task: InspectTask | ReadTask): Promise<unknown> {
    const startGuard = setTimeout(() => this.kill(parser, 'timeout'), START_TIMEOUT_MS + this.timeoutMs)
    try {
      await parser.ready
    } catch (error) {
      throw new TaskFailed({ why: 'exited', detail: describeError(error) })
    } finally {
      clearTimeout(startGuard)
    }
    const id = this.nextTaskId++
    const { child } = parser
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      let poll: NodeJS.Timeout | undefined
      const done = () => {
        clearTimeout(timer)
        clearInterval(poll)
        child.off('message', onMessage)
        child.off('exit', onExit)
      }
      const onMessage = (message: FromParser) => {
        if (message.kind === 'started' && message.id === id) {
          timer = setTimeout(() => this.kill(parser, 'timeout'), this.timeoutMs)
          poll = this.watchMemory(parser)
        } else if (message.kind === 'result' && message.id === id) {
          done()
          this.peakParserRssMiB = Math.max(this.peakParserRssMiB, Math.round(message.maxRssKiB / 1024))
          resolve(message.result)
        }
      }
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        done()
        reject(new TaskFailed(this.endedBy(parser, code, signal)))
      }
      child.on('message', onMessage)
      child.once('exit', onExit)
      try {
        child.send({ kind: 'task', id, task } satisfies ToParser)
      } catch (error) {
        done()
        reject(new TaskFailed({ why: 'exited', detail: describeError(error) }))
      }
    })
  }

  /** Kills a parser whose resident memory passes the budget (Linux: /proc). */
  private watchMemory(parser: Parser): NodeJS.Timeout | undefined {
    const pid = parser.child.pid
    const status = `/proc/${pid}/status`
    if (pid === undefined || !existsSync(status)) return undefined
    const limit = (this.memoryMb + PROCESS_ALLOWANCE_MB) * 1024 * 1024
    return setInterval(() => {
      let rss: number
      try {
        rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(status, 'utf8'))?.[1] ?? 0) * 1024
      } catch {
        return
      }
      this.peakParserRssMiB = Math.max(this.peakParserRssMiB, Math.round(rss / 1024 / 1024))
      if (rss > limit) this.kill(parser, 'memory')
    }, RSS_POLL_MS)
  }

  private kill(parser: Parser, why: 'timeout' | 'memory' | 'closed'): void {
    if (!parser.alive || parser.killedFor) return
    parser.killedFor = why
    parser.child.kill('SIGKILL')
  }

  private endedBy(parser: Parser, code: number | null, signal: NodeJS.Signals | null): Ended {
    if (parser.killedFor) return { why: parser.killedFor }
    if (/heap out of memory|Allocation failed|Invalid array length allocation failed/i.test(parser.stderr) || signal === 'SIGABRT' || code === 134) {
      return { why: 'memory' }
    }
    const last = parser.stderr.trim().split('\n').filter(Boolean).at(-1)
    return { why: 'exited', detail: `the parser process exited (${signal ?? `code ${code}`})${last ? `: ${last}` : ''}` }
  }

  private spin(stage: DebugSpin['stage'], path: string): number | undefined {
    const spin = this.debugSpin
    return spin && spin.stage === stage && path.includes(spin.match) ? spin.ms : undefined
  }

  /**
   * Parses a file's footer and establishes each row group's row count (in a parser). Throws
   * `ShardReadError` naming the file when it cannot be used (not Parquet, a footer that is invalid or was
   * not parsed within the time budget, a row group whose row count cannot be established).
   */
  async open(path: string, options: { withMetadata?: boolean } = {}): Promise<ParquetSource> {
    const fileId = this.nextFileId++
    const spin = this.spin('inspect', path)
    let result: unknown
    try {
      result = await this.run({ kind: 'inspect', file: { fileId, path }, withMetadata: options.withMetadata ?? false, ...(spin ? { debugSpinMs: spin } : {}) })
    } catch (error) {
      this.forget(fileId)
      throw this.taskError(error, path)
    }
    const facts = result as FileFacts | ReaderFailure
    if ('failed' in facts) {
      this.forget(fileId)
      throw new ShardReadError(path, facts.message)
    }
    return { ...facts, path, fileId, close: async () => this.forget(fileId) }
  }

  /** Tells the parsers to close a file. */
  private forget(fileId: number): void {
    for (const parser of this.pool) {
      if (parser.alive && parser.child.connected) parser.child.send({ kind: 'forget', fileId } satisfies ToParser, () => {})
    }
  }

  /** Decodes some rows of one row group. Throws `ShardReadError` (with the row group) when it cannot. */
  async read(source: ParquetSource, request: RowGroupRequest): Promise<RowBlock> {
    const facts = source.rowGroups[request.rowGroup]
    if (!facts) throw new ShardReadError(source.path, 'no such row group', request.rowGroup)
    const spin = this.spin('read', source.path)
    const task: ReadTask = {
      kind: 'read',
      file: { fileId: source.fileId, path: source.path },
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
      const memory = block.message.startsWith('memory:')
      if (memory) this.incidents.push({ path: source.path, rowGroup: request.rowGroup, reason: 'memory', message: block.message })
      throw new ShardReadError(source.path, block.message, request.rowGroup, { reason: memory ? 'memory' : 'corrupt' })
    }
    return block
  }

  /** The error for a task whose parser ended: a timeout, the memory budget, a crash, or the reader closing. */
  private taskError(error: unknown, path: string, rowGroup?: number): ShardReadError {
    if (error instanceof ShardReadError) return error
    const what = rowGroup === undefined ? 'the footer' : 'the row group'
    const ended = error instanceof TaskFailed ? error.ended : ({ why: 'exited', detail: describeError(error) } as const)
    switch (ended.why) {
      case 'timeout': {
        const message = `timeout: ${what} was not parsed within ${formatSeconds(this.timeoutMs)} (the parser was stopped; raise --read-timeout if the file is only very large)`
        this.incidents.push({ path, ...(rowGroup === undefined ? {} : { rowGroup }), reason: 'timeout', message })
        return new ShardReadError(path, message, rowGroup, { reason: 'timeout' })
      }
      case 'memory': {
        const message = `memory: parsing ${what} exceeded the read memory budget of ${this.memoryMb} MiB (the parser was stopped; raise --read-memory)`
        this.incidents.push({ path, ...(rowGroup === undefined ? {} : { rowGroup }), reason: 'memory', message })
        return new ShardReadError(path, message, rowGroup, { reason: 'memory' })
      }
      case 'closed':
        return new ShardReadError(path, 'the Parquet reader was closed', rowGroup)
      case 'exited':
        return new ShardReadError(path, this.closed ? 'the Parquet reader was closed' : ended.detail, rowGroup)
    }
  }

  /** Kills the parsers (a parse in progress is abandoned). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const wake of this.waiting.splice(0)) wake(undefined)
    const exits = this.pool.map((parser) => new Promise<void>((resolve) => (parser.alive ? parser.child.once('exit', () => resolve()) : resolve())))
    for (const parser of [...this.pool]) this.kill(parser, 'closed')
    await Promise.all(exits)
    process.off('exit', this.killAll)
  }
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`
}

/** A `RowBlock`'s image column as per-row values (views into its page buffers: no copy). */
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
