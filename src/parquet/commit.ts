/**
 * The output folder's layout and the commit protocol.
 *
 * ```
 * <out>/<shard>.parquet                  committed output shards (one per input shard)
 * <out>/_evflow/commits/<shard>.json     completion record of each committed shard
 * <out>/_evflow/tmp/                     shards being written (never visible under their final name)
 * <out>/_evflow/summary.json             the last run's summary
 * <out>/_evflow/lock                     held by the run writing the folder
 * ```
 * A shard is written under `_evflow/tmp/`, fsynced, renamed to `<shard>.parquet` (atomic on one file
 * system), then its completion record is written the same way. A shard counts as committed only when its
 * record exists, names the same input fingerprint and config hash, and the file has the recorded size.
 */
import { randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'

import { processAlive } from '../engine/lock.js'
import type { ShardInfo } from '../records.js'

export const EVFLOW_DIR = '_evflow'

export interface OutputLayout {
  readonly outDir: string
  readonly shard: (name: string) => string
  readonly commit: (name: string) => string
  readonly tmpDir: string
  readonly commitsDir: string
  readonly summary: string
  readonly lock: string
}

export function outputLayout(outDir: string): OutputLayout {
  const meta = join(outDir, EVFLOW_DIR)
  return {
    outDir,
    shard: (name) => join(outDir, `${name}.parquet`),
    commit: (name) => join(meta, 'commits', `${name}.json`),
    tmpDir: join(meta, 'tmp'),
    commitsDir: join(meta, 'commits'),
    summary: join(meta, 'summary.json'),
    lock: join(meta, 'lock'),
  }
}

/** Creates the output folder and its `_evflow/{tmp,commits}` folders. */
export function ensureLayout(layout: OutputLayout): void {
  mkdirSync(layout.tmpDir, { recursive: true })
  mkdirSync(layout.commitsDir, { recursive: true })
}

/** The completion record of a committed shard. */
export interface CompletionRecord {
  readonly version: 1
  readonly shard: string
  readonly input: string
  readonly rowStart: number
  readonly rowEnd: number
  readonly rowsIn: number
  readonly rowsOk: number
  readonly rowsError: number
  readonly inputFingerprint: string
  readonly configHash: string
  readonly output: string
  readonly outputBytes: number
  readonly outputSha256: string
  readonly committedAt: string
}

const HOST = hostname().replace(/[^A-Za-z0-9-]/g, '_')

/** A unique temporary path in the output's tmp folder: `<name>.<host>.<pid>.<random><ext>`. */
export function tempPath(layout: OutputLayout, name: string, ext: string): string {
  return join(layout.tmpDir, `${name}.${HOST}.${process.pid}.${randomBytes(4).toString('hex')}${ext}`)
}


/**
 * Deletes temporary files left by killed runs: all of them when `all` (the caller holds the folder lock),
 * otherwise those written by dead processes on this host (other hosts' files may be live).
 */
export async function removeStaleTemps(layout: OutputLayout, all: boolean): Promise<number> {
  let removed = 0
  let entries: string[]
  try {
    entries = await readdir(layout.tmpDir)
  } catch {
    return 0
  }
  for (const entry of entries) {
    const match = /\.([A-Za-z0-9_-]+)\.(\d+)\.[0-9a-f]{8}\.[a-z]+$/.exec(entry)
    const stale = all || (match !== null && match[1] === HOST && !processAlive(Number(match[2])))
    if (stale) {
      await rm(join(layout.tmpDir, entry), { force: true })
      removed += 1
    }
  }
  return removed
}

/** Writes `text` to `path` atomically (temp file, fsync, rename). */
export async function writeFileAtomic(layout: OutputLayout, path: string, text: string): Promise<void> {
  const tmp = tempPath(layout, 'file', '.tmp')
  const handle = await open(tmp, 'wx')
  try {
    await handle.writeFile(text)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await rename(tmp, path)
}

/** Renames a finished temporary shard into place and writes its completion record. */
export async function commitShard(layout: OutputLayout, tmpFile: string, record: CompletionRecord): Promise<void> {
  await mkdir(layout.commitsDir, { recursive: true })
  await rename(tmpFile, layout.shard(record.shard))
  await writeFileAtomic(layout, layout.commit(record.shard), `${JSON.stringify(record, null, 2)}\n`)
}

export async function readCompletion(layout: OutputLayout, name: string): Promise<CompletionRecord | undefined> {
  try {
    return JSON.parse(await readFile(layout.commit(name), 'utf8')) as CompletionRecord
  } catch {
    return undefined
  }
}

/** Whether `info` is committed in `layout` for this input and config. */
export async function isCommitted(layout: OutputLayout, info: ShardInfo, configHash: string): Promise<boolean> {
  const record = await readCompletion(layout, info.name)
  if (!record || record.inputFingerprint !== info.fingerprint || record.configHash !== configHash) return false
  try {
    const { size } = await stat(layout.shard(info.name))
    return size === record.outputBytes
  } catch {
    return false
  }
}

/** Removes a shard's output and completion record (for `--overwrite`). */
export async function removeShard(layout: OutputLayout, name: string): Promise<void> {
  await rm(layout.commit(name), { force: true })
  await rm(layout.shard(name), { force: true })
}
