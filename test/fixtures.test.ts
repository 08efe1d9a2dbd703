import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

import { ROOT } from './helpers/cli.js'
import { makeFixtures } from '../tools/make-fixtures.js'
import { tempDir } from './helpers/util.js'

const { dir, cleanup } = tempDir('evflow-fixtures-')
afterAll(() => cleanup())

describe('fixtures/shards', () => {
  it('are reproduced byte for byte by their seeded generator', async () => {
    await makeFixtures(dir)
    const committed = join(ROOT, 'fixtures', 'shards')
    const files = readdirSync(committed).filter((f) => f.endsWith('.parquet')).sort()
    expect(readdirSync(dir).sort()).toEqual(files)
    for (const file of files) expect(readFileSync(join(dir, file)).equals(readFileSync(join(committed, file)))).toBe(true)
  })
})

describe('package-lock.json', () => {
  it('lists every platform binary npm ci expects (scripts/complete-lockfile.mjs --check)', async () => {
    const { spawnSync } = await import('node:child_process')
    const result = spawnSync(process.execPath, ['scripts/complete-lockfile.mjs', '--check'], { cwd: ROOT, encoding: 'utf8' })
    expect(result.stdout.trim()).toBe('complete-lockfile: complete')
    expect(result.status).toBe(0)
  })
})
