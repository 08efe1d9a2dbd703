/**
 * Progress for the CLI: a bar on a terminal (stderr), JSON lines otherwise (stdout, one event a line:
 * `start`, `progress`, `shard`, `summary`); and the time series a run records for `evflow report`.
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

export function jsonProgress(write: (line: string) => void): ProgressSink {
  const line = (event: string, body: object) => write(`${JSON.stringify({ event, time: new Date().toISOString(), ...body })}\n`)
  return {
    start: (state, config) => line('start', { config, rowsTotal: state.rowsTotal, shardsTotal: state.shardsTotal, shardsSkipped: state.shardsSkipped }),
    update: (state) => line('progress', { ...state, rowsPerS: Math.round(state.rowsPerS * 10) / 10 }),
    shard: (commit) => line('shard', commit),
    finish: (summary) => line('summary', summary),
  }
}

export function terminalProgress(pipeline: string, stream: NodeJS.WriteStream = process.stderr): ProgressSink {
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${pipeline} {bar} {percentage}% | {value}/{total} rows | {rate} rows/s | ETA {eta_formatted} | shards {shards}`,
      hideCursor: true,
      clearOnComplete: true,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  )
  let started = false
  const payload = (s: ProgressState) => ({
    rate: formatRate(s.rowsPerS),
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
    `output: ${summary.outDir} (summary: ${summary.outDir.replace(/\/$/, '')}/_evflow/summary.json)`,
  ]
  if (summary.setAside.shards.length > 0) {
    lines.push(`set aside: ${summary.setAside.shards.length} output(s) not in this plan (other inputs, rows or config) in ${summary.setAside.folder}`)
  }
  for (const failed of summary.failedShards) lines.push(`failed: ${failed.shard}: ${failed.error}`)
  return `${lines.join('\n')}\n`
}
