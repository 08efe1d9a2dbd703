/**
 * "Where time went", from the series files the runs recorded (`series.ts`), the completion records and the
 * last run's summary: busy time per stage, throughput and queue depths over time (per process when several
 * wrote the folder), memory, expert load and shards committed over time.
 */
import type { RunSummary } from '../../pipelines/run.js'
import type { StageSnapshot } from '../../src/engine/metrics.js'
import { PALETTE, type Bar, type LineSeries } from './charts.js'
import type { CommittedShard } from './read-output.js'
import type { SeriesFile, SeriesPoint } from './series.js'

export interface SourceRow {
  readonly name: string
  readonly source: 'run' | 'worker'
  readonly host: string
  readonly machine: string
  readonly startedAt: string
  readonly durationS: number
  readonly rows: number
  readonly rowsPerS: number
  readonly peakRssMiB: number
}

export interface TimingView {
  /** Seconds from `origin` (ms since the epoch) on every x axis. */
  readonly origin: number
  /** Seconds from `origin` to the last recorded point or commit: the x range of every chart. */
  readonly span: number
  readonly stageBusy: readonly Bar[]
  readonly throughput: readonly LineSeries[]
  readonly tokens: readonly LineSeries[]
  readonly queueDepth: readonly LineSeries[]
  readonly rss: readonly LineSeries[]
  readonly experts: readonly Bar[]
  readonly commits: LineSeries
  readonly sources: readonly SourceRow[]
  /** Seconds during which at least one process was writing (the union of the processes' spans). */
  readonly activeS: number | null
  /** Rows written by the recorded processes. */
  readonly recordedRows: number
  readonly peakRssMiB: number | null
}

const BINS = 100

/** The cumulative value of `get` at time `t`, linear between points, 0 before the series started. */
function cumulativeAt(start: number, points: readonly SeriesPoint[], get: (p: SeriesPoint) => number, t: number): number {
  if (points.length === 0 || t <= start) return 0
  let prevT = start
  let prevV = 0
  for (const p of points) {
    if (t <= p.t) {
      const span = p.t - prevT
      return span > 0 ? prevV + ((get(p) - prevV) * (t - prevT)) / span : get(p)
    }
    prevT = p.t
    prevV = get(p)
  }
  return prevV
}

/** Rate per second of a cumulative counter, in `BINS` equal bins of [t0, t1], summed over `files`. */
function rate(files: readonly SeriesFile[], get: (p: SeriesPoint) => number, t0: number, t1: number, origin: number): [number, number][] {
  const width = (t1 - t0) / BINS
  if (!(width > 0)) return []
  const out: [number, number][] = []
  for (let b = 0; b < BINS; b++) {
    const a = t0 + b * width
    const z = a + width
    let delta = 0
    for (const f of files) {
      const start = Date.parse(f.header.startedAt)
      delta += cumulativeAt(start, f.points, get, z) - cumulativeAt(start, f.points, get, a)
    }
    out.push([(a + width / 2 - origin) / 1000, Math.max(0, delta / (width / 1000))])
  }
  return out
}

/** The largest value of `get` at each bin (points inside it, else the last before it), summed over files. */
function level(files: readonly SeriesFile[], get: (p: SeriesPoint) => number, t0: number, t1: number, origin: number): [number, number][] {
  const width = (t1 - t0) / BINS
  if (!(width > 0)) return []
  const out: [number, number][] = []
  for (let b = 0; b < BINS; b++) {
    const a = t0 + b * width
    const z = a + width
    let sum = 0
    for (const f of files) {
      const last = f.points.at(-1)
      if (!last || a > last.t || z < Date.parse(f.header.startedAt)) continue
      let v = 0
      let before: SeriesPoint | undefined
      for (const p of f.points) {
        if (p.t < a) before = p
        else if (p.t < z) v = Math.max(v, get(p))
      }
      if (v === 0 && before) v = get(before)
      sum += v
    }
    out.push([(a + width / 2 - origin) / 1000, sum])
  }
  return out
}

const label = (f: SeriesFile) => `${f.header.source === 'worker' ? 'worker' : 'run'} ${f.header.name}${f.header.source === 'run' ? ` at ${f.header.startedAt.slice(0, 19).replace('T', ' ')}` : ''}`

export function machineText(m: SeriesFile['header']['machine']): string {
  return `${m.host}: ${m.cpus} × ${m.cpuModel}, ${(m.memoryMiB / 1024).toFixed(0)} GiB, ${m.platform} ${m.arch}, Node ${m.node}`
}

/** Totals of the last point of each file, by stage. */
function finalStages(files: readonly SeriesFile[]): Map<string, { busyMs: number; extra: Record<string, number> }> {
  const totals = new Map<string, { busyMs: number; extra: Record<string, number> }>()
  for (const f of files) {
    const last = f.points.at(-1)
    if (!last) continue
    for (const [stage, c] of Object.entries(last.stages)) {
      const t = totals.get(stage) ?? { busyMs: 0, extra: {} }
      t.busyMs += c[3]
      for (const [k, v] of Object.entries(c[5] ?? {})) t.extra[k] = (t.extra[k] ?? 0) + v
      totals.set(stage, t)
    }
  }
  return totals
}

function fromSummary(stages: readonly StageSnapshot[]): Map<string, { busyMs: number; extra: Record<string, number> }> {
  return new Map(stages.map((s) => [s.stage, { busyMs: s.busyMs, extra: { ...s.extra } }]))
}

/** Builds the timing view. `summary` is the folder's `summary.json` (the last local run), if any. */
export function timingView(files: readonly SeriesFile[], shards: readonly CommittedShard[], summary: RunSummary | null): TimingView {
  const recorded = files.filter((f) => f.points.length > 0)
  const commitTimes = shards.map((s) => Date.parse(s.record.committedAt)).filter((t) => Number.isFinite(t)).sort((a, b) => a - b)
  const starts = recorded.map((f) => Date.parse(f.header.startedAt))
  const ends = recorded.map((f) => f.points.at(-1)!.t)
  const summaryStart = summary ? Date.parse(summary.startedAt) : NaN
  const origin = Math.min(...starts, ...(commitTimes.length > 0 ? [commitTimes[0]] : []), ...(Number.isFinite(summaryStart) ? [summaryStart] : []))
  const t0 = starts.length > 0 ? Math.min(...starts) : origin
  const t1 = ends.length > 0 ? Math.max(...ends) : t0

  const stageTotals = recorded.length > 0 ? finalStages(recorded) : fromSummary(summary?.stages ?? [])
  const stageBusy = [...stageTotals.entries()]
    .filter(([, t]) => t.busyMs > 0)
    .map(([stage, t]) => ({ label: stage, value: t.busyMs / 1000, note: `${(t.busyMs / 1000).toFixed(1)} s` }))
  const expertCounts = Object.entries(stageTotals.get('routeToExperts')?.extra ?? {})
    .filter(([k]) => /^expert_\d+$/.test(k))
    .map(([k, v]) => ({ expert: Number(k.slice(7)), count: v }))
    .sort((a, b) => a.expert - b.expert)
  const expertTotal = expertCounts.reduce((n, e) => n + e.count, 0)
  const experts = expertCounts.map((e) => ({ label: `expert ${e.expert}`, value: e.count, note: `${e.count} (${expertTotal > 0 ? ((100 * e.count) / expertTotal).toFixed(1) : '0'}%)` }))

  // Rows that reached the writer (written rows only grow a row group at a time).
  const finished = (p: SeriesPoint) => Math.max(p.rows, p.stages.writeShards?.[0] ?? 0)
  // One colour per process in every chart; the first colour for the sum of all.
  const colour = (i: number) => PALETTE[(i + (recorded.length > 1 ? 1 : 0)) % PALETTE.length]
  const throughput: LineSeries[] = []
  if (recorded.length > 1) throughput.push({ name: 'all processes', colour: PALETTE[0], points: rate(recorded, finished, t0, t1, origin) })
  for (const [i, f] of recorded.entries()) throughput.push({ name: label(f), colour: colour(i), points: rate([f], finished, t0, t1, origin) })
  const tokenGet = (p: SeriesPoint) => p.stages.decodeText?.[5]?.tokens ?? 0
  const hasTokens = recorded.some((f) => tokenGet(f.points.at(-1)!) > 0)
  const tokens = hasTokens ? [{ name: '', points: rate(recorded, tokenGet, t0, t1, origin) }] : []
  const stageNames = [...new Set(recorded.flatMap((f) => Object.keys(f.points.at(-1)!.stages)))].filter((s) => s !== 'readShards')
  const queueDepth = stageNames
    .map((stage) => ({ name: stage, points: level(recorded, (p) => p.stages[stage]?.[4] ?? 0, t0, t1, origin) }))
    .filter((s) => s.points.some(([, y]) => y > 0))
  const rss = recorded.map((f, i) => ({ name: label(f), colour: colour(i), points: f.points.map((p) => [(p.t - origin) / 1000, p.rssMiB] as [number, number]) }))

  const step = Math.max(1, Math.ceil(commitTimes.length / 400))
  const commitPoints: [number, number][] = commitTimes.length > 0 && Number.isFinite(origin) && commitTimes[0] > origin ? [[0, 0]] : []
  for (let i = 0; i < commitTimes.length; i += step) commitPoints.push([(commitTimes[i] - origin) / 1000, i + 1])
  if (commitTimes.length > 0 && commitPoints.at(-1)![1] !== commitTimes.length) commitPoints.push([(commitTimes.at(-1)! - origin) / 1000, commitTimes.length])

  const sources: SourceRow[] = recorded.map((f) => {
    const start = Date.parse(f.header.startedAt)
    const last = f.points.at(-1)!
    const durationS = Math.max(0, (last.t - start) / 1000)
    return {
      name: f.header.name,
      source: f.header.source,
      host: f.header.machine.host,
      machine: machineText(f.header.machine),
      startedAt: f.header.startedAt,
      durationS,
      rows: last.rows,
      rowsPerS: durationS > 0 ? last.rows / durationS : 0,
      peakRssMiB: Math.max(...f.points.map((p) => p.rssMiB)),
    }
  })

  // The union of the processes' [start, end] spans.
  const spans = recorded.map((f, i) => [starts[i], ends[i]] as const).sort((a, b) => a[0] - b[0])
  let activeMs = 0
  let cursor = -Infinity
  for (const [a, z] of spans) {
    const from = Math.max(a, cursor)
    if (z > from) activeMs += z - from
    cursor = Math.max(cursor, z)
  }
  const peaks = [...sources.map((s) => s.peakRssMiB), ...(summary ? [summary.peakRssMiB] : [])]
  return {
    origin: Number.isFinite(origin) ? origin : Date.now(),
    span: Number.isFinite(origin) ? Math.max(t1, commitTimes.at(-1) ?? t1) / 1000 - origin / 1000 : 0,
    stageBusy,
    throughput,
    tokens,
    queueDepth,
    rss,
    experts,
    commits: { name: '', points: commitPoints },
    sources,
    activeS: recorded.length > 0 ? activeMs / 1000 : null,
    recordedRows: sources.reduce((n, s) => n + s.rows, 0),
    peakRssMiB: peaks.length > 0 ? Math.max(...peaks) : null,
  }
}
