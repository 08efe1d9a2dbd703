/**
 * Issue 17: a seeded fuzz corpus of damaged Parquet files (see `fuzzCorpus` in hostile.ts: byte flips
 * anywhere, in footers and in page headers, truncations, cut chunks, footer-length edits, duplicated row
 * groups, inflated and zeroed `num_rows` up to 2^53, value counts, chunk offsets and sizes past the end,
 * codec swaps; plus a page that loops the decoder and one that bombs its memory), made from the fixture
 * shards and two freshly written ones, run through `runPipeline` in
 * this process, several files at once, with short read budgets (1.5 s, 64 MiB).
 *
 * Every file must end on its own (within 30 s), as exit 0 or 3 would (a committed shard, or a failed shard
 * reported as data; never a throw), with peak RSS under 600 MB (this process and its parser processes
 * together), and leave the output folder consistent: no
 * temp file, a completion record per output, and as many output rows as the plan accounted for. A few files
 * also go through the built CLI (`evflow scan`), which must print no stack trace.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parquetMetadata } from 'hyparquet'
import { parquetWriteBuffer } from 'hyparquet-writer'
import { identity } from 'rxjs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { z } from 'zod'

import type { PipelineDefinition } from '../../pipelines/definition.js'
import { runPipeline, type RunSummary } from '../../pipelines/run.js'
import { ParquetReader } from '../../src/parquet/reader.js'
import { planShards } from '../../src/parquet/shards.js'
import { runCli } from '../helpers/cli.js'
import * as img from '../helpers/images.js'
import { hfShardBuffer } from '../helpers/shards.js'
import { tempDir } from '../helpers/util.js'
import { fixture, fuzzCorpus, loopingShard, memoryBombShard, type Mutant } from './hostile.js'

/** Files of each kind of damage (11 kinds, plus 2 crafted files). */
const PER_KIND = 28
const SEED = 17
/** Files run at once. */
const PARALLEL = 4
const READ_TIMEOUT_MS = 1500
const READ_MEMORY_MB = 64

/** Reads and writes, nothing else: what the reader does with a file is what is tested. */
const readOnly: PipelineDefinition = {
  name: 'read',
  summary: 'read only',
  defaults: {},
  schema: z.object({}),
  flags: [],
  outputKeys: [],
  read: () => ({ keep: ['url'] }),
  stages: () => identity,
  columns: () => [],
}

interface Outcome {
  readonly mutant: Mutant
  readonly wallMs: number
  readonly summary?: RunSummary
  readonly crash?: string
  readonly problems: string[]
}

let dir: string
let cleanup: () => void
let corpus: Mutant[]
const outcomes: Outcome[] = []
let peakRssMiB = 0
let parserPeakMiB = 0
let timeouts = 0

beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-fuzz-'))
  const images = await Promise.all(Array.from({ length: 6 }, (_, i) => img.jpeg(16 + i, 12, i, 80)))
  const rows = 40
  const uncompressed = new Uint8Array(
    parquetWriteBuffer({
      columnData: [
        { name: 'id', data: Array.from({ length: rows }, (_, i) => ['a', 'b', 'c', 'd'][i % 4] + String(i % 7)), type: 'STRING' },
        { name: 'image', data: Array.from({ length: rows }, (_, i) => (i % 9 === 4 ? null : images[i % images.length])), type: 'BYTE_ARRAY' },
        { name: 'url', data: Array.from({ length: rows }, (_, i) => `u${i % 3}`), type: 'STRING' },
      ],
      codec: 'UNCOMPRESSED',
      rowGroupSize: 10,
      createdBy: 'evflow-test',
    }),
  )
  const hf = new Uint8Array(hfShardBuffer(Array.from({ length: 12 }, (_, i) => ({ id: `h${i}`, bytes: i === 5 ? null : images[i % images.length], path: `p${i}.jpg` })), 5))
  const bases = [
    { name: 'p0', bytes: fixture('part-00000.parquet') },
    { name: 'p1', bytes: fixture('part-00001.parquet') },
    { name: 'p2', bytes: fixture('part-00002.parquet') },
    { name: 'plain', bytes: uncompressed },
    { name: 'hf', bytes: hf },
  ]
  // Damage that passes every header check and reaches the page decoder: a loop and a memory bomb.
  const crafted: Mutant[] = [
    { name: 'crafted-loop', kind: 'crafted', bytes: loopingShard(images) },
    { name: 'crafted-bomb', kind: 'crafted', bytes: memoryBombShard(images) },
  ]
  corpus = [...fuzzCorpus(bases, PER_KIND, SEED), ...crafted]
  mkdirSync(join(dir, 'in'), { recursive: true })
  for (const m of corpus) writeFileSync(join(dir, 'in', `${m.name}.parquet`), m.bytes)

  // Peak resident memory while the corpus runs: this process plus its parser processes, sampled together
  // (Linux /proc; elsewhere this process only), and each parser's own peak as it reported it.
  const reader = new ParquetReader({ parsers: 2, readTimeoutMs: READ_TIMEOUT_MS, readMemoryMb: READ_MEMORY_MB })
  const rssOf = (pid: number) => {
    try {
      return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024
    } catch {
      return 0
    }
  }
  let sampled = process.memoryUsage.rss()
  const sampler = setInterval(() => {
    sampled = Math.max(sampled, process.memoryUsage.rss() + reader.pids.reduce((n, pid) => n + rssOf(pid), 0))
  }, 10)
  try {
    let next = 0
    const lane = async () => {
      while (next < corpus.length) {
        const mutant = corpus[next++]
        outcomes.push(await runOne(mutant, reader))
      }
    }
    await Promise.all(Array.from({ length: PARALLEL }, lane))
    timeouts = reader.incidents.filter((i) => i.reason === 'timeout').length
  } finally {
    clearInterval(sampler)
    await reader.close()
  }
  peakRssMiB = Math.round(sampled / 1024 / 1024)
  parserPeakMiB = reader.peakParserRssMiB
}, 600_000)

afterAll(() => cleanup?.())

async function runOne(mutant: Mutant, reader: ParquetReader): Promise<Outcome> {
  const input = join(dir, 'in', `${mutant.name}.parquet`)
  const out = join(dir, 'out', mutant.name)
  const started = performance.now()
  let summary: RunSummary
  try {
    summary = await runPipeline(readOnly, {}, { inputs: [input], outDir: out, reader })
  } catch (error) {
    return { mutant, wallMs: performance.now() - started, crash: (error as Error).stack ?? String(error), problems: [] }
  }
  const wallMs = performance.now() - started
  const problems: string[] = []
  const tmp = readdirSync(join(out, '_evflow', 'tmp'))
  if (tmp.length > 0) problems.push(`temp files left: ${tmp.join(', ')}`)
  const outputs = readdirSync(out).filter((f) => f.endsWith('.parquet'))
  const records = readdirSync(join(out, '_evflow', 'commits'))
  if (outputs.length + summary.shards.failed !== 1) problems.push(`${outputs.length} outputs and ${summary.shards.failed} failed shards for one input`)
  for (const file of outputs) {
    const recordFile = file.replace(/\.parquet$/, '.json')
    if (!records.includes(recordFile)) {
      problems.push(`${file} has no completion record`)
      continue
    }
    const record = JSON.parse(readFileSync(join(out, '_evflow', 'commits', recordFile), 'utf8')) as { rowsIn: number; rowsOk: number; rowsError: number }
    const written = readFileSync(join(out, file))
    const rows = Number(parquetMetadata(written.buffer.slice(written.byteOffset, written.byteOffset + written.byteLength)).num_rows)
    const [planned] = await planShards([input], { keep: ['url'], reader })
    const accounted = planned.plan.ok ? planned.plan.info.rows : -1
    if (rows !== record.rowsIn || rows !== accounted || record.rowsOk + record.rowsError !== rows) {
      problems.push(`output rows ${rows}, record ${record.rowsIn} (${record.rowsOk} ok + ${record.rowsError} error), plan ${accounted}`)
    }
  }
  return { mutant, wallMs, summary, problems }
}

describe('fuzz corpus (seeded)', () => {
  it(`every file ends on its own, as exit 0 or 3, within budget, with a consistent output folder`, () => {
    expect(corpus.length).toBeGreaterThanOrEqual(300)
    expect(outcomes).toHaveLength(corpus.length)
    const crashes = outcomes.filter((o) => o.crash)
    const committed = outcomes.filter((o) => o.summary && o.summary.shards.committed === 1)
    const clean = outcomes.filter((o) => o.summary && o.summary.shards.failed === 1)
    const rowErrors = committed.filter((o) => (o.summary!.errorsByCode['shard-read'] ?? 0) > 0)
    const maxWall = Math.max(...outcomes.map((o) => o.wallMs))
    const line = {
      files: outcomes.length,
      ok: committed.length - rowErrors.length,
      'committed with shard-read rows': rowErrors.length,
      'failed shards (exit 3)': clean.length,
      'row groups timed out': timeouts,
      crashes: crashes.length,
      'max RSS MiB (evflow + parsers)': peakRssMiB,
      'max RSS MiB (one parser)': parserPeakMiB,
      'max wall ms': Math.round(maxWall),
    }
    console.log(`fuzz corpus (seed ${SEED}, read timeout ${READ_TIMEOUT_MS} ms, read memory ${READ_MEMORY_MB} MiB): ${JSON.stringify(line)}`)
    expect(crashes.map((o) => `${o.mutant.name}: ${o.crash}`)).toEqual([])
    expect(outcomes.flatMap((o) => o.problems.map((p) => `${o.mutant.name}: ${p}`))).toEqual([])
    expect(committed.length + clean.length).toBe(outcomes.length)
    expect(maxWall).toBeLessThan(30_000)
    expect(peakRssMiB).toBeLessThan(600)
  })

  it('covers every kind of damage, and damage shows: some shards fail, some row groups are counted as errors', () => {
    const kinds = new Set(outcomes.map((o) => o.mutant.kind))
    expect(kinds.size).toBe(12)
    expect(outcomes.some((o) => o.summary?.shards.failed === 1)).toBe(true)
    expect(outcomes.some((o) => (o.summary?.errorsByCode['shard-read'] ?? 0) > 0)).toBe(true)
    expect(timeouts).toBeGreaterThanOrEqual(1)
  })

  it('a few files through the CLI: exit 0 or 3, one clear line, no stack trace', () => {
    const kinds = ['flip-page-header', 'num-rows', 'truncate', 'codec', 'chunk-range', 'cut-chunk']
    for (const kind of kinds) {
      const mutant = corpus.find((m) => m.kind === kind)!
      const out = join(dir, 'cli', mutant.name)
      const started = Date.now()
      const result = runCli(['scan', join(dir, 'in', `${mutant.name}.parquet`), '-o', out, '--read-timeout', '2', '--json'], { timeoutMs: 30_000 })
      expect(Date.now() - started, mutant.name).toBeLessThan(30_000)
      expect([0, 3], `${mutant.name}: ${result.stderr}`).toContain(result.code)
      expect(result.stderr, mutant.name).not.toMatch(/\n\s+at /)
      const summary = JSON.parse(readFileSync(join(out, '_evflow', 'summary.json'), 'utf8')) as RunSummary
      expect(summary.peakRssMiB, mutant.name).toBeLessThan(600)
    }
  })
})
