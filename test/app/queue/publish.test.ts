/**
 * The exactly-once half of distributed mode, without Redis: planning jobs, running one shard job, and
 * publishing through the shard store (first commit wins, duplicates discarded, never two files).
 */
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { scanDefaults, scanPipeline } from '../../../pipelines/scan.js'
import { runPipeline } from '../../../pipelines/run.js'
import type { PipelineDefinition } from '../../../pipelines/definition.js'
import { PipelineConfigError, RunInterruptedError, ShardReadError } from '../../../src/errors.js'
import { outputLayout, type CompletionRecord } from '../../../src/parquet/commit.js'
import { shardJobId } from '../../../app/queue/job.js'
import { runShardJob } from '../../../app/queue/run-shard.js'
import { FileShardStore, type Staging } from '../../../app/queue/store.js'
import { planJobs } from '../../../app/queue/submit.js'
import { tempDir } from '../../helpers/util.js'
import { parquetFiles, readOutput, sha256, writeImageShards, writePoisonShard } from './fixtures.js'

const scan = scanPipeline as unknown as PipelineDefinition
const config = Object.freeze({ ...scanDefaults, concurrency: 2 })

let dir: string
let cleanup: () => void
let input: string
beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-publish-'))
  input = join(dir, 'in')
  await writeImageShards(input, 3, 30, { rowGroupSize: 10 })
})
afterAll(() => cleanup())

/** A staging folder holding `bytes` as shard `name`, committed there as a run would. */
async function stageBytes(store: FileShardStore, name: string, bytes: Buffer, fingerprint = 'f1', configHash = 'h1'): Promise<Staging> {
  const staging = await store.stage(name, 'test')
  const layout = outputLayout(staging.dir)
  mkdirSync(layout.commitsDir, { recursive: true })
  writeFileSync(layout.shard(name), bytes)
  const record: CompletionRecord = {
    version: 1,
    shard: name,
    input: '/in.parquet',
    rowStart: 0,
    rowEnd: 1,
    rowsIn: 1,
    rowsOk: 1,
    rowsError: 0,
    inputFingerprint: fingerprint,
    configHash,
    output: `${name}.parquet`,
    outputBytes: bytes.length,
    outputSha256: createHash('sha256').update(bytes).digest('hex'),
    committedAt: new Date().toISOString(),
  }
  writeFileSync(layout.commit(name), JSON.stringify(record))
  return staging
}

describe('FileShardStore', () => {
  it('publishes a staged shard: the file under its final name, then its completion record; staging removed', async () => {
    const out = join(dir, 'store-1')
    const store = new FileShardStore(out)
    const staging = await stageBytes(store, 'a', Buffer.from('first'))
    const result = await store.publish(staging)
    expect(result.status).toBe('committed')
    expect(readFileSync(join(out, 'a.parquet'), 'utf8')).toBe('first')
    expect(await store.committed('a', 'f1', 'h1')).toMatchObject({ shard: 'a', outputBytes: 5 })
    expect(await store.committed('a', 'f2', 'h1')).toBeUndefined()
    expect(await store.committed('a', 'f1', 'h2')).toBeUndefined()
    expect(existsSync(staging.dir)).toBe(false)
  })

  it('discards a late duplicate: the committed file and record are never replaced, even by other bytes', async () => {
    const out = join(dir, 'store-2')
    const store = new FileShardStore(out)
    await store.publish(await stageBytes(store, 'a', Buffer.from('first')))
    const record = readFileSync(join(out, '_evflow', 'commits', 'a.json'), 'utf8')
    const same = await store.publish(await stageBytes(store, 'a', Buffer.from('first')))
    expect(same).toMatchObject({ status: 'duplicate', identical: true })
    const other = await store.publish(await stageBytes(store, 'a', Buffer.from('other bytes')))
    expect(other).toMatchObject({ status: 'duplicate', identical: false })
    expect(readFileSync(join(out, 'a.parquet'), 'utf8')).toBe('first')
    expect(readFileSync(join(out, '_evflow', 'commits', 'a.json'), 'utf8')).toBe(record)
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  })

  it('replaces a file left without a valid record (another config, or a crash between file and record)', async () => {
    const out = join(dir, 'store-3')
    const store = new FileShardStore(out)
    mkdirSync(out, { recursive: true })
    writeFileSync(join(out, 'a.parquet'), 'stale output of another config')
    expect((await store.publish(await stageBytes(store, 'a', Buffer.from('fresh')))).status).toBe('committed')
    expect(readFileSync(join(out, 'a.parquet'), 'utf8')).toBe('fresh')
    expect(await store.committed('a', 'f1', 'h1')).toBeDefined()
    // Same bytes already there (a publisher crashed before its record): kept, record written.
    writeFileSync(join(out, 'b.parquet'), 'same')
    const inode = statSync(join(out, 'b.parquet')).ino
    expect((await store.publish(await stageBytes(store, 'b', Buffer.from('same')))).status).toBe('committed')
    expect(statSync(join(out, 'b.parquet')).ino).toBe(inode)
    expect(await store.committed('b', 'f1', 'h1')).toBeDefined()
  })

  it('concurrent publishers of one shard leave exactly one file, matching its record', async () => {
    const out = join(dir, 'store-4')
    const store = new FileShardStore(out)
    const stagings = await Promise.all(Array.from({ length: 6 }, () => stageBytes(store, 'a', Buffer.from('deterministic bytes'))))
    const results = await Promise.all(stagings.map((s) => store.publish(s)))
    expect(results.filter((r) => r.status === 'committed').length).toBeGreaterThanOrEqual(1)
    expect(results.every((r) => r.status === 'committed' || (r.status === 'duplicate' && r.identical))).toBe(true)
    expect(parquetFiles(out)).toEqual(['a.parquet'])
    const record = (await store.committed('a', 'f1', 'h1'))!
    expect(record.outputSha256).toBe(sha256(join(out, 'a.parquet')))
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  })

  it('reaps staging folders of dead processes on this host, not of live ones', async () => {
    const out = join(dir, 'store-5')
    const store = new FileShardStore(out)
    const mine = await store.stage('a', 'live')
    const host = mine.dir.split('/').at(-1)!.split('+')[0]
    const dead = join(out, '_evflow', 'staging', `${host}+999999999+job+abcd`)
    const otherHost = join(out, '_evflow', 'staging', `another-host+1+job+abcd`)
    mkdirSync(dead, { recursive: true })
    mkdirSync(otherHost, { recursive: true })
    expect(await store.reap()).toBe(1)
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(mine.dir)).toBe(true)
    expect(existsSync(otherHost)).toBe(true)
  })
})

describe('planJobs', () => {
  it('names, ranges and ids shards as a single-process run does; ids are stable and change with the config', async () => {
    const a = await planJobs({ definition: scan, config, inputs: [input], outDir: join(dir, 'plan') })
    const b = await planJobs({ definition: scan, config, inputs: [input], outDir: join(dir, 'plan') })
    expect(a.jobs.map((j) => [j.shard, j.rows, j.rowCount])).toEqual([
      ['part-00000', [0, 30], 30],
      ['part-00001', [0, 30], 30],
      ['part-00002', [0, 30], 30],
    ])
    expect(a.jobs.map(shardJobId)).toEqual(b.jobs.map(shardJobId))
    expect(new Set(a.jobs.map(shardJobId)).size).toBe(3)
    const other = await planJobs({ definition: scan, config: { ...config, size: 32 }, inputs: [input], outDir: join(dir, 'plan') })
    expect(other.run).not.toBe(a.run)
    expect(other.jobs.map(shardJobId).some((id) => a.jobs.map(shardJobId).includes(id))).toBe(false)
    // A performance key (decode concurrency) does not change what is computed, so not the run either.
    const faster = await planJobs({ definition: scan, config: { ...config, concurrency: 8 }, inputs: [input], outDir: join(dir, 'plan') })
    expect(faster.run).toBe(a.run)
  })

  it('splits big shards along row groups, named like a single-process --rows run', async () => {
    const { jobs } = await planJobs({ definition: scan, config, inputs: [join(input, 'part-00001.parquet')], outDir: join(dir, 'plan'), maxRowsPerJob: 15 })
    expect(jobs.map((j) => [j.shard, j.rows])).toEqual([
      ['part-00001.rows-0-20', [0, 20]],
      ['part-00001.rows-20-30', [20, 30]],
    ])
    expect(jobs[0].fingerprint).not.toBe(jobs[1].fingerprint)
  })

  it('queues an unreadable shard anyway, reporting it', async () => {
    const poisonDir = join(dir, 'poison-in')
    mkdirSync(poisonDir, { recursive: true })
    writePoisonShard(join(poisonDir, 'bad.parquet'))
    const { jobs, unreadable } = await planJobs({ definition: scan, config, inputs: [poisonDir], outDir: join(dir, 'plan') })
    expect(jobs).toMatchObject([{ shard: 'bad', rows: null, rowCount: 0, fingerprint: '' }])
    expect(unreadable).toMatchObject([{ shard: 'bad' }])
    const store = new FileShardStore(join(dir, 'poison-out'))
    await expect(runShardJob(jobs[0], { store, attempt: '1', worker: 'test' })).rejects.toBeInstanceOf(ShardReadError)
    expect(parquetFiles(join(dir, 'poison-out'))).toEqual([])
  })
})

describe('runShardJob', () => {
  it('runs each job to the bytes a single-process run writes; a second run finds it committed', async () => {
    const reference = join(dir, 'reference')
    await runPipeline(scanPipeline, config as typeof scanDefaults, { inputs: [input], outDir: reference })
    const out = join(dir, 'jobs')
    const { jobs } = await planJobs({ definition: scan, config, inputs: [input], outDir: out })
    const store = new FileShardStore(out)
    const results = await Promise.all(jobs.map((job) => runShardJob(job, { store, attempt: '1', worker: 'test' })))
    expect(results.map((r) => r.status)).toEqual(['committed', 'committed', 'committed'])
    expect(parquetFiles(out)).toEqual(parquetFiles(reference))
    for (const file of parquetFiles(out)) expect(sha256(join(out, file))).toBe(sha256(join(reference, file)))
    expect(await readOutput(out)).toEqual(await readOutput(reference))
    const again = await runShardJob(jobs[0], { store, attempt: '2', worker: 'test' })
    expect(again).toMatchObject({ status: 'skipped', rowsIn: 30 })
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  })

  it('two attempts of one shard at once: one commits, the other is discarded as an identical duplicate', async () => {
    const out = join(dir, 'race')
    const { jobs } = await planJobs({ definition: scan, config, inputs: [input], outDir: out })
    const store = new FileShardStore(out)
    const results = await Promise.all([1, 2].map((n) => runShardJob(jobs[1], { store, attempt: String(n), worker: `w${n}` })))
    const statuses = results.map((r) => r.status).sort()
    expect(statuses[0]).toBe('committed')
    expect(['committed', 'duplicate']).toContain(statuses[1])
    expect(results.every((r) => r.identical !== false)).toBe(true)
    expect(parquetFiles(out)).toEqual(['part-00001.parquet'])
  })

  it('refuses a job whose input changed since submit, or whose config this worker hashes differently', async () => {
    const out = join(dir, 'refuse')
    const { jobs } = await planJobs({ definition: scan, config, inputs: [input], outDir: out })
    const store = new FileShardStore(out)
    await expect(runShardJob({ ...jobs[0], fingerprint: 'f'.repeat(64) }, { store, attempt: '1', worker: 't' })).rejects.toBeInstanceOf(PipelineConfigError)
    await expect(runShardJob({ ...jobs[0], configHash: 'deadbeef' }, { store, attempt: '1', worker: 't' })).rejects.toBeInstanceOf(PipelineConfigError)
    await expect(runShardJob({ ...jobs[0], pipeline: 'nope' }, { store, attempt: '1', worker: 't' })).rejects.toBeInstanceOf(PipelineConfigError)
    await expect(runShardJob({ ...jobs[0], config: { ...config, size: -1 } }, { store, attempt: '1', worker: 't' })).rejects.toBeInstanceOf(PipelineConfigError)
    expect(parquetFiles(out)).toEqual([])
  })

  it('an aborted run publishes nothing and leaves no staging folder', async () => {
    const out = join(dir, 'abort')
    const { jobs } = await planJobs({ definition: scan, config, inputs: [input], outDir: out })
    const store = new FileShardStore(out)
    const controller = new AbortController()
    const running = runShardJob(jobs[0], {
      store,
      attempt: '1',
      worker: 't',
      signal: controller.signal,
      debugRowDelayMs: 20,
      progressIntervalMs: 10,
      onProgress: (p) => {
        if (p.rowsDone > 0) controller.abort(new RunInterruptedError('test'))
      },
    })
    await expect(running).rejects.toBeInstanceOf(RunInterruptedError)
    expect(parquetFiles(out)).toEqual([])
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  })
})
