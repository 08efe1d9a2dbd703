/**
 * The exactly-once half of distributed mode, without Redis: planning jobs, running one shard job, and
 * publishing through the shard store (first commit wins, duplicates discarded, never two files).
 */
import { createHash, randomBytes } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { scanDefaults, scanPipeline } from '../../../pipelines/scan.js'
import { runPipeline } from '../../../pipelines/run.js'
import type { PipelineDefinition } from '../../../pipelines/definition.js'
import { PipelineConfigError, RunInterruptedError, ShardReadError } from '../../../src/errors.js'
import { outputLayout, readManifest, type CompletionRecord } from '../../../src/parquet/commit.js'
import { planShards } from '../../../src/parquet/shards.js'
import { shardJobId } from '../../../app/queue/job.js'
import { runShardJob } from '../../../app/queue/run-shard.js'
import { FileShardStore, type Staging } from '../../../app/queue/store.js'
import { planJobs, prepareOutput } from '../../../app/queue/submit.js'
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

describe('FileShardStore: verification, plans and staging cleanup', () => {
  it('does not take same-size garbage for a committed shard, and publishing replaces it', async () => {
    const out = join(dir, 'store-garbage')
    const store = new FileShardStore(out)
    await store.publish(await stageBytes(store, 'a', Buffer.from('the real output')))
    writeFileSync(join(out, 'a.parquet'), randomBytes('the real output'.length))
    expect(await store.committed('a', 'f1', 'h1')).toBeUndefined()
    // The restored bytes match the record already there: it stands (a duplicate of identical bytes).
    expect(await store.publish(await stageBytes(store, 'a', Buffer.from('the real output')))).toMatchObject({ identical: true })
    expect(readFileSync(join(out, 'a.parquet'), 'utf8')).toBe('the real output')
    expect(await store.committed('a', 'f1', 'h1')).toBeDefined()
  })

  it('does not publish a shard that is not part of the plan now in the folder (a job of an older submission)', async () => {
    const out = join(dir, 'store-plan')
    const { jobs } = await planJobs({ definition: scan, config, inputs: [join(input, 'part-00000.parquet')], outDir: out })
    await prepareOutput({ outDir: out, configHash: jobs[0].configHash, pipeline: 'scan', jobs })
    const store = new FileShardStore(out)
    await expect(store.publish(await stageBytes(store, 'part-00001', Buffer.from('old'), 'f1', jobs[0].configHash))).rejects.toThrow(/not part of the plan now in/)
    expect(parquetFiles(out)).toEqual([])
    expect(readdirSync(join(out, '_evflow', 'staging'))).toEqual([])
  })

  it("removes a dead worker's staging folders on this host at a later stage() too, and other hosts' attempts at the same shard", async () => {
    const out = join(dir, 'store-reap')
    const store = new FileShardStore(out, { reapIntervalMs: 0 })
    const live = await store.stage('a', 'live')
    const [host, , keyA] = live.dir.split('/').at(-1)!.split('+')
    const keyB = (await store.stage('b', 'probe')).dir.split('/').at(-1)!.split('+')[2]
    const root = join(out, '_evflow', 'staging')
    const dead = join(root, `${host}+999999999+${keyB}+job.1+abcd1234`)
    const otherHostSameShard = join(root, `another-host+1+${keyA}+job.1+abcd1234`)
    const otherHostOtherShard = join(root, `another-host+1+${keyB}+job.1+abcd1234`)
    for (const d of [dead, otherHostSameShard, otherHostOtherShard]) mkdirSync(join(d, '_evflow'), { recursive: true })
    const again = await store.stage('a', 'retry')
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(otherHostSameShard)).toBe(false)
    expect(existsSync(otherHostOtherShard)).toBe(true)
    expect(existsSync(live.dir)).toBe(true)
    expect(existsSync(again.dir)).toBe(true)
    expect(host).toBe(hostname().replace(/[^A-Za-z0-9.-]+/g, '_').slice(0, 60))
  })

  it('refuses a symlinked staging folder instead of reading or emptying it', async () => {
    const out = join(dir, 'store-symlink')
    const victim = join(dir, 'store-symlink-victim')
    mkdirSync(join(victim, `${hostname()}+999999999+k+j+abcd1234`), { recursive: true })
    mkdirSync(join(out, '_evflow'), { recursive: true })
    const { symlinkSync } = await import('node:fs')
    symlinkSync(victim, join(out, '_evflow', 'staging'))
    const store = new FileShardStore(out)
    await expect(store.reap()).rejects.toThrow(/staging: is a symlink/)
    await expect(store.stage('a', '1')).rejects.toThrow(/staging: is a symlink/)
    expect(readdirSync(victim)).toHaveLength(1)
  })

  it('keeps the manifest up to date under concurrent publishers: it ends complete, listing every shard', async () => {
    const out = join(dir, 'store-manifest')
    const names = Array.from({ length: 16 }, (_, i) => `s${i}`)
    const jobs = names.map((shard, index) => ({ shard, fingerprint: 'f1', input: `/in/${shard}.parquet`, rows: [0, 1] as [number, number], rowCount: 1, index }))
    await prepareOutput({ outDir: out, configHash: 'h1', pipeline: 'scan', jobs: jobs as never })
    const stores = [0, 1, 2, 3].map(() => new FileShardStore(out))
    const stagings = await Promise.all(names.map((n, i) => stageBytes(stores[i % 4], n, Buffer.from(`bytes of ${n}`))))
    await Promise.all(stagings.map((s, i) => stores[i % 4].publish(s)))
    const manifest = (await readManifest(outputLayout(out)))!
    expect(manifest.complete).toBe(true)
    expect(manifest.files).toEqual(names.map((n) => `${n}.parquet`))
  })
})

describe('prepareOutput', () => {
  it('sets aside outputs that are not committed shards of the plan, keeps those that are, and writes the plan', async () => {
    const out = join(dir, 'prepare')
    const { jobs, configHash } = await planJobs({ definition: scan, config, inputs: [input], outDir: out })
    const store = new FileShardStore(out)
    await runShardJob(jobs[0], { store, attempt: '1', worker: 'test' })
    writeFileSync(join(out, 'gone.parquet'), 'an output of an input that is gone')
    copyFileSync(join(out, 'part-00000.parquet'), join(out, 'part-00001.parquet')) // no record: not committed
    const setAside = await prepareOutput({ outDir: out, configHash, pipeline: 'scan', jobs })
    expect([...setAside.shards].sort()).toEqual(['gone', 'part-00001'])
    expect(parquetFiles(out)).toEqual(['part-00000.parquet'])
    expect(readdirSync(setAside.folder!).sort()).toEqual(['commits', 'gone.parquet', 'part-00001.parquet'])
    const manifest = (await readManifest(outputLayout(out)))!
    expect(manifest).toMatchObject({ complete: false, files: ['part-00000.parquet'], pipeline: 'scan', configHash })
    expect(manifest.shards.map((s) => [s.shard, s.status])).toEqual([
      ['part-00000', 'committed'],
      ['part-00001', 'pending'],
      ['part-00002', 'pending'],
    ])
  })
})

describe('planJobs', () => {
  it('names hostile inputs by the single-process rule, split parts included, never twice', async () => {
    const hostile = join(dir, 'hostile')
    mkdirSync(hostile, { recursive: true })
    for (const name of ['图像', '画像', 'shard-1', 'a b', 'a_b', 'x', 'x.rows-0-20']) copyFileSync(join(input, 'part-00001.parquet'), join(hostile, `${name}.parquet`))
    const { jobs } = await planJobs({ definition: scan, config, inputs: [hostile], outDir: join(dir, 'plan') })
    const single = await planShards([hostile], {})
    expect(jobs.map((j) => j.shard)).toEqual(single.map((p) => p.plan.info.name))
    const split = await planJobs({ definition: scan, config, inputs: [hostile], outDir: join(dir, 'plan'), maxRowsPerJob: 15 })
    const names = split.jobs.map((j) => j.shard)
    expect(names).toHaveLength(14)
    expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(14)
    expect(names).toEqual(expect.arrayContaining(['shard-1.rows-0-20', 'shard-1.rows-20-30', 'x.rows-0-20', 'x.rows-0-20.rows-0-20', 'x.rows-0-20.rows-20-30']))
    expect(names.filter((n) => n.includes('~'))).toHaveLength(8) // 图像, 画像, a b, a_b: two parts each
  })

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
    // Rows slowed down so that the two attempts overlap whatever their start-up times (each starts its own
    // parser process): without it the second may start after the first committed and simply skip.
    const results = await Promise.all([1, 2].map((n) => runShardJob(jobs[1], { store, attempt: String(n), worker: `w${n}`, debugRowDelayMs: 40 })))
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
