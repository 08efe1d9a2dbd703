/**
 * The real-photo generator (`tools/photos.ts`) on stand-in photos made here (the wallpaper packages are not
 * needed): seeded, deterministic, the sizes and formats it promises, never upscaled.
 */
import { mkdirSync, readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import sharp from 'sharp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { PhotosMissingError, buildPhotoSets, readPhotoSet } from '../../tools/photos.js'
import { tempDir } from '../helpers/util.js'

let dir: string
let cleanup: () => void
beforeAll(async () => {
  ;({ dir, cleanup } = tempDir('evflow-photos-'))
  mkdirSync(join(dir, 'src'))
  // 20 stand-in "photos", noisy like real ones: four of 12.5 MP (JPEG), the rest 0.75 MP as JPEG, PNG and WebP.
  for (let i = 0; i < 20; i++) {
    const [width, height] = i < 4 ? [4300, 2900] : [1000 + i * 4, 750]
    const image = sharp({ create: { width, height, channels: 3, background: { r: 0, g: 0, b: 0 }, noise: { type: 'gaussian', mean: 100 + i, sigma: 30 } } })
    const kind = i < 4 ? 0 : i % 3
    const file = join(dir, 'src', `p${String(i).padStart(2, '0')}.${['jpg', 'png', 'webp'][kind]}`)
    await (kind === 0 ? image.jpeg() : kind === 1 ? image.png({ compressionLevel: 1 }) : image.webp()).toFile(file)
  }
}, 600_000)
afterAll(() => cleanup())

describe('tools/photos', () => {
  it('builds seeded mixed and sized sets that are the same bytes twice', async () => {
    const roots = [{ dir: join(dir, 'src'), pkg: 'test' }]
    const build = (out: string) => buildPhotoSets({ out: join(dir, out), rows: 24, sizedRows: 6, sets: ['mixed', 'jpeg-256', 'webp-640'], roots, log: () => {} })
    const a = await build('a')
    const b = await build('b')
    for (const name of ['mixed', 'jpeg-256', 'webp-640']) {
      const files = readdirSync(a.sets[name]).filter((f) => f.endsWith('.parquet'))
      expect(files.length).toBeGreaterThan(0)
      for (const f of files) expect(readFileSync(join(a.sets[name], f)).equals(readFileSync(join(b.sets[name], f)))).toBe(true)
    }
    const mixed = await readPhotoSet(a.sets.mixed)
    expect(mixed).toHaveLength(24)
    const metas = await Promise.all(mixed.map((bytes) => sharp(bytes).metadata()))
    for (const m of metas) {
      const mp = (m.width! * m.height!) / 1e6
      expect(mp).toBeGreaterThanOrEqual(0.29)
      expect(mp).toBeLessThanOrEqual(12.01)
    }
    expect(new Set(metas.map((m) => m.format))).toEqual(new Set(['jpeg', 'png', 'webp']))
    for (const [set, format, side] of [['jpeg-256', 'jpeg', 256], ['webp-640', 'webp', 640]] as const) {
      const images = await readPhotoSet(a.sets[set])
      expect(images).toHaveLength(6)
      for (const bytes of images) {
        const m = await sharp(bytes).metadata()
        expect(m.format).toBe(format)
        expect(Math.max(m.width!, m.height!)).toBe(side)
      }
    }
    // A second build reuses the finished folders.
    expect((await buildPhotoSets({ out: join(dir, 'a'), rows: 24, sizedRows: 6, sets: ['mixed'], roots, log: () => {} })).sets.mixed).toBe(a.sets.mixed)
  }, 300_000)

  it('says how to get photos when there are none', async () => {
    await expect(buildPhotoSets({ out: join(dir, 'none'), roots: [{ dir: join(dir, 'nothing'), pkg: 'x' }], log: () => {} })).rejects.toThrow(PhotosMissingError)
  })
})
