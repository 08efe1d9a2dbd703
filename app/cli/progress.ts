/**
 * Progress for the CLI: a bar on a terminal (stderr); without one, a short line every few seconds
 * (stderr); with `--json`, JSON lines (stdout, one event a line: `start`, `progress`, `shard`, `summary`);
 * and the time series a run records for `evflow report`.
 */
import cliProgress from 'cli-progress'

import type { ShardCommit } from '../../operators/write-shards.js'
import type { ProgressSink, ProgressState, RunSummary } from '../../pipelines/run.js'
import { describeError } from '../../src/errors.js'
import { SeriesRecorder, type TrackedRun } from '../report/series.js'

export { teeProgress } from '../report/series.js'

function formatRate(n: number): string {
  return n >= 100 ? n.toFixed(0) : n.toFixed(1)
}

/** Seconds as `42s`, `3m05s`, `2h07m`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

/** The time left at the rate so far; `--` until a row is done (never NaN or infinite). */
export function formatEta(state: Pick<ProgressState, 'rowsTotal' | 'rowsDone' | 'rowsPerS'>): string {
  if (state.rowsDone >= state.rowsTotal) return '0s'
  if (state.rowsDone <= 0 || !(state.rowsPerS > 0)) return '--'
  return formatDuration((state.rowsTotal - state.rowsDone) / state.rowsPerS)
}

/** A progress sink the CLI must close when the run ends, however it ends (a bar holds a timer). */
export interface ClosableProgress extends ProgressSink {
  close(): void
}

export function jsonProgress(write: (line: string) => void): ProgressSink {
  const line = (event: string, body: object) => write(`${JSON.stringify({ event, time: new Date().toISOString(), ...body })}\n`)
  return {
    start: (state, config) => line('start', { config, rowsTotal: state.rowsTotal, shardsTotal: state.shardsTotal, shardsSkipped: state.shardsSkipped }),
    update: (state) => line('progress', { ...state, rowsPerS: Math.round(state.rowsPerS * 10) / 10 }),
    shard: (commit) => line('shard', commit),
    finish: (summary) => line('summary', summary),
  }
}

/**
 * Without a terminal and without `--json`: a line when the run starts, one every `everyMs` while it runs
 * (`caption: 128/512 rows (25%) · 41.2 rows/s · ETA 9s · shards 0/1`), and a line per failed shard; the
 * summary is printed by the caller. Quiet enough for CI logs.
 */
export function lineProgress(pipeline: string, write: (line: string) => void, everyMs = 10_000): ClosableProgress {
  let last = Date.now()
  return {
    start: (state) => {
      const skipped = state.shardsSkipped > 0 ? `; ${state.shardsSkipped} already committed, skipped (--overwrite redoes them)` : ''
      write(`${pipeline}: ${state.shardsTotal} shard(s), ${state.rowsTotal} row(s) to do${skipped}\n`)
    },
    update: (state) => {
      const now = Date.now()
      if (now - last < everyMs || state.rowsDone >= state.rowsTotal) return
      last = now
      const percent = state.rowsTotal > 0 ? Math.floor((100 * state.rowsDone) / state.rowsTotal) : 100
      write(`${pipeline}: ${state.rowsDone}/${state.rowsTotal} rows (${percent}%) · ${formatRate(state.rowsPerS)} rows/s · ETA ${formatEta(state)} · shards ${state.shardsDone + state.shardsSkipped}/${state.shardsTotal}\n`)
    },
    shard: (commit: ShardCommit) => {
      if (commit.status === 'failed') write(`${pipeline}: shard ${commit.shard} failed: ${commit.error}\n`)
    },
    close: () => {},
  }
}

export function terminalProgress(pipeline: string, stream: NodeJS.WriteStream = process.stderr): ClosableProgress {
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${pipeline} {bar} {percentage}% | {value}/{total} rows | {rate} rows/s | ETA {etaText} | shards {shards}`,
      hideCursor: true,
      clearOnComplete: true,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  )
  let started = false
  const payload = (s: ProgressState) => ({
    rate: formatRate(s.rowsPerS),
    etaText: formatEta(s),
    shards: `${s.shardsDone + s.shardsSkipped}/${s.shardsTotal}`,
  })
  return {
    start: (state) => {
      if (state.shardsSkipped > 0) stream.write(`${pipeline}: ${state.shardsSkipped} shard(s) already committed, skipped (--overwrite redoes them)\n`)
      bar.start(state.rowsTotal, 0, payload(state))
      started = true
    },
    update: (state) => {
      if (started) bar.update(state.rowsDone, payload(state))
    },
    shard: (commit: ShardCommit) => {
      if (commit.status === 'failed') {
        bar.stop()
        stream.write(`${pipeline}: shard ${commit.shard} failed: ${commit.error}\n`)
        started = false
      }
    },
    finish: () => {
      bar.stop()
      started = false
    },
    close: () => {
      if (started) bar.stop()
      started = false
    },
  }
}

/**
 * Records the run's time series for `evflow report` in `<outDir>/_evflow/series/` (see `app/report/series.ts`):
 * a progress sink to combine with the display sink (`teeProgress`); call `done()` when the run ends. A write
 * failure prints one warning and never stops the run.
 */
export function recordSeries(outDir: string): TrackedRun {
  const recorder = new SeriesRecorder(outDir, {
    source: 'run',
    onError: (error) => process.stderr.write(`evflow: warning: the run's time series is not recorded: ${describeError(error)}\n`),
  })
  return recorder.track()
}

/** The three-line human summary printed at the end of a run. */
export function formatSummary(summary: RunSummary): string {
  const { shards, rows } = summary
  const codes = Object.entries(summary.errorsByCode)
    .sort(([codeA, a], [codeB, b]) => b - a || codeA.localeCompare(codeB))
    .map(([code, n]) => `${code} ${n}`)
    .join(', ')
  const lines = [
    `${summary.pipeline}: ${shards.total} shard(s): ${shards.committed} committed, ${shards.skipped} skipped, ${shards.failed} failed`,
    `rows: ${rows.in} in, ${rows.ok} ok, ${rows.error} error${codes ? ` (${codes})` : ''} · ${formatRate(summary.rowsPerS)} rows/s in ${summary.durationS.toFixed(1)} s`,
    // a run that found every shard committed keeps the previous summary and writes its own beside it
    `output: ${summary.outDir} (summary: ${summary.outDir.replace(/\/$/, '')}/_evflow/${shards.total > 0 && shards.skipped === shards.total ? 'summary.skipped.json' : 'summary.json'})`,
  ]
  if (summary.setAside.shards.length > 0) {
    lines.push(`set aside: ${summary.setAside.shards.length} output(s) not in this plan (other inputs, rows or config) in ${summary.setAside.folder}`)
  }
  for (const failed of summary.failedShards) lines.push(`failed: ${failed.shard}: ${failed.error}`)
  return `${lines.join('\n')}\n`
}
