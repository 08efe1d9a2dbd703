/**
 * Where distributed workers publish shards. Execution is at-least-once (a worker whose lock lapsed may
 * still be running when another finishes the same shard), so publishing is idempotent:
 *
 * - a worker runs its shard into a private staging folder, never into the output itself;
 * - it then publishes: when the shard is already committed (a completion record for the same input
 *   fingerprint and config hash, over a file of the recorded size) its own output is discarded; otherwise
 *   the staged file is hard-linked to `<out>/<shard>.parquet` (fails if a file is there: first wins), and
 *   the completion record is written atomically after it;
 * - a file already there without a valid record (a crash between the two steps, or a run with another
 *   config) is kept when its bytes equal the staged ones, and replaced by an atomic rename otherwise.
 *
 * So one shard never has two output files, a partial file is never visible under the final name, and a
 * committed shard is never replaced. Outputs are a deterministic function of (input, model, config), so a
 * duplicate run produces the same bytes anyway; `identical` in the result reports it.
 *
 * {@link ShardStore} is the interface; {@link FileShardStore} implements it on a POSIX folder, local or a
 * network file system (NFS, CephFS, EFS, Filestore, ...) mounted at the same path on every machine. An
 * object store would stage in a local temp folder and publish with a conditional put (`If-None-Match: *`).
 */
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { link, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'

import { processAlive } from '../../src/engine/lock.js'
import { ShardWriteError, describeError } from '../../src/errors.js'
import {
  EVFLOW_DIR,
  ensureLayout,
  outputLayout,
  readCompletion,
  writeFileAtomic,
  type CompletionRecord,
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


async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size
  } catch {
    return undefined
  }
}

/** A {@link ShardStore} on a folder shared by every worker (local disk, or a network file system). */
export class FileShardStore implements ShardStore {
  readonly location: string
  private readonly layout: OutputLayout
  private readonly stagingRoot: string
  private ready: Promise<void> | undefined

  constructor(outDir: string) {
    this.location = outDir
    this.layout = outputLayout(outDir)
    this.stagingRoot = join(outDir, EVFLOW_DIR, STAGING)
  }

  private ensure(): Promise<void> {
    this.ready ??= (async () => {
      ensureLayout(this.layout)
      await mkdir(this.stagingRoot, { recursive: true })
    })().catch((error: unknown) => {
      this.ready = undefined
      throw new ShardWriteError(this.location, `cannot create the output folder: ${describeError(error)}`, { cause: error })
    })
    return this.ready
  }

  async committed(name: string, fingerprint: string, configHash: string): Promise<CompletionRecord | undefined> {
    const record = await readCompletion(this.layout, name)
    if (!record || record.inputFingerprint !== fingerprint || record.configHash !== configHash) return undefined
    return (await sizeOf(this.layout.shard(name))) === record.outputBytes ? record : undefined
  }

  async stage(name: string, attempt: string): Promise<Staging> {
    await this.ensure()
    const safe = attempt.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80)
    const dir = join(this.stagingRoot, `${HOST}+${process.pid}+${safe}+${randomBytes(4).toString('hex')}`)
    await mkdir(dir, { recursive: true })
    return { dir, name }
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
      if (existing) return { status: 'duplicate', record: existing, identical: existing.outputSha256 === record.outputSha256 }

      await this.ensure()
      const final = this.layout.shard(staging.name)
      if (!(await this.linkNoReplace(staged, final))) {
        // A file is there without a valid record: a crashed publisher, a concurrent one between its link
        // and its record, or an output of another config. Same bytes: keep it; otherwise replace it.
        const same = (await sizeOf(final)) === record.outputBytes && (await sha256File(final).catch(() => '')) === record.outputSha256
        if (!same) {
          const raced = await this.committed(staging.name, record.inputFingerprint, record.configHash)
          if (raced) return { status: 'duplicate', record: raced, identical: raced.outputSha256 === record.outputSha256 }
          await rename(staged, final)
        }
      }
      // Another publisher of the same bytes may have recorded the shard meanwhile: keep its record.
      const recorded = await this.committed(staging.name, record.inputFingerprint, record.configHash)
      if (recorded) return { status: 'duplicate', record: recorded, identical: recorded.outputSha256 === record.outputSha256 }
      await writeFileAtomic(this.layout, this.layout.commit(staging.name), `${JSON.stringify(record, null, 2)}\n`)
      return { status: 'committed', record }
    } finally {
      await this.discard(staging)
    }
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
    let entries: string[]
    try {
      entries = await readdir(this.stagingRoot)
    } catch {
      return 0
    }
    let removed = 0
    for (const entry of entries) {
      const [host, pid] = entry.split('+')
      if (host !== HOST || !/^\d+$/.test(pid ?? '') || Number(pid) === process.pid || processAlive(Number(pid))) continue
      await rm(join(this.stagingRoot, entry), { recursive: true, force: true }).catch(() => {})
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
