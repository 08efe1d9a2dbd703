/**
 * The input side of the output folder: the naming rule (input identity → output name is injective, also
 * ignoring case, and every name fits), the overlap check between the output folder and the inputs, and
 * input discovery that never picks up evflow's own outputs.
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { OutputNameCollisionError, UnsafeOutputError } from '../../src/errors.js'
import { MAX_NAME_CHARS, assignOutputNames, checkOutputFolder, outputNames, resolveInputs, type ShardIdentity } from '../../src/parquet/inputs.js'
import { rng } from '../helpers/images.js'
import { tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(() => ({ dir, cleanup } = tempDir('evflow-inputs-')))
afterAll(() => cleanup())

const SAFE = /^[A-Za-z0-9=-][A-Za-z0-9._=~-]*$/

describe('assignOutputNames', () => {
  it('keeps plain names plain: the file name, `.rows-start-end` for a part', () => {
    expect(outputNames(['/d/part-00000.parquet', '/d/part-00001.parquet'])).toEqual(['part-00000', 'part-00001'])
    expect(assignOutputNames([{ path: '/d/test.parquet', rows: [0, 128] }, { path: '/e/video.parquet' }])).toEqual(['test.rows-0-128', 'video'])
  })

  it('uses relative paths when file names repeat, and hashes what sanitising changed', () => {
    expect(outputNames(['/d/a/x.parquet', '/d/b/x.parquet'])).toEqual(['a__x', 'b__x'])
    const joined = outputNames(['/d/a/b.parquet', '/d/a__b.parquet', '/d/c/a__b.parquet'])
    expect(joined[2]).toBe('c__a__b')
    expect(joined[0]).toMatch(/^a__b~[0-9a-f]{10}$/)
    expect(joined[1]).toMatch(/^a__b~[0-9a-f]{10}$/)
    expect(joined[0]).not.toBe(joined[1])
    const [unicode, plain] = outputNames(['/d/图像.parquet', '/d/shard-1.parquet'])
    expect(unicode).toMatch(/^shard~[0-9a-f]{10}$/)
    expect(plain).toBe('shard-1')
  })

  it('gives a hashed name that does not depend on the other inputs', () => {
    const alone = outputNames(['/d/图像.parquet'])[0]
    const withOthers = outputNames(['/d/画像.parquet', '/d/图像.parquet', '/d/plain.parquet'])[1]
    expect(withOthers).toBe(alone)
  })

  it('separates names that meet only after sanitising or ignoring case, and `--rows` suffix look-alikes', () => {
    const names = assignOutputNames([
      { path: '/d/a b.parquet' },
      { path: '/d/a_b.parquet' },
      { path: '/d/a_b-1.parquet' },
      { path: '/d/Photos.parquet' },
      { path: '/d/photos.parquet' },
      { path: '/d/x.parquet', rows: [0, 24] },
      { path: '/d/x.rows-0-24.parquet' },
    ])
    expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(names.length)
    expect(names[2]).toBe('a_b-1')
  })

  it('is injective on 200 random hostile plans (case-insensitively), every name safe and at most 128 bytes', () => {
    const random = rng(17)
    const pieces = ['a', 'A', 'b', ' ', '_', '.', '-', '~', 'é', '图', '像', '.rows-0-24', '__', '/', 'x'.repeat(90), '=', '+']
    for (let plan = 0; plan < 200; plan++) {
      const shards: ShardIdentity[] = []
      const files = new Set<string>()
      const count = 2 + Math.floor(random() * 12)
      while (files.size < count) {
        let name = ''
        const length = 1 + Math.floor(random() * 5)
        for (let i = 0; i < length; i++) name += pieces[Math.floor(random() * pieces.length)]
        const path = `/data/${name.replace(/^\/+|\/+$/g, '').replace(/\/+/g, '/') || 'f'}.parquet`
        if (path.includes('/./') || path.includes('/../') || path.includes('//')) continue
        files.add(path)
      }
      for (const path of files) {
        if (random() < 0.5) shards.push({ path })
        else {
          shards.push({ path, rows: [0, 24] })
          if (random() < 0.5) shards.push({ path, rows: [24, 48] })
        }
      }
      const names = assignOutputNames(shards)
      expect(new Set(names.map((n) => n.toLowerCase())).size, JSON.stringify(shards)).toBe(shards.length)
      for (const name of names) {
        expect(name).toMatch(SAFE)
        expect(Buffer.byteLength(name)).toBeLessThanOrEqual(MAX_NAME_CHARS)
      }
    }
  })

  it('shortens long names to fit, keeping them distinct', () => {
    const long = 'n'.repeat(239)
    const names = assignOutputNames([{ path: `/d/${long}.parquet` }, { path: `/d/${long}x.parquet` }, { path: `/d/${long}.parquet`.replace('/d/', '/e/'), rows: [5, 9] }])
    expect(new Set(names).size).toBe(3)
    for (const name of names) expect(name.length).toBeLessThanOrEqual(MAX_NAME_CHARS)
    expect(names[2]).toMatch(/\.rows-5-9~[0-9a-f]{10}$/)
  })

  it('refuses, naming both inputs, two shards that would still share a name', () => {
    const twice = () => assignOutputNames([{ path: '/d/图像.parquet', rows: [0, 4] }, { path: '/d/图像.parquet', rows: [0, 4] }])
    expect(twice).toThrow(OutputNameCollisionError)
    expect(twice).toThrow(/\/d\/图像\.parquet rows 0:4 and \/d\/图像\.parquet rows 0:4 would share the output name/)
  })
})

describe('checkOutputFolder', () => {
  let input: string
  beforeAll(() => {
    input = join(dir, 'data')
    mkdirSync(join(input, 'sub'), { recursive: true })
    writeFileSync(join(input, 'a.parquet'), 'x')
    symlinkSync(input, join(dir, 'data-link'))
  })

  it('accepts a separate folder, existing or not', () => {
    expect(() => checkOutputFolder(join(dir, 'out'), [input], [join(input, 'a.parquet')])).not.toThrow()
    expect(() => checkOutputFolder(join(dir, 'out', 'deep', 'er'), [`${input}/**/*.parquet`], [])).not.toThrow()
    // An output beside an input file it does not contain, also when a flat glob named the file.
    expect(() => checkOutputFolder(join(input, 'sub', 'out'), [join(input, 'a.parquet')], [join(input, 'a.parquet')])).not.toThrow()
    expect(() => checkOutputFolder(join(input, 'out'), [`${input}/*.parquet`], [join(input, 'a.parquet')])).not.toThrow()
  })

  it('refuses the input folder, a folder inside it, one containing it, and sees through symlinks and globs', () => {
    const cases: [string, string[], string[]][] = [
      [input, [input], []],
      [join(input, 'sub', 'out'), [input], []],
      [dir, [input], []],
      [join(dir, 'data-link', 'out'), [input], []],
      [join(input, 'out'), [join(dir, 'data-link')], []],
      [join(input, 'out'), [`${input}/**/*.parquet`], []],
      [join(input, 'out'), [`${input}/*/x.parquet`], []],
      [input, [`${input}/*.parquet`], [join(input, 'a.parquet')]],
      [input, [join(input, 'a.parquet')], [join(input, 'a.parquet')]],
      [join(input, 'a.parquet'), [join(input, 'a.parquet')], []],
    ]
    for (const [out, inputs, files] of cases) expect(() => checkOutputFolder(out, inputs, files), `${out} vs ${inputs.join(' ')}`).toThrow(UnsafeOutputError)
  })
})

describe('resolveInputs', () => {
  it('skips evflow output folders found below a named folder, reads one named directly', async () => {
    const root = join(dir, 'discover')
    mkdirSync(join(root, 'data'), { recursive: true })
    mkdirSync(join(root, 'old-out', '_evflow', 'commits'), { recursive: true })
    mkdirSync(join(root, 'old-out', '_evflow', 'stale', 't'), { recursive: true })
    writeFileSync(join(root, 'data', 'a.parquet'), 'x')
    writeFileSync(join(root, 'old-out', 'a.parquet'), 'x')
    writeFileSync(join(root, 'old-out', '_evflow', 'stale', 't', 'b.parquet'), 'x')
    expect(await resolveInputs([root])).toEqual([join(root, 'data', 'a.parquet')])
    expect(await resolveInputs([`${root}/**/*.parquet`])).toEqual([join(root, 'data', 'a.parquet')])
    expect(await resolveInputs([join(root, 'old-out')])).toEqual([join(root, 'old-out', 'a.parquet')])
    expect(await resolveInputs([join(root, 'old-out', 'a.parquet')])).toEqual([join(root, 'old-out', 'a.parquet')])
  })
})
