/**
 * Memory does not grow with the dataset: a 20,000-row shard scans with at most `--max-in-flight` rows in
 * flight and a peak RSS close to a 2,000-row scan's (asserted loosely here; the benchmark measures it).
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { writeJpegShards } from '../helpers/big-shards.js'
import { runCli } from '../helpers/cli.js'
import { tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-mem-')))
afterAll(() => cleanup())

function scan(rows: number): { peakRssMiB: number; inFlightPeakRecords: number; rows: { in: number } } {
  const input = join(dir, `in-${rows}`)
  const out = join(dir, `out-${rows}`)
  const result = runCli(['scan', input, '-o', out, '--max-in-flight', '256', '--size', '32'], { timeoutMs: 240_000 })
  expect(result.code).toBe(0)
  return JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8'))
}

describe('bounded memory', () => {
  it('scans 20,000 rows with bounded rows in flight and RSS near a 2,000-row scan', async () => {
    await writeJpegShards(join(dir, 'in-2000'), 1, 2000, { size: 64, distinct: 32, rowGroupSize: 500 })
    await writeJpegShards(join(dir, 'in-20000'), 1, 20000, { size: 64, distinct: 32, rowGroupSize: 500 })
    const small = scan(2000)
    const large = scan(20000)
    expect(large.rows.in).toBe(20000)
    expect(large.inFlightPeakRecords).toBeLessThanOrEqual(256)
    expect(large.peakRssMiB).toBeLessThan(small.peakRssMiB * 1.5 + 50)
  }, 300_000)
})
