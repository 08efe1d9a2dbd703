/**
 * The output folder lock: one run writes a folder at a time. The lock file holds its owner's host, pid,
 * start time and a random nonce; it appears with its content in one step (written under a temporary name,
 * then hard-linked to the lock name, which fails when a lock exists). A lock held by a live process (or by
 * another host, whose processes cannot be checked) is refused with `OutputLockedError`.
 *
 * A lock left by a dead process on this host is taken over so that two runs can never both get in:
 * 1. claim it: hard-link the lock to `<lock>.claim-<hash of its content>` — only one process can create that
 *    name, and only the claimer ever removes the stale lock;
 * 2. check that the claimed file is the stale lock read before (the same content, nonce included): between
 *    reading and linking, another process may have replaced it; if so, drop the claim and start again;
 * 3. remove the stale lock, create the new one (exclusively: another process may have created a lock in the
 *    meantime, and then wins), drop the claim.
 * Removing a lock by its path is safe only because nobody but its claimer removes a stale lock, and nobody
 * removes a live one but its owner.
 */
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, constants, fstatSync, linkSync, lstatSync, openSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'

import { OutputLockedError, UnsafeOutputError } from '../errors.js'

interface LockOwner {
  host: string
  pid: number
  startedAt: string
  nonce?: string
}

export interface FolderLock {
  /** Removes the lock file if it is still this lock (idempotent). */
  release(): void
}

/** Whether process `pid` exists on this host (EPERM: it exists but belongs to another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

const code = (error: unknown) => (error as NodeJS.ErrnoException).code

/** Takes the lock at `path` for `outDir`, synchronously. Throws `OutputLockedError` when it is held. */
export function acquireFolderLock(path: string, outDir: string): FolderLock {
  const me: LockOwner = { host: hostname(), pid: process.pid, startedAt: new Date().toISOString(), nonce: randomBytes(12).toString('hex') }
  const text = JSON.stringify(me)
  for (let attempt = 0; attempt < 16; attempt++) {
    if (createLock(path, text)) return ownedLock(path, text)
    const held = readLock(path)
    if (held === undefined) continue // released meanwhile: try again
    const owner = parseOwner(held)
    const stale = owner !== undefined && owner.host === me.host && !processAlive(owner.pid)
    if (!stale) {
      const holder = owner ? `pid ${owner.pid} on ${owner.host} since ${owner.startedAt}` : `unreadable lock file ${path}: remove it if no run is writing the folder`
      throw new OutputLockedError(outDir, holder)
    }
    const claim = `${path}.claim-${createHash('sha256').update(held).digest('hex').slice(0, 16)}`
    try {
      linkSync(path, claim)
    } catch (error) {
      if (code(error) === 'ENOENT') continue // the stale lock is gone: try again
      if (code(error) === 'EEXIST') {
        throw new OutputLockedError(outDir, `another run is taking over the stale lock of dead pid ${owner!.pid} (if none is, remove ${claim})`)
      }
      throw error
    }
    let won = false
    try {
      if (readLock(claim) !== held) continue // the lock changed between reading and claiming
      rmSync(path, { force: true })
      won = createLock(path, text)
    } finally {
      rmSync(claim, { force: true })
    }
    if (won) return ownedLock(path, text)
    // Another process created a lock after the stale one was removed: the next pass finds it live.
  }
  throw new OutputLockedError(outDir, `lock file ${path} keeps changing`)
}

/** Creates `path` holding `text` in one step; false when it exists. */
function createLock(path: string, text: string): boolean {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  writeFileSync(tmp, text, { flag: 'wx' })
  try {
    linkSync(tmp, path)
    return true
  } catch (error) {
    if (code(error) === 'EEXIST') return false
    if (code(error) === 'EPERM' || code(error) === 'ENOTSUP' || code(error) === 'EOPNOTSUPP' || code(error) === 'ENOSYS') {
      // No hard links on this file system: an exclusive create (a reader may see it empty for a moment,
      // and then takes it as held).
      try {
        writeFileSync(path, text, { flag: 'wx' })
        return true
      } catch (inner) {
        if (code(inner) === 'EEXIST') return false
        throw inner
      }
    }
    throw error
  } finally {
    rmSync(tmp, { force: true })
  }
}

/** The lock file's text, or undefined when there is none; a symlink there is refused, never followed. */
function readLock(path: string): string | undefined {
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0))
  } catch (error) {
    if (code(error) === 'ENOENT') return undefined
    if (code(error) === 'ELOOP' || isSymlink(path)) throw new UnsafeOutputError(path, 'the lock file is a symlink; evflow never follows links in _evflow/: remove it')
    throw error
  }
  try {
    if (!fstatSync(fd).isFile()) throw new UnsafeOutputError(path, 'the lock path is not a file: remove it')
    return readFileSync(fd, 'utf8')
  } finally {
    closeSync(fd)
  }
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink()
  } catch {
    return false
  }
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const owner = JSON.parse(text) as Partial<LockOwner>
    return typeof owner.host === 'string' && Number.isInteger(owner.pid) && typeof owner.startedAt === 'string' ? (owner as LockOwner) : undefined
  } catch {
    return undefined
  }
}

function ownedLock(path: string, text: string): FolderLock {
  let released = false
  return {
    release() {
      if (released) return
      released = true
      try {
        if (readLock(path) === text) unlinkSync(path)
      } catch {
        // best effort: a lock that cannot be read or removed is reported by the next run
      }
    },
  }
}
