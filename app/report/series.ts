/**
 * The time series a run records for its report: `<out>/_evflow/series/<name>.jsonl`, one file per process
 * that wrote the folder (a local run, or an `evflow worker`), JSON lines:
 *
 * ```
 * {"type":"header","format":1,"source":"run","name":"host:pid","startedAt":"…","pipeline":"caption","config":{…},"machine":{…}}
 * {"type":"point","t":1733500000000,"rows":512,"total":1024,"shards":1,"rssMiB":210,"stages":{"decodeImages":[512,512,0,5019.5,0,{}],…}}
 * ```
 * Counters in a point are cumulative (rows written, shards done, and per stage `[recordsIn, recordsOut,
 * errors, busyMs, queueDepth, extra]`), so dropping points loses no total. `queueDepth` is the largest
 * depth seen since the previous point (so peaks survive downsampling).
 *
 * The size is bounded whatever the run's length: a point is kept at most every `step` ms; when a file
 * holds `maxPoints` points, neighbouring pairs are merged (the later counters, the larger queue depth),
 * `step` doubles and the file is rewritten (atomically). A 10-hour run keeps the same number of points as
 * a 10-minute one, at a coarser step.
 *
 * Recording never fails a run: the first write error disables the recorder and is passed to `onError`.
 * Nothing under `_evflow/` is followed through a symbolic link.
 */
import { constants } from 'node:fs'
import { lstat, mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises'
import { cpus, hostname, totalmem } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'

import { EVFLOW_VERSION, type ProgressSink, type ProgressState, type RunSummary } from '../../pipelines/run.js'
import { EVFLOW_DIR } from '../../src/parquet/commit.js'
import type { StageSnapshot } from '../../src/engine/metrics.js'
import { describeError } from '../../src/errors.js'

export const SERIES_FORMAT = 1
export const SERIES_DIR = 'series'

/** The machine a series was recorded on. */
export interface MachineInfo {
  readonly host: string
  readonly platform: string
  readonly arch: string
  readonly cpus: number
  readonly cpuModel: string
  readonly memoryMiB: number
  readonly node: string
}

export interface SeriesHeader {
  readonly type: 'header'
  readonly format: number
  /** `run`: a local `evflow <pipeline>` run; `worker`: an `evflow worker` process. */
  readonly source: 'run' | 'worker'
  /** `host:pid` for a run, the worker's name for a worker. */
  readonly name: string
  readonly startedAt: string
  readonly pipeline: string | null
  /** The run's stored config (as in `summary.json`), when known. */
  readonly config: unknown
  readonly evflow: string
  readonly machine: MachineInfo
}

/** Per stage: `[recordsIn, recordsOut, errors, busyMs, queueDepth, extra counters]`. */
export type StageCounters = [number, number, number, number, number, Record<string, number>]

export interface SeriesPoint {
  readonly type: 'point'
  /** Milliseconds since the epoch. */
  readonly t: number
  /** Rows written so far (cumulative over every shard this process ran into the folder). */
  readonly rows: number
  /** Rows this process has been given so far (its runs' totals). */
  readonly total: number
  /** Shards finished so far. */
  readonly shards: number
  /** Resident set size of the process, MiB. */
  readonly rssMiB: number
  readonly stages: Readonly<Record<string, StageCounters>>
}

export interface SeriesFile {
  /** File name under `_evflow/series/`. */
  readonly file: string
  readonly header: SeriesHeader
  readonly points: readonly SeriesPoint[]
}

export interface SeriesRecorderOptions {
  readonly source: 'run' | 'worker'
  /** Default `host:pid`. */
  readonly name?: string
  /** Smallest time between two points, ms (doubles as the file fills). Default 1000. */
  readonly stepMs?: number
  /** Points in a file before it is thinned by half. Default 240 (a file stays under ~250 KB). */
  readonly maxPoints?: number
  /** Called once with the first write error (the recorder then stops). Default: ignored. */
  readonly onError?: (error: unknown) => void
  /** evflow version for the header. Default: this evflow's. */
  readonly evflow?: string
}

/** One run (or one shard job of a worker) being recorded. */
export interface TrackedRun extends ProgressSink {
  /** Ends the run's recording (idempotent): its last counters count as done and a point is written. */
  done(): Promise<void>
}

interface RunState {
  rows: number
  total: number
  shards: number
  stages: readonly StageSnapshot[]
}

export function machineInfo(): MachineInfo {
  const list = cpus()
  return {
    host: hostname(),
    platform: process.platform,
    arch: process.arch,
    cpus: list.length,
    cpuModel: list[0]?.model?.trim() ?? 'unknown',
    memoryMiB: Math.round(totalmem() / 1024 / 1024),
    node: process.version,
  }
}

const safeName = (text: string) => text.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80)

/**
 * Records the time series of the runs one process makes into one output folder. A local run tracks one
 * run; a worker tracks each shard job it runs there (concurrent jobs are summed).
 */
export class SeriesRecorder {
  private readonly dir: string
  private readonly file: string
  private readonly maxPoints: number
  private readonly active = new Map<number, RunState>()
  private readonly finished: RunState = { rows: 0, total: 0, shards: 0, stages: [] }
  private readonly peaks = new Map<string, number>()
  private points: SeriesPoint[] = []
  private header: SeriesHeader | undefined
  private step: number
  private nextId = 0
  private writes: Promise<void> = Promise.resolve()
  private failed = false

  constructor(
    readonly outDir: string,
    private readonly options: SeriesRecorderOptions,
  ) {
    const name = options.name ?? `${hostname()}:${process.pid}`
    const stamp = new Date().toISOString().replace(/[:.]/g, '-')
    this.dir = join(outDir, EVFLOW_DIR, SERIES_DIR)
    this.file = join(this.dir, `${options.source}-${safeName(name)}-${stamp}-${randomBytes(3).toString('hex')}.jsonl`)
    this.step = options.stepMs ?? 1000
    this.maxPoints = Math.max(8, options.maxPoints ?? 240)
  }

  /** The file this recorder writes (created at the first run's start). */
  get path(): string {
    return this.file
  }

  /** A progress sink for one run; combine it with the display sink with {@link teeProgress}. */
  track(): TrackedRun {
    const id = this.nextId++
    let ended = false
    const update = (state: ProgressState) => {
      if (ended) return
      this.active.set(id, { rows: state.rowsDone, total: state.rowsTotal, shards: state.shardsDone, stages: state.stages })
      for (const s of state.stages) this.peaks.set(s.stage, Math.max(this.peaks.get(s.stage) ?? 0, this.sumDepth(s.stage)))
      this.sample(false)
    }
    const end = (last?: RunState): Promise<void> => {
      if (ended) return this.writes
      ended = true
      const state = last ?? this.active.get(id)
      this.active.delete(id)
      if (state) {
        this.finished.rows += state.rows
        this.finished.total += state.total
        this.finished.shards += state.shards
        this.finished.stages = addStages(this.finished.stages, state.stages)
      }
      if (this.header) this.sample(true)
      return this.writes
    }
    return {
      start: (state, config) => {
        if (ended || this.failed) return
        // A run that has nothing to do (every shard already committed) leaves no series.
        if (state.rowsTotal === 0 && this.header === undefined) {
          ended = true
          return
        }
        this.header ??= {
          type: 'header',
          format: SERIES_FORMAT,
          source: this.options.source,
          name: this.options.name ?? `${hostname()}:${process.pid}`,
          startedAt: new Date().toISOString(),
          pipeline: pipelineOf(config),
          config: config ?? null,
          evflow: this.options.evflow ?? EVFLOW_VERSION,
          machine: machineInfo(),
        }
        update(state)
      },
      update,
      finish: (summary: RunSummary) => {
        const current = this.active.get(id)
        const written = summary.stages.find((s) => s.stage === 'writeShards')?.recordsOut ?? current?.rows ?? 0
        void end({ rows: written, total: current?.total ?? summary.rows.in, shards: summary.shards.committed + summary.shards.failed, stages: summary.stages })
      },
      done: () => end(),
    }
  }

  /** Resolves when every write so far has finished. */
  flush(): Promise<void> {
    return this.writes
  }

  private sumDepth(stage: string): number {
    let depth = 0
    for (const run of this.active.values()) depth += run.stages.find((s) => s.stage === stage)?.queueDepth ?? 0
    return depth
  }

  private sample(force: boolean): void {
    if (this.failed || !this.header) return
    const t = Date.now()
    const last = this.points.at(-1)
    if (!force && last && t - last.t < this.step) return
    let rows = this.finished.rows
    let total = this.finished.total
    let shards = this.finished.shards
    let stages = this.finished.stages
    for (const run of this.active.values()) {
      rows += run.rows
      total += run.total
      shards += run.shards
      stages = addStages(stages, run.stages)
    }
    const counters: Record<string, StageCounters> = {}
    for (const s of stages) {
      const depth = Math.max(this.peaks.get(s.stage) ?? 0, this.sumDepth(s.stage))
      counters[s.stage] = [s.recordsIn, s.recordsOut, s.errors, Math.round(s.busyMs * 10) / 10, depth, roundValues(s.extra)]
    }
    this.peaks.clear()
    const point: SeriesPoint = { type: 'point', t, rows, total, shards, rssMiB: Math.round(process.memoryUsage.rss() / 1024 / 1024), stages: counters }
    this.points.push(point)
    const first = this.points.length === 1
    if (this.points.length > this.maxPoints || first) {
      if (!first) {
        this.points = thin(this.points)
        this.step *= 2
      }
      // The file's whole text as of now: later points are appended after it.
      const text = [this.header, ...this.points].map((x) => JSON.stringify(x)).join('\n') + '\n'
      this.enqueue(() => this.rewrite(text))
    } else {
      const line = `${JSON.stringify(point)}\n`
      this.enqueue(() => this.append(line))
    }
  }

  private enqueue(op: () => Promise<void>): void {
    this.writes = this.writes.then(async () => {
      if (this.failed) return
      try {
        await op()
      } catch (error) {
        this.failed = true
        this.options.onError?.(error)
      }
    })
  }

  private async ensureDir(): Promise<void> {
    await mkdir(this.dir, { recursive: true })
    for (const path of [join(this.outDir, EVFLOW_DIR), this.dir]) {
      if ((await lstat(path)).isSymbolicLink()) throw new Error(`${path} is a symbolic link; not writing through it`)
    }
  }

  private async append(line: string): Promise<void> {
    // O_NOFOLLOW: a symbolic link planted at the file's name is refused, not followed.
    const handle = await open(this.file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o644)
    try {
      await handle.writeFile(line)
    } finally {
      await handle.close()
    }
  }

  private async rewrite(text: string): Promise<void> {
    await this.ensureDir()
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
    const handle = await open(tmp, 'wx')
    try {
      await handle.writeFile(text)
    } finally {
      await handle.close()
    }
    try {
      await rename(tmp, this.file)
    } catch (error) {
      await rm(tmp, { force: true })
      throw error
    }
  }

  /** Milliseconds between points now (doubles each time the file is thinned). */
  get stepMs(): number {
    return this.step
  }
}

/** A sink that forwards every call to each of `sinks`. */
export function teeProgress(...sinks: readonly (ProgressSink | undefined)[]): ProgressSink {
  const present = sinks.filter((s): s is ProgressSink => s !== undefined)
  return {
    start: (state, config) => present.forEach((s) => s.start?.(state, config)),
    update: (state) => present.forEach((s) => s.update?.(state)),
    shard: (commit) => present.forEach((s) => s.shard?.(commit)),
    finish: (summary) => present.forEach((s) => s.finish?.(summary)),
  }
}

function pipelineOf(config: unknown): string | null {
  const pipeline = (config as { pipeline?: unknown } | null | undefined)?.pipeline
  return typeof pipeline === 'string' ? pipeline : null
}

function roundValues(extra: Readonly<Record<string, number>>): Record<string, number> {
  return Object.fromEntries(Object.entries(extra).map(([k, v]) => [k, Math.round(v * 10) / 10]))
}

/** Stage snapshots summed by stage name (queue depths too). */
function addStages(a: readonly StageSnapshot[], b: readonly StageSnapshot[]): StageSnapshot[] {
  const byName = new Map<string, StageSnapshot>()
  for (const s of [...a, ...b]) {
    const prev = byName.get(s.stage)
    if (!prev) {
      byName.set(s.stage, { ...s, extra: { ...s.extra } })
      continue
    }
    const extra: Record<string, number> = { ...prev.extra }
    for (const [k, v] of Object.entries(s.extra)) extra[k] = (extra[k] ?? 0) + v
    byName.set(s.stage, {
      stage: s.stage,
      recordsIn: prev.recordsIn + s.recordsIn,
      recordsOut: prev.recordsOut + s.recordsOut,
      errors: prev.errors + s.errors,
      batches: prev.batches + s.batches,
      busyMs: prev.busyMs + s.busyMs,
      queueDepth: prev.queueDepth + s.queueDepth,
      maxQueueDepth: Math.max(prev.maxQueueDepth, s.maxQueueDepth),
      extra,
    })
  }
  return [...byName.values()]
}

/** Merges neighbouring pairs: the later point's counters, the larger queue depth of the two. */
function thin(points: readonly SeriesPoint[]): SeriesPoint[] {
  const out: SeriesPoint[] = []
  for (let i = 0; i < points.length; i += 2) {
    const a = points[i]
    const b = points[i + 1]
    if (!b) {
      out.push(a)
      continue
    }
    const stages: Record<string, StageCounters> = {}
    for (const [name, counters] of Object.entries(b.stages)) {
      const depth = Math.max(counters[4], a.stages[name]?.[4] ?? 0)
      stages[name] = [counters[0], counters[1], counters[2], counters[3], depth, counters[5]]
    }
    out.push({ ...b, rssMiB: Math.max(a.rssMiB, b.rssMiB), stages })
  }
  return out
}

// ------------------------------------------------------------------------------------------------ reading

/** Largest series file read (a recorder's files stay far below it). */
const MAX_SERIES_BYTES = 8 * 1024 * 1024

/**
 * The series files of an output folder, oldest first. Files that are not series (or too big, or links)
 * are skipped and named in `skipped`; lines that do not parse are dropped.
 */
export async function readSeries(outDir: string): Promise<{ files: SeriesFile[]; skipped: string[] }> {
  const dir = join(outDir, EVFLOW_DIR, SERIES_DIR)
  let names: string[]
  try {
    if ((await lstat(dir)).isSymbolicLink()) return { files: [], skipped: [dir] }
    names = (await readdir(dir)).filter((n) => n.endsWith('.jsonl')).sort()
  } catch {
    return { files: [], skipped: [] }
  }
  const files: SeriesFile[] = []
  const skipped: string[] = []
  for (const name of names) {
    const path = join(dir, name)
    try {
      const info = await lstat(path)
      if (!info.isFile() || info.size > MAX_SERIES_BYTES) {
        skipped.push(name)
        continue
      }
      const parsed = parseSeries(name, await readFile(path, 'utf8'))
      if (parsed) files.push(parsed)
      else skipped.push(name)
    } catch (error) {
      skipped.push(`${name} (${describeError(error)})`)
    }
  }
  files.sort((a, b) => a.header.startedAt.localeCompare(b.header.startedAt) || a.file.localeCompare(b.file))
  return { files, skipped }
}

function parseSeries(file: string, text: string): SeriesFile | undefined {
  let header: SeriesHeader | undefined
  const points: SeriesPoint[] = []
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      continue
    }
    if (!value || typeof value !== 'object') continue
    const v = value as Record<string, unknown>
    if (v.type === 'header' && v.format === SERIES_FORMAT && typeof v.startedAt === 'string' && header === undefined) header = value as SeriesHeader
    else if (v.type === 'point' && typeof v.t === 'number' && typeof v.rows === 'number' && v.stages && typeof v.stages === 'object') points.push(value as SeriesPoint)
  }
  if (!header) return undefined
  points.sort((a, b) => a.t - b.t)
  return { file, header, points }
}
