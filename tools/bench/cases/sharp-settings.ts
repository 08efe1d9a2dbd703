/**
 * `sharp settings 64px` (investigation): throughput of `readShards → decodeImages` 256px JPEG → 64px under
 * libuv thread pool sizes (`UV_THREADPOOL_SIZE`, one child process each), libvips threads per image
 * (`sharp.concurrency()`), images in flight (decodeImages `concurrency`) and the libvips operation cache.
 * Rounds interleave the child processes; each setting's figure is the median over rounds.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

import { ROWS } from '../inputs.js'
import { median, spread } from '../stats.js'
import type { BenchCase, CaseResult, Row } from '../types.js'
import type { DecodeSetting, DecodeSettingsJob } from '../workers/decode-settings.js'

const WORKER = fileURLToPath(new URL('../workers/decode-settings.js', import.meta.url))
const SIZE = 64
const LIMIT = 1_000
const MAX_ROUNDS = 5

const setting = (concurrency: number, sharpConcurrency = 1, cache = true): DecodeSetting => ({ sharpConcurrency, concurrency, cache })

/** The grid: images in flight at today's defaults, and the alternatives around the useful range. */
const GRID: readonly { uv: number; settings: DecodeSetting[] }[] = [
  {
    uv: 4,
    settings: [
      ...[1, 2, 4, 8, 16].map((c) => setting(c)),
      ...[2, 4].map((c) => setting(c, 2)),
      ...[2, 4].map((c) => setting(c, 1, false)),
    ],
  },
  { uv: 2, settings: [2, 4, 8].map((c) => setting(c)) },
  { uv: 8, settings: [4, 8].map((c) => setting(c)) },
]

interface Sample {
  setting: DecodeSetting
  images: number
  wallS: number
  cpuS: number
}

function runChild(uv: number, job: DecodeSettingsJob): Promise<Sample[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER, JSON.stringify(job)], {
      env: { ...process.env, UV_THREADPOOL_SIZE: String(uv) },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')))
    child.on('error', reject)
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`decode-settings worker exited with ${code}: ${stderr.slice(-1000)}`))
      else resolve(stdout.trim().split('\n').map((line) => JSON.parse(line) as Sample))
    })
  })
}

const label = (uv: number, s: DecodeSetting) => `uv=${uv} sharp=${s.sharpConcurrency} inflight=${s.concurrency}${s.cache ? '' : ' nocache'}`

export const sharpSettings: BenchCase = {
  name: 'sharp settings 64px',
  section: 'foundation',
  byDefault: false,
  description: 'readShards → decodeImages 256px JPEG → 64px under UV_THREADPOOL_SIZE × sharp.concurrency() × decodeImages concurrency × cache',
  async run(context): Promise<CaseResult> {
    const { file } = await context.inputs.shard(ROWS)
    const rounds = Math.min(context.settings.reps, MAX_ROUNDS)
    const samples = new Map<string, { uv: number; setting: DecodeSetting; rates: number[]; cpuMs: number[] }>()
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < GRID.length; i++) {
        const { uv, settings } = GRID[(round + i) % GRID.length]
        const rotated = settings.map((_, k) => settings[(k + round) % settings.length])
        for (const s of await runChild(uv, { file, size: SIZE, limit: LIMIT, settings: rotated })) {
          const key = label(uv, s.setting)
          const entry = samples.get(key) ?? { uv, setting: s.setting, rates: [], cpuMs: [] }
          entry.rates.push(s.images / s.wallS)
          entry.cpuMs.push((s.cpuS * 1000) / s.images)
          samples.set(key, entry)
        }
        context.log(`sharp settings round ${round + 1}/${rounds} uv=${uv} done`)
      }
    }
    const entries = GRID.flatMap(({ uv, settings }) => settings.map((s) => samples.get(label(uv, s))!))
    const base = samples.get(label(4, setting(2)))!
    const best = Math.max(...entries.map((e) => median(e.rates)))
    const rows: Row[] = entries.map((e) => ({
      UV_THREADPOOL_SIZE: e.uv,
      'sharp.concurrency': e.setting.sharpConcurrency,
      'decodeImages concurrency': e.setting.concurrency,
      cache: e.setting.cache ? 'on' : 'off',
      'images/s': spread(e.rates),
      'CPU ms/img': spread(e.cpuMs, 2),
      'vs default': spread(e.rates.map((r, i) => r / base.rates[i]), 2),
      'vs best': (median(e.rates) / best).toFixed(2),
    }))
    return {
      rows,
      notes: [
        `${LIMIT} rows of the 2,000-row shard per measurement, ${rounds} rounds; child processes interleaved per round, settings rotated within a child; median [min–max] over rounds. "vs default" = per-round ratio to uv=4 sharp=1 inflight=2 (today's defaults); ratios across child processes carry more noise than those within one.`,
        'Defaults today: UV_THREADPOOL_SIZE 4, sharp.concurrency() 1 (sharp\'s default on glibc Linux without jemalloc), decodeImages concurrency = cores (2), cache on.',
      ],
      settings: { size: SIZE, limit: LIMIT, rounds },
      raw: Object.fromEntries(samples),
    }
  },
}
