/**
 * The output folder lock: who holds it, what is taken over, what is never followed; and a real race: child
 * processes (so that pids, and therefore ownership, are real) all try to take over the same stale lock (a
 * dead pid on this host) at the same instant, 500 times. Exactly one may win each trial. The race uses the
 * built `dist/src/engine/lock.js` (`npm test` builds first).
 */
import { fork, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { acquireFolderLock } from '../../src/engine/lock.js'
import { OutputLockedError, UnsafeOutputError } from '../../src/errors.js'
import { tempDir } from '../helpers/util.js'

const LOCK_MODULE = fileURLToPath(new URL('../../dist/src/engine/lock.js', import.meta.url))
const TRIALS = 500
const RACERS = 3
/** A pid above Linux's largest pid_max (2^22): never a live process. */
const DEAD_PID = 2 ** 22 + 12_345

/** A racer: on each message, spin until the agreed instant, try the lock, report (and keep a lock it won). */
const RACER = `
const { acquireFolderLock } = await import(${JSON.stringify(pathToFileURL(LOCK_MODULE).href)})
process.on('message', ({ trial, lock, folder, at }) => {
  while (Date.now() < at) {}
  let won = false
  let error
  try {
    acquireFolderLock(lock, folder)
    won = true
  } catch (e) {
    if (e.name !== 'OutputLockedError') error = String(e && e.stack || e)
  }
  process.send({ trial, won, error })
})
process.send({ ready: true })
`

let dir: string
let cleanup: () => void
const racers: ChildProcess[] = []

beforeAll(async () => {
  if (!existsSync(LOCK_MODULE)) throw new Error(`${LOCK_MODULE} is missing: run npm run build first`)
  ;({ dir, cleanup } = tempDir('evflow-lock-'))
  const script = join(dir, 'racer.mjs')
  writeFileSync(script, RACER)
  for (let i = 0; i < RACERS; i++) {
    const child = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    await new Promise<void>((resolve) => child.once('message', () => resolve()))
    racers.push(child)
  }
})

afterAll(() => {
  for (const child of racers) child.kill('SIGKILL')
  cleanup?.()
})

interface Outcome {
  trial: number
  won: boolean
  error?: string
}

describe('acquireFolderLock', () => {
  const fresh = (name: string) => {
    const folder = join(dir, name)
    mkdirSync(folder)
    return { folder, lock: join(folder, 'lock') }
  }

  it('writes its owner in one step, refuses a second taker, and releases only its own lock', () => {
    const { folder, lock } = fresh('own')
    const held = acquireFolderLock(lock, folder)
    expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ host: hostname(), pid: process.pid, nonce: expect.stringMatching(/^[0-9a-f]{24}$/) })
    expect(() => acquireFolderLock(lock, folder)).toThrow(OutputLockedError)
    expect(() => acquireFolderLock(lock, folder)).toThrow(new RegExp(`pid ${process.pid} on `))
    // Another run's lock in its place (after a takeover) is not ours to remove.
    writeFileSync(lock, JSON.stringify({ host: hostname(), pid: process.pid, startedAt: 'other', nonce: 'x' }))
    held.release()
    expect(existsSync(lock)).toBe(true)
    expect(readdirSync(folder)).toEqual(['lock'])
  })

  it('takes over a dead process’s lock (old format too), never another host’s or an unreadable one', () => {
    const { folder, lock } = fresh('stale')
    writeFileSync(lock, JSON.stringify({ host: hostname(), pid: DEAD_PID, startedAt: 'then' }))
    acquireFolderLock(lock, folder).release()
    expect(readdirSync(folder)).toEqual([])
    writeFileSync(lock, JSON.stringify({ host: 'elsewhere', pid: DEAD_PID, startedAt: 'then' }))
    expect(() => acquireFolderLock(lock, folder)).toThrow(/pid 4206649 on elsewhere/)
    writeFileSync(lock, '')
    expect(() => acquireFolderLock(lock, folder)).toThrow(/unreadable lock file .*remove it/)
  })

  it('refuses a stale lock that another run is claiming (or a claim left by a crash), naming the claim', () => {
    const { folder, lock } = fresh('claimed')
    const text = JSON.stringify({ host: hostname(), pid: DEAD_PID, startedAt: 'then', nonce: 'n' })
    writeFileSync(lock, text)
    const claim = `${lock}.claim-${createHash('sha256').update(text).digest('hex').slice(0, 16)}`
    writeFileSync(claim, text)
    expect(() => acquireFolderLock(lock, folder)).toThrow(OutputLockedError)
    expect(() => acquireFolderLock(lock, folder)).toThrow(claim)
    expect(readFileSync(lock, 'utf8')).toBe(text)
  })

  it('never follows a symlinked lock file', () => {
    const { folder, lock } = fresh('symlink')
    const target = join(dir, 'symlink-target')
    writeFileSync(target, JSON.stringify({ host: hostname(), pid: DEAD_PID, startedAt: 'then' }))
    symlinkSync(target, lock)
    expect(() => acquireFolderLock(lock, folder)).toThrow(UnsafeOutputError)
    expect(existsSync(target)).toBe(true)
  })

  it(`lets exactly one of ${RACERS} processes take over a stale lock, in each of ${TRIALS} trials`, async () => {
    const winners = new Array<number>(TRIALS).fill(0)
    const errors: string[] = []
    for (let trial = 0; trial < TRIALS; trial++) {
      const folder = join(dir, `t${trial}`)
      mkdirSync(folder)
      const lock = join(folder, 'lock')
      writeFileSync(lock, JSON.stringify({ host: hostname(), pid: DEAD_PID, startedAt: `trial ${trial}` }))
      const at = Date.now() + 4
      const outcomes = await Promise.all(
        racers.map(
          (child) =>
            new Promise<Outcome>((resolve) => {
              child.once('message', (m: Outcome) => resolve(m))
              child.send({ trial, lock, folder, at })
            }),
        ),
      )
      for (const outcome of outcomes) {
        if (outcome.won) winners[trial] += 1
        if (outcome.error) errors.push(outcome.error)
      }
    }
    expect(errors).toEqual([])
    const doubles = winners.filter((n) => n > 1).length
    const none = winners.filter((n) => n === 0).length
    expect({ doubles, none }).toEqual({ doubles: 0, none: 0 })
  }, 120_000)
})
