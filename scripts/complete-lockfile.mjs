#!/usr/bin/env node
/**
 * Completes package-lock.json with the other platforms' optional binary packages that the registry
 * reachable here does not serve (it answers 404 for e.g. @duckdb/node-bindings-darwin-arm64), so that
 * `npm install` leaves them out of the lock and `npm ci` then rejects the lock as out of sync. Each entry
 * names only its version, os, cpu (and libc): `npm ci` skips them on other platforms and never fetches them.
 * Run after any `npm install` that rewrites the lock: `node scripts/complete-lockfile.mjs`;
 * `--check` exits 1 (writing nothing) when entries are missing.
 */
import { readFileSync, writeFileSync } from 'node:fs'

const lockPath = new URL('../package-lock.json', import.meta.url)
const lock = JSON.parse(readFileSync(lockPath, 'utf8'))
const packages = lock.packages
let added = 0

function platformOf(name) {
  const m = /-(darwin|linux|win32|freebsd|android)-(x64|arm64|arm|ia32|ppc64|s390x|riscv64)(-(musl|gnu))?$/.exec(name)
  if (!m) return undefined
  return { os: [m[1]], cpu: [m[2]], ...(m[4] ? { libc: [m[4] === 'musl' ? 'musl' : 'glibc'] } : {}) }
}

for (const [path, entry] of Object.entries(packages)) {
  if (!entry.optionalDependencies) continue
  for (const [name, version] of Object.entries(entry.optionalDependencies)) {
    const nested = `${path}/node_modules/${name}`
    const hoisted = `node_modules/${name}`
    if (packages[nested] || packages[hoisted]) continue
    const platform = platformOf(name)
    if (!platform) continue
    packages[hoisted] = { version, ...platform, ...(entry.dev ? { dev: true } : {}), optional: true }
    added += 1
  }
}
if (process.argv.includes('--check')) {
  console.log(added === 0 ? 'complete-lockfile: complete' : `complete-lockfile: ${added} platform entries missing; run node scripts/complete-lockfile.mjs`)
  process.exit(added === 0 ? 0 : 1)
}
lock.packages = Object.fromEntries(Object.entries(packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b))))
writeFileSync(lockPath, `${JSON.stringify(lock, null, 2)}\n`)
console.log(`complete-lockfile: added ${added} platform entries`)
