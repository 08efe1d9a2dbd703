/**
 * The output folder lock: one run writes a folder at a time. The lock file holds the owner's host and pid;
 * a lock left by a dead process on this host is taken over, one held by a live process (or another host)
 * is refused with `OutputLockedError`.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'

import { OutputLockedError } from '../errors.js'

interface LockOwner {
  host: string
  pid: number
  startedAt: string
}

export interface FolderLock {
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

/** Takes the lock at `path` for `outDir`, synchronously. */
export function acquireFolderLock(path: string, outDir: string): FolderLock {
  const me: LockOwner = { host: hostname(), pid: process.pid, startedAt: new Date().toISOString() }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(path, JSON.stringify(me), { flag: 'wx' })
      let released = false
      return {
        release() {
          if (released) return
          released = true
          rmSync(path, { force: true })
        },
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    let owner: LockOwner | undefined
    try {
      owner = JSON.parse(readFileSync(path, 'utf8')) as LockOwner
    } catch {
      owner = undefined
    }
    const stale = owner !== undefined && owner.host === me.host && !processAlive(owner.pid)
    if (!stale) {
      const holder = owner ? `pid ${owner.pid} on ${owner.host} since ${owner.startedAt}` : `unreadable lock file ${path}`
      throw new OutputLockedError(outDir, holder)
    }
    rmSync(path, { force: true })
  }
  throw new OutputLockedError(outDir, `lock file ${path} keeps reappearing`)
}
