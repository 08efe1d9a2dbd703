/**
 * Where distributed workers publish shards. Execution is at-least-once (a worker whose lock lapsed may
 * still be running when another finishes the same shard), so publishing is idempotent:
 *
 * - a worker runs its shard into a private staging folder, never into the output itself;
 * - it then publishes: when the shard is already committed (a completion record for the same input
 *   fingerprint and config hash, over a file of the recorded size and sha256) its own output is discarded;
 *   otherwise the staged file is hard-linked to `<out>/<shard>.parquet` (fails if a file is there: first
 *   wins), and the completion record is written atomically after it;
 * - a file already there without a valid record (a crash between the two steps, a run with another
 *   config, or damage) is kept when its bytes equal the staged ones, and replaced by an atomic rename
 *   otherwise;
 * - the folder's manifest (`_evflow/manifest.json`, written by `evflow submit` with the plan) decides what
 *   belongs: a shard that is not part of the folder's current plan (a job of an older submission) is not
 *   published, and after publishing the manifest is brought up to date with the records on disk.
 *
 * So one shard never has two output files, a partial file is never visible under the final name, and a
 * committed shard is never replaced. Outputs are a deterministic function of (input, model, config), so a
 * duplicate run produces the same bytes anyway; `identical` in the result reports it.
 *
 * Staging folders are `_evflow/staging/<host>+<pid>+<shard key>+<attempt>+<random>/`. A killed worker's
 * folders are removed by any worker of the same host (its pid is dead), and by whichever worker runs the
 * same shard next, on any host (BullMQ gave it the shard, so the earlier attempt's lock has lapsed).
 *
 * {@link ShardStore} is the interface; {@link FileShardStore} implements it on a POSIX folder, local or a
 * network file system (NFS, CephFS, EFS, Filestore, ...) mounted at the same path on every machine. An
 * object store would stage in a local temp folder and publish with a conditional put (`If-None-Match: *`).
 */
import { createHash, randomBytes } from 'node:crypto'
import { link, lstat, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'

import { processAlive } from '../../src/engine/lock.js'
import { PipelineConfigError, ShardWriteError, describeError } from '../../src/errors.js'
import {
  EVFLOW_DIR,
  committedRecord,
  ensureLayout,
  ensureRealDir,
  isRealDir,
  outputLayout,
  readCompletion,
  readManifest,
  refreshManifest,
  setAsideStale,
  sha256File,
  writeFileAtomic,
  type CompletionRecord,
  type Manifest,
  type OutputLayout,
} from '../../src/parquet/commit.js'

/** A private folder a worker runs one shard into before publishing it. */
export interface Staging {
  /** Folder given to `runPipeline` as its output. */
  readonly dir: string
  /** The shard's output name. */
  readonly name: string
}

export type PublishResult =
  | { readonly status: 'committed'; readonly record: CompletionRecord }
  | { readonly status: 'duplicate'; readonly record: CompletionRecord; readonly identical: boolean }

export interface ShardStore {
  /** The output's location, for messages. */
  readonly location: string
  /** The completion record of `name` when it is committed for this input fingerprint and config hash. */
  committed(name: string, fingerprint: string, configHash: string): Promise<CompletionRecord | undefined>
  /** A fresh private staging folder for one attempt at shard `name`. */
  stage(name: string, attempt: string): Promise<Staging>
  /** Publishes a shard that a run has committed inside `staging`, then removes `staging`. */
  publish(staging: Staging): Promise<PublishResult>
  /** Removes a staging folder and everything in it. */
  discard(staging: Staging): Promise<void>
  /** Removes staging folders left by dead processes of this host; returns how many. */
  reap(): Promise<number>
}

const STAGING = 'staging'
const HOST = hostname().replace(/[^A-Za-z0-9.-]+/g, '_').slice(0, 60) || 'host'

/** A shard's key in staging folder names: names may be 128 characters, folder names must stay short. */
const shardKey = (name: string) => createHash('sha256').update(name).digest('hex').slice(0, 16)

/** Size of a regular file (not following a symlink); undefined when there is none. */
async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const info = await lstat(path)
    return info.isFile() ? info.size : undefined
  } catch {
    return undefined
  }
}

/** Whether `manifest` (when there is one) lists shard `name` with this fingerprint and config. */
function inPlan(manifest: Manifest | undefined, record: CompletionRecord): boolean {
  if (!manifest) return true
  return manifest.configHash === record.configHash && manifest.shards.some((s) => s.shard === record.shard && s.fingerprint === record.inputFingerprint)
}

export interface FileShardStoreOptions {
  /** Least time between two sweeps of dead processes' staging folders by `stage`, in ms. Default 60000. */
  readonly reapIntervalMs?: number
}

/** A {@link ShardStore} on a folder shared by every worker (local disk, or a network file system). */
export class FileShardStore implements ShardStore {
  readonly location: string
  private readonly layout: OutputLayout
  private readonly stagingRoot: string
  private readonly reapIntervalMs: number
  private lastReap = -Infinity
  private ready: Promise<void> | undefined

  constructor(outDir: string, options: FileShardStoreOptions = {}) {
    this.location = outDir
    this.layout = outputLayout(outDir)
    this.stagingRoot = join(outDir, EVFLOW_DIR, STAGING)
    this.reapIntervalMs = options.reapIntervalMs ?? 60_000
  }

  private ensure(): Promise<void> {
    this.ready ??= (async () => {
      ensureLayout(this.layout)
      ensureRealDir(this.stagingRoot)
    })().catch((error: unknown) => {
      this.ready = undefined
      if (error instanceof Error && error.name === 'UnsafeOutputError') throw error
      throw new ShardWriteError(this.location, `cannot create the output folder: ${describeError(error)}`, { cause: error })
    })
    return this.ready
  }

  async committed(name: string, fingerprint: string, configHash: string): Promise<CompletionRecord | undefined> {
    return committedRecord(this.layout, name, fingerprint, configHash)
  }

  async stage(name: string, attempt: string): Promise<Staging> {
    await this.ensure()
    if (performance.now() - this.lastReap >= this.reapIntervalMs) await this.reap()
    await this.removeAttempts(name)
    const safe = attempt.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80)
    const dir = join(this.stagingRoot, `${HOST}+${process.pid}+${shardKey(name)}+${safe}+${randomBytes(4).toString('hex')}`)
    await mkdir(dir)
    return { dir, name }
  }

  /**
   * Removes earlier attempts' staging folders of shard `name` whose owner cannot be running them any more:
   * on this host, a dead pid; on another host, any (the queue handed this shard to this worker, so the other
   * attempt's lock has lapsed, and that worker discards its attempt when it notices).
   */
  private async removeAttempts(name: string): Promise<void> {
    const key = shardKey(name)
    for (const entry of await readdir(this.stagingRoot)) {
      const [host, pid, entryKey] = entry.split('+')
      if (entryKey !== key || !/^\d+$/.test(pid ?? '')) continue
      if (host === HOST && (Number(pid) === process.pid || processAlive(Number(pid)))) continue
      await this.removeStaging(entry)
    }
  }

  /** Removes one staging folder: checked with lstat, so a symlink is removed itself, never followed. */
  private async removeStaging(entry: string): Promise<void> {
    await rm(join(this.stagingRoot, entry), { recursive: true, force: true }).catch(() => {})
  }

  async publish(staging: Staging): Promise<PublishResult> {
    try {
      const stagedLayout = outputLayout(staging.dir)
      const record = await readCompletion(stagedLayout, staging.name)
      const staged = stagedLayout.shard(staging.name)
      if (!record || (await sizeOf(staged)) !== record.outputBytes) {
        throw new ShardWriteError(staged, 'the run did not commit this shard in its staging folder')
      }
      const existing = await this.committed(staging.name, record.inputFingerprint, record.configHash)
      if (existing) return await this.duplicate(existing, record)

      await this.ensure()
      if (!inPlan(await readManifest(this.layout), record)) {
        throw new PipelineConfigError(
          'out',
          `shard ${staging.name} is not part of the plan now in ${this.location} (_evflow/manifest.json): this job belongs to an older submission to this folder; cancel it, or submit again`,
        )
      }
      const final = this.layout.shard(staging.name)
      if (!(await this.linkNoReplace(staged, final))) {
        // A file is there without a valid record: a crashed publisher, a concurrent one between its link
        // and its record, or an output of another config. Same bytes: keep it; otherwise replace it.
        const same = (await sizeOf(final)) === record.outputBytes && (await sha256File(final).catch(() => '')) === record.outputSha256
        if (!same) {
          const raced = await this.committed(staging.name, record.inputFingerprint, record.configHash)
          if (raced) return await this.duplicate(raced, record)
          await rename(staged, final)
        }
      }
      // Another publisher of the same bytes may have recorded the shard meanwhile: keep its record.
      const recorded = await this.committed(staging.name, record.inputFingerprint, record.configHash)
      if (recorded) return await this.duplicate(recorded, record)
      await writeFileAtomic(this.layout, this.layout.commit(staging.name), `${JSON.stringify(record, null, 2)}\n`)
      await this.afterPublish(record)
      return { status: 'committed', record }
    } finally {
      await this.discard(staging)
    }
  }

  /** Another attempt committed the shard: its record stands (the manifest is brought up to date all the same). */
  private async duplicate(committed: CompletionRecord, mine: CompletionRecord): Promise<PublishResult> {
    await this.afterPublish(committed)
    return { status: 'duplicate', record: committed, identical: committed.outputSha256 === mine.outputSha256 }
  }

  /**
   * Brings the manifest up to date; if a newer plan was submitted while this shard was being published and
   * does not hold it, sets aside what is not in that plan (this shard included).
   */
  private async afterPublish(record: CompletionRecord): Promise<void> {
    const manifest = await refreshManifest(this.layout)
    if (manifest && !inPlan(manifest, record)) await setAsideStale(this.layout, new Set(manifest.shards.map((s) => s.shard)))
  }

  /** Hard-links `from` to `to` unless `to` exists; false when it exists. Falls back to checking + rename
   *  on file systems without hard links. */
  private async linkNoReplace(from: string, to: string): Promise<boolean> {
    try {
      await link(from, to)
      return true
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EEXIST') return false
      if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS') {
        if ((await sizeOf(to)) !== undefined) return false
        await rename(from, to)
        return true
      }
      throw new ShardWriteError(to, `cannot publish: ${describeError(error)}`, { cause: error })
    }
  }

  async discard(staging: Staging): Promise<void> {
    await rm(staging.dir, { recursive: true, force: true }).catch(() => {})
  }

  async reap(): Promise<number> {
    if (!isRealDir(this.layout.metaDir) || !isRealDir(this.stagingRoot)) return 0
    const entries = await readdir(this.stagingRoot)
    this.lastReap = performance.now()
    let removed = 0
    for (const entry of entries) {
      const [host, pid] = entry.split('+')
      if (host !== HOST || !/^\d+$/.test(pid ?? '') || Number(pid) === process.pid || processAlive(Number(pid))) continue
      await this.removeStaging(entry)
      removed += 1
    }
    return removed
  }
}

/** Reads a staged run's completion record (for tests and tools). */
export async function readStagedRecord(staging: Staging): Promise<CompletionRecord | undefined> {
  try {
    return JSON.parse(await readFile(outputLayout(staging.dir).commit(staging.name), 'utf8')) as CompletionRecord
  } catch {
    return undefined
  }
}
