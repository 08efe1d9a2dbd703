import { existsSync } from 'node:fs'

import sharp from 'sharp'
import { describe, expect, it } from 'vitest'

import { MODEL_SIZE, resizeForModel } from '../../scenes/pixels.js'
import { DEFAULT_IMAGE_DECODE, decodeImage } from '../../src/image/decode.js'
import { imageSceneSvg, renderImage, renderVideo } from '../../scenes/render.js'
import { Rng } from '../../scenes/rng.js'
import { sampleImageScene, sampleVideoScene, type ImageScene, type VideoScene } from '../../scenes/scene.js'
import { SHAPES } from '../../scenes/words.js'

async function rgbAt(encoded: Buffer, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(encoded).raw().toBuffer({ resolveWithObject: true })
  const o = (Math.round(y) * info.width + Math.round(x)) * info.channels
  return [data[o], data[o + 1], data[o + 2]]
}

const hex = (c: [number, number, number]) => '#' + c.map((v) => v.toString(16).padStart(2, '0')).join('')

/** One object of every shape, PNG on a plain background. */
function allShapes(): ImageScene {
  const fills = ['#e02020', '#20a040', '#2050e0', '#f0d020', '#a040c0', '#10c0d0']
  return {
    kind: 'image',
    width: 256,
    height: 256,
    format: 'png',
    quality: null,
    background: { kind: 'plain', color: '#777777' },
    objects: SHAPES.map((shape, i) => ({
      shape,
      color: 'red',
      size: i % 2 === 0 ? 'large' : 'small',
      row: Math.floor(i / 3),
      col: i % 3,
      position: 'top',
      x: (i % 3) * 85.33 + 42.5,
      y: Math.floor(i / 3) * 85.33 + 42.5,
      r: i % 2 === 0 ? 34 : 22,
      fill: fills[i],
    })),
  }
}

describe('renderImage', () => {
  it('draws every shape in its fill at its scene coordinates, over the background', async () => {
    const scene = allShapes()
    const png = await renderImage(scene)
    const meta = await sharp(png).metadata()
    expect([meta.format, meta.width, meta.height, meta.channels]).toEqual(['png', 256, 256, 3])
    for (const o of scene.objects) expect(hex(await rgbAt(png, o.x, o.y)), o.shape).toBe(o.fill)
    expect(hex(await rgbAt(png, 128, 250))).toBe('#777777')
  })

  it('is deterministic and honours the scene size and encoding', async () => {
    for (let i = 0; i < 24; i++) {
      const scene = sampleImageScene(new Rng([5, i]))
      const a = await renderImage(scene)
      const b = await renderImage(scene)
      expect(a.equals(b)).toBe(true)
      const meta = await sharp(a).metadata()
      expect([meta.format, meta.width, meta.height]).toEqual([scene.format, scene.width, scene.height])
      expect(await imageSceneSvg(scene)).toContain(`width="${scene.width}"`)
    }
  })

  it('varies backgrounds, sizes and encodings', () => {
    const scenes = Array.from({ length: 400 }, (_, i) => sampleImageScene(new Rng([6, i])))
    const kinds = new Set(scenes.map((s) => s.background.kind))
    expect([...kinds].sort()).toEqual(['gradient', 'noise', 'plain'])
    const square = scenes.filter((s) => s.width === 256 && s.height === 256).length
    expect(square / scenes.length).toBeGreaterThan(0.6)
    expect(new Set(scenes.map((s) => `${s.width}x${s.height}`)).size).toBeGreaterThan(5)
    expect(new Set(scenes.map((s) => s.format)).size).toBe(2)
    const qualities = scenes.flatMap((s) => (s.quality === null ? [] : [s.quality]))
    expect(Math.min(...qualities)).toBeLessThan(50)
    expect(Math.max(...qualities)).toBeGreaterThan(90)
  })
})

describe('renderVideo', () => {
  it('renders every frame at the same size with the objects moving along their paths', async () => {
    let scene: VideoScene | null = null
    for (let i = 0; scene === null; i++) {
      const s = sampleVideoScene(new Rng([8, i]))
      if (s.format === 'png' && s.background.kind === 'plain' && s.objects.length === 2) scene = s
    }
    const frames = await renderVideo(scene)
    expect(frames).toHaveLength(scene.frames)
    for (const [t, frame] of frames.entries()) {
      const meta = await sharp(frame).metadata()
      expect([meta.width, meta.height]).toEqual([scene.width, scene.height])
      for (const o of scene.objects) expect(hex(await rgbAt(frame, o.path[t][0], o.path[t][1]))).toBe(o.fill)
    }
    for (const o of scene.objects) {
      const [x0, y0] = o.path[0]
      const [x1, y1] = o.path[scene.frames - 1]
      const moved = { right: x1 - x0, left: x0 - x1, down: y1 - y0, up: y0 - y1 }[o.direction]
      expect(moved).toBeGreaterThan(0.29 * (o.direction === 'left' || o.direction === 'right' ? scene.width : scene.height))
    }
  })

  it('keeps clips within 4-8 frames and two objects apart', () => {
    for (let i = 0; i < 300; i++) {
      const s = sampleVideoScene(new Rng([9, i]))
      expect(s.frames).toBeGreaterThanOrEqual(4)
      expect(s.frames).toBeLessThanOrEqual(8)
      for (const o of s.objects)
        for (const [x, y] of o.path) {
          expect(x - o.r).toBeGreaterThanOrEqual(0)
          expect(y - o.r).toBeGreaterThanOrEqual(0)
          expect(x + o.r).toBeLessThanOrEqual(s.width)
          expect(y + o.r).toBeLessThanOrEqual(s.height)
        }
      if (s.objects.length === 2) {
        const [a, b] = s.objects
        expect(a.color !== b.color || a.shape !== b.shape).toBe(true)
        for (let t = 0; t < s.frames; t++) {
          const d = Math.hypot(a.path[t][0] - b.path[t][0], a.path[t][1] - b.path[t][1])
          expect(d).toBeGreaterThan(a.r + b.r)
        }
      }
    }
  })
})

describe('resizeForModel', () => {
  it('stretches any image to 64x64 RGB uint8', async () => {
    const scene: ImageScene = { ...allShapes(), width: 384, height: 216, objects: [] }
    scene.objects = [{ ...allShapes().objects[0], x: 48, y: 36, r: 20 }]
    const png = await renderImage(scene)
    const px = await resizeForModel(png)
    expect(px.byteLength).toBe(MODEL_SIZE * MODEL_SIZE * 3)
    // the object's centre maps to (48/384, 36/216) of the 64x64 grid: stretched, not letterboxed
    const o = (Math.round((36 / 216) * 64) * 64 + Math.round((48 / 384) * 64)) * 3
    expect(hex([px[o], px[o + 1], px[o + 2]])).toBe(scene.objects[0].fill)
    expect((await resizeForModel(png, 32)).byteLength).toBe(32 * 32 * 3)
  })

  it('gives exactly the pixels of evflow decodeImage (resize fill, sharp decoder), so training matches inference', async () => {
    // The default decoder's fast path is within a stated tolerance of these pixels (test/image/fast-decode.test.ts).
    const options = { ...DEFAULT_IMAGE_DECODE, width: 64, height: 64, resize: 'fill' as const, decoder: 'sharp' as const }
    for (let i = 0; i < 12; i++) {
      const scene = sampleImageScene(new Rng([10, i]))
      const encoded = await renderImage(scene)
      const hwc = await resizeForModel(encoded)
      const { pixels } = await decodeImage(encoded, options)
      expect(Buffer.from(pixels).equals(Buffer.from(hwc))).toBe(true)
    }
  })
})
