/**
 * The CLI's progress display: a bar on a terminal whose ETA is never NaN or "NF", a short line every few
 * seconds without a terminal (quiet CI logs), and a bar that stops when the run ends however it ends.
 */
import { Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'

import { formatDuration, formatEta, lineProgress, terminalProgress } from '../../../app/cli/progress.js'
import type { ProgressState } from '../../../pipelines/run.js'

const state = (rowsDone: number, rowsTotal: number, rowsPerS: number, extra: Partial<ProgressState> = {}): ProgressState => ({
  rowsTotal,
  rowsDone,
  shardsTotal: 2,
  shardsDone: 0,
  shardsSkipped: 0,
  elapsedS: rowsPerS > 0 ? rowsDone / rowsPerS : 0,
  rowsPerS,
  stages: [],
  ...extra,
})

/** A stream that looks like a terminal to cli-progress and keeps what is written. */
function fakeTerminal(): { stream: NodeJS.WriteStream; text: () => string } {
  let written = ''
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      written += chunk.toString()
      done()
    },
  }) as unknown as NodeJS.WriteStream & Record<string, unknown>
  Object.assign(stream, { isTTY: true, columns: 160, cursorTo: () => true, clearLine: () => true, moveCursor: () => true, clearScreenDown: () => true })
  return { stream, text: () => written }
}

describe('progress', () => {
  it('formats the ETA from the rate so far, "--" until a row is done', () => {
    expect(formatEta(state(0, 100, 0))).toBe('--')
    expect(formatEta(state(0, 100, Number.NaN))).toBe('--')
    expect(formatEta(state(50, 100, 10))).toBe('5s')
    expect(formatEta(state(100, 100, 10))).toBe('0s')
    expect([formatDuration(59.4), formatDuration(125), formatDuration(7260)]).toEqual(['59s', '2m05s', '2h01m'])
  })

  it('the bar on a terminal starts at "ETA --" (not NaN, not NF) and stops when closed', async () => {
    const { stream, text } = fakeTerminal()
    const bar = terminalProgress('caption', stream)
    bar.start!(state(0, 512, 0), {})
    bar.update!(state(0, 512, 0))
    await new Promise((r) => setTimeout(r, 250))
    expect(text()).toMatch(/ETA -- \| shards 0\/2/)
    expect(text()).not.toMatch(/NaN|NF|Infinity/)
    bar.close()
    const after = text().length
    await new Promise((r) => setTimeout(r, 400))
    expect(text().length).toBe(after) // no timer left redrawing it
  })

  it('without a terminal: a start line, then at most one short line per interval, failed shards at once', () => {
    const lines: string[] = []
    let now = 1_000_000
    const realNow = Date.now
    Date.now = () => now
    try {
      const sink = lineProgress('caption', (l) => lines.push(l), 10_000)
      sink.start!(state(0, 512, 0, { shardsSkipped: 1, shardsTotal: 3 }), {})
      for (let t = 1; t <= 25; t++) {
        now += 1000
        sink.update!(state(t * 10, 512, 10))
      }
      sink.shard!({ status: 'failed', shard: 'part-1', input: 'in/part-1.parquet', error: 'not Parquet' } as never)
      sink.update!(state(512, 512, 10))
    } finally {
      Date.now = realNow
    }
    expect(lines).toEqual([
      'caption: 3 shard(s), 512 row(s) to do; 1 already committed, skipped (--overwrite redoes them)\n',
      'caption: 100/512 rows (19%) · 10.0 rows/s · ETA 41s · shards 0/2\n',
      'caption: 200/512 rows (39%) · 10.0 rows/s · ETA 31s · shards 0/2\n',
      'caption: shard part-1 failed: not Parquet\n',
    ])
  })
})
