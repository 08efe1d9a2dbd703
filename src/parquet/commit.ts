/**
 * The output folder's layout and the commit protocol.
 *
 * ```
 * <out>/<shard>.parquet                  committed output shards (one per shard of the plan)
 * <out>/_evflow/commits/<shard>.json     completion record of each committed shard
 * <out>/_evflow/manifest.json            the last plan: its shards, which are committed, the files to read
 * <out>/_evflow/stale/<when>/            outputs (and their records) set aside because no longer in the plan
 * <out>/_evflow/tmp/                     shards being written (never visible under their final name)
 * <out>/_evflow/summary.json             the last run's summary
 * <out>/_evflow/lock                     held by the run writing the folder
 * ```
 * A shard is written under `_evflow/tmp/`, fsynced, renamed to `<shard>.parquet` (atomic on one file
 * system), then its completion record is written the same way. A shard counts as committed only when its
 * record exists, names the same input fingerprint and config hash, and the file has the recorded size and
 * sha256.
 *
 * Nothing under `_evflow/` is followed through a symlink: the folders are checked with `lstat` (a symlink,
 * or a file where a folder belongs, is an `UnsafeOutputError`), and records and outputs are opened with
 * `O_NOFOLLOW` where the platform has it.
 */
import { createHash, randomBytes } from 'node:crypto'
import { constants, lstatSync, mkdirSync, statSync } from 'node:fs'
import { lstat, mkdir, open, readdir, rename, rm } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'

import { processAlive } from '../engine/lock.js'
import { UnsafeOutputError } from '../errors.js'
import type { ShardInfo } from '../records.js'
import { EVFLOW_DIR } from './inputs.js'

export { EVFLOW_DIR } from './inputs.js'

export interface OutputLayout {
  readonly outDir: string
  readonly shard: (name: string) => string
  readonly commit: (name: string) => string
  /** `_evflow/` */
  readonly metaDir: string
  readonly tmpDir: string
  readonly commitsDir: string
  readonly staleDir: string
  readonly summary: string
  readonly manifest: string
  readonly lock: string
}

export function outputLayout(outDir: string): OutputLayout {
  const meta = join(outDir, EVFLOW_DIR)
  return {
    outDir,
    shard: (name) => join(outDir, `${name}.parquet`),
    commit: (name) => join(meta, 'commits', `${name}.json`),
    metaDir: meta,
    tmpDir: join(meta, 'tmp'),
    commitsDir: join(meta, 'commits'),
    staleDir: join(meta, 'stale'),
    summary: join(meta, 'summary.json'),
    manifest: join(meta, 'manifest.json'),
    lock: join(meta, 'lock'),
  }
}

const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0
const errno = (error: unknown) => (error as NodeJS.ErrnoException).code

/**
 * Creates the output folder (it may itself be a symlink to a folder: that is the user's choice) and its
 * `_evflow/{tmp,commits}` folders. Throws `UnsafeOutputError` when the output path is not a folder, or when
 * `_evflow` or one of its folders is a symlink or not a folder.
 */
export function ensureLayout(layout: OutputLayout): void {
  try {
    mkdirSync(layout.outDir, { recursive: true })
  } catch (cause) {
    throw new UnsafeOutputError(layout.outDir, `cannot create the output folder: ${(cause as Error).message}`, { cause })
  }
  if (!statSync(layout.outDir).isDirectory()) throw new UnsafeOutputError(layout.outDir, 'the output path is not a folder')
  for (const dir of [layout.metaDir, layout.tmpDir, layout.commitsDir]) ensureRealDir(dir)
}

/** Makes `dir` (one level) unless it exists; refuses a symlink or anything but a folder there. */
export function ensureRealDir(dir: string): void {
  for (let attempt = 0; attempt < 2; attempt++) {
    let info
    try {
      info = lstatSync(dir)
    } catch (error) {
      if (errno(error) !== 'ENOENT') throw error
      try {
        mkdirSync(dir)
        return
      } catch (inner) {
        if (errno(inner) === 'EEXIST') continue // made meanwhile: check what it is
        throw inner
      }
    }
    if (info.isSymbolicLink()) throw new UnsafeOutputError(dir, 'is a symlink; evflow never follows links in _evflow/: remove it')
    if (!info.isDirectory()) throw new UnsafeOutputError(dir, 'is not a folder: remove it')
    return
  }
}

/**
 * Whether `dir` exists as a real folder: false when it does not exist; `UnsafeOutputError` when it is a
 * symlink or not a folder (so that nothing reads or empties a folder through a link).
 */
export function isRealDir(dir: string): boolean {
  let info
  try {
    info = lstatSync(dir)
  } catch (error) {
    if (errno(error) === 'ENOENT') return false
    throw error
  }
  if (info.isSymbolicLink()) throw new UnsafeOutputError(dir, 'is a symlink; evflow never follows links in _evflow/: remove it')
  if (!info.isDirectory()) throw new UnsafeOutputError(dir, 'is not a folder: remove it')
  return true
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

/** This host in temp names: sanitised, at most 40 characters (so temp names stay within NAME_MAX). */
const HOST = hostname().replace(/[^A-Za-z0-9-]/g, '_').slice(0, 40) || 'host'

/**
 * A unique temporary path in the output's tmp folder: `<name>.<host>.<pid>.<random><ext>`, with `name`
 * cut to 100 characters (the random part makes it unique): at most 170 bytes with a 10-byte `ext`.
 */
export function tempPath(layout: OutputLayout, name: string, ext: string): string {
  return join(layout.tmpDir, `${name.slice(0, 100)}.${HOST}.${process.pid}.${randomBytes(4).toString('hex')}${ext}`)
}

/**
 * Deletes temporary files left by killed runs: all of them when `all` (the caller holds the folder lock),
 * otherwise those written by dead processes on this host (other hosts' files may be live). Entries are
 * checked with `lstat`: a symlink is an `UnsafeOutputError` (never followed, never emptied), a folder is left.
 */
export async function removeStaleTemps(layout: OutputLayout, all: boolean): Promise<number> {
  ensureRealDir(layout.tmpDir)
  let removed = 0
  for (const entry of await readdir(layout.tmpDir)) {
    const path = join(layout.tmpDir, entry)
    const info = await lstat(path)
    if (info.isSymbolicLink()) throw new UnsafeOutputError(path, 'is a symlink; evflow never follows links in _evflow/: remove it')
    if (!info.isFile()) continue
    const match = /\.([A-Za-z0-9_-]+)\.(\d+)\.[0-9a-f]{8}\.[a-z]+$/.exec(entry)
    const stale = all || (match !== null && match[1] === HOST && !processAlive(Number(match[2])))
    if (stale) {
      await rm(path, { force: true })
      removed += 1
    }
  }
  return removed
}

/** Refuses a destination that is a folder (a rename would fail) or, under `_evflow/`, a symlink. */
async function checkDestination(path: string): Promise<void> {
  let info
  try {
    info = await lstat(path)
  } catch (error) {
    if (errno(error) === 'ENOENT') return
    throw error
  }
  if (info.isDirectory()) throw new UnsafeOutputError(path, 'is a folder, not a file: remove it')
}

/** Writes `text` to `path` atomically (temp file, fsync, rename). */
export async function writeFileAtomic(layout: OutputLayout, path: string, text: string): Promise<void> {
  await checkDestination(path)
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
  ensureRealDir(layout.commitsDir)
  await checkDestination(layout.shard(record.shard))
  await rename(tmpFile, layout.shard(record.shard))
  await writeFileAtomic(layout, layout.commit(record.shard), `${JSON.stringify(record, null, 2)}\n`)
}

/**
 * Reads a small file under `_evflow/` without following a symlink. Undefined when it does not exist;
 * `UnsafeOutputError` when it is a symlink or not a file.
 */
export async function readMetaFile(path: string): Promise<string | undefined> {
  let handle
  try {
    handle = await open(path, constants.O_RDONLY | O_NOFOLLOW)
  } catch (error) {
    if (errno(error) === 'ENOENT' || errno(error) === 'ENOTDIR') return undefined
    if (errno(error) === 'ELOOP') throw new UnsafeOutputError(path, 'is a symlink; evflow never follows links in _evflow/: remove it')
    throw error
  }
  try {
    if (!(await handle.stat()).isFile()) throw new UnsafeOutputError(path, 'is not a file: remove it')
    return await handle.readFile('utf8')
  } finally {
    await handle.close()
  }
}

/** The completion record of `name`, or undefined when there is none (or it is torn). */
export async function readCompletion(layout: OutputLayout, name: string): Promise<CompletionRecord | undefined> {
  const text = await readMetaFile(layout.commit(name))
  if (text === undefined) return undefined
  try {
    return JSON.parse(text) as CompletionRecord
  } catch {
    return undefined
  }
}

/** sha256 of a file, read without following a symlink. */
export async function sha256File(path: string): Promise<string> {
  const handle = await open(path, constants.O_RDONLY | O_NOFOLLOW)
  try {
    const hash = createHash('sha256')
    for await (const chunk of handle.createReadStream({ autoClose: false })) hash.update(chunk as Buffer)
    return hash.digest('hex')
  } finally {
    await handle.close()
  }
}

/**
 * The record of `name` when the shard is committed in `layout` for this input fingerprint and config hash:
 * the record matches, and the output is a regular file (not a symlink) of the recorded size and sha256.
 * Reading the output costs little next to computing it, and catches any damage since it was written.
 */
export async function committedRecord(layout: OutputLayout, name: string, fingerprint: string, configHash: string): Promise<CompletionRecord | undefined> {
  const record = await readCompletion(layout, name)
  if (!record || record.inputFingerprint !== fingerprint || record.configHash !== configHash) return undefined
  try {
    const info = await lstat(layout.shard(name))
    if (!info.isFile() || info.size !== record.outputBytes) return undefined
    return (await sha256File(layout.shard(name))) === record.outputSha256 ? record : undefined
  } catch {
    return undefined
  }
}

/** Whether `info` is committed in `layout` for this input and config (see {@link committedRecord}). */
export async function isCommitted(layout: OutputLayout, info: ShardInfo, configHash: string): Promise<boolean> {
  return (await committedRecord(layout, info.name, info.fingerprint, configHash)) !== undefined
}

/** Removes a shard's output and completion record (for `--overwrite`). */
export async function removeShard(layout: OutputLayout, name: string): Promise<void> {
  await rm(layout.commit(name), { force: true })
  await rm(layout.shard(name), { force: true })
}

/** What {@link setAsideStale} moved. */
export interface SetAside {
  /** The folder they were moved to (under `_evflow/stale/`); absent when nothing was moved. */
  readonly folder?: string
  /** Names of the outputs moved (without `.parquet`). */
  readonly shards: readonly string[]
  /** Completion records moved whose output was not there. */
  readonly records: number
}

/**
 * Moves every output (`<out>/*.parquet`) whose name is not in `keep`, with its completion record, and every
 * record whose name is not in `keep`, into a new folder `_evflow/stale/<UTC time>-<pid>/` (records under its
 * `commits/`). So `read_parquet('<out>/*.parquet')` reads only the plan's shards; nothing is deleted.
 */
export async function setAsideStale(layout: OutputLayout, keep: ReadonlySet<string>): Promise<SetAside> {
  const outputs = (await readdir(layout.outDir)).filter((f) => f.endsWith('.parquet') && !keep.has(f.slice(0, -'.parquet'.length)))
  const movable: string[] = []
  for (const file of outputs) {
    const info = await lstat(join(layout.outDir, file)).catch(() => undefined)
    if (info && (info.isFile() || info.isSymbolicLink())) movable.push(file)
  }
  ensureRealDir(layout.commitsDir)
  const records = (await readdir(layout.commitsDir)).filter((f) => f.endsWith('.json') && !keep.has(f.slice(0, -'.json'.length)))
  const shards = movable.map((f) => f.slice(0, -'.parquet'.length))
  const orphans = records.filter((r) => !shards.includes(r.slice(0, -'.json'.length)))
  if (movable.length === 0 && records.length === 0) return { shards: [], records: 0 }

  ensureRealDir(layout.staleDir)
  const folder = join(layout.staleDir, `${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}`)
  await mkdir(folder)
  const staleCommits = join(folder, 'commits')
  await mkdir(staleCommits)
  // Another process sharing the folder (a distributed worker, `evflow submit`) may move the same entry at
  // the same time: one that is gone already is skipped.
  const move = (from: string, to: string) => rename(from, to).catch((error: unknown) => {
    if (errno(error) !== 'ENOENT') throw error
  })
  for (const file of movable) await move(join(layout.outDir, file), join(folder, file))
  for (const record of records) {
    const path = join(layout.commitsDir, record)
    if ((await lstat(path).catch(() => undefined))?.isDirectory()) throw new UnsafeOutputError(path, 'is a folder, not a file: remove it')
    await move(path, join(staleCommits, record))
  }
  return { folder, shards, records: orphans.length }
}

/** One shard of a plan in the manifest. */
export interface ManifestShard {
  /** Output name; the file is `<shard>.parquet` in the output folder. */
  readonly shard: string
  readonly file: string
  readonly input: string
  readonly rowStart: number
  readonly rowEnd: number
  /** Rows this shard yields (`rowEnd - rowStart`), ok and error rows together. */
  readonly rows: number
  readonly fingerprint: string
  /** `committed`: the file is there with its record; `pending`: not (yet); `failed`: the last run could not read it. */
  readonly status: 'committed' | 'pending' | 'failed'
  readonly error?: string
}

/**
 * `_evflow/manifest.json`: the shards of the last plan written into the folder and which of them are
 * committed. `files` lists the committed outputs of that plan, in plan order: reading exactly those gives
 * each input row of the committed shards once.
 */
export interface Manifest {
  readonly version: 1
  /** Identifies the plan: a hash of its shards (names, fingerprints) and config hash. */
  readonly plan: string
  readonly pipeline: string
  readonly configHash: string
  readonly updatedAt: string
  /** Every shard of the plan is committed. */
  readonly complete: boolean
  readonly files: readonly string[]
  readonly shards: readonly ManifestShard[]
}

/** The id of a plan (see {@link Manifest.plan}). */
export function planId(shards: readonly Pick<ManifestShard, 'shard' | 'fingerprint'>[], configHash: string): string {
  const hash = createHash('sha256').update(configHash)
  for (const s of shards) hash.update(`\u0000${s.shard}\u0000${s.fingerprint}`)
  return `p${hash.digest('hex').slice(0, 16)}`
}

/** A manifest from its shards (`files`, `complete` and `updatedAt` derived). */
export function makeManifest(fields: { plan: string; pipeline: string; configHash: string; shards: readonly ManifestShard[] }): Manifest {
  return {
    version: 1,
    plan: fields.plan,
    pipeline: fields.pipeline,
    configHash: fields.configHash,
    updatedAt: new Date().toISOString(),
    complete: fields.shards.every((s) => s.status === 'committed'),
    files: fields.shards.filter((s) => s.status === 'committed').map((s) => s.file),
    shards: fields.shards,
  }
}

export async function writeManifest(layout: OutputLayout, manifest: Manifest): Promise<void> {
  await writeFileAtomic(layout, layout.manifest, `${JSON.stringify(manifest, null, 1)}\n`)
}

/** The folder's manifest, or undefined when there is none (or it is torn). */
export async function readManifest(layout: OutputLayout): Promise<Manifest | undefined> {
  const text = await readMetaFile(layout.manifest)
  if (text === undefined) return undefined
  try {
    const manifest = JSON.parse(text) as Manifest
    return manifest.version === 1 && Array.isArray(manifest.shards) ? manifest : undefined
  } catch {
    return undefined
  }
}

/**
 * Brings the manifest up to date with the completion records on disk, for writers that share a folder
 * without a lock (distributed workers): marks committed each pending shard whose record matches and whose
 * file has the recorded size, writes, then reads again and repeats until what it reads is up to date. So
 * whoever writes last has checked the records after its own write: the manifest ends up listing every
 * shard committed before the last writer's check, whatever the interleaving. Returns the manifest read last.
 */
export async function refreshManifest(layout: OutputLayout, maxRounds = 8): Promise<Manifest | undefined> {
  let manifest: Manifest | undefined
  for (let round = 0; round < maxRounds; round++) {
    manifest = await readManifest(layout)
    if (!manifest) return undefined
    const onDisk = new Set((await readdir(layout.commitsDir).catch(() => [] as string[])).filter((f) => f.endsWith('.json')))
    let changed = false
    const shards: ManifestShard[] = []
    for (const shard of manifest.shards) {
      if (shard.status !== 'committed' && onDisk.has(`${shard.shard}.json`)) {
        const record = await readCompletion(layout, shard.shard)
        const size = await lstat(layout.shard(shard.shard)).then((i) => (i.isFile() ? i.size : -1), () => -1)
        if (record && record.inputFingerprint === shard.fingerprint && record.configHash === manifest.configHash && size === record.outputBytes) {
          const { error: _error, ...rest } = shard
          shards.push({ ...rest, status: 'committed' })
          changed = true
          continue
        }
      }
      shards.push(shard)
    }
    if (!changed) return manifest
    await writeManifest(layout, makeManifest({ ...manifest, shards }))
  }
  return manifest
}
