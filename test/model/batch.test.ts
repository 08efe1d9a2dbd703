import sharp from 'sharp'
import { from } from 'rxjs'
import { describe, expect, it } from 'vitest'

import { decodeImages } from '../../operators/decode-images.js'
import { ShapeMismatchError } from '../../src/errors.js'
import { pixelValues } from '../../src/image/decode.js'
import { admitImages, stackPixelValues } from '../../src/model/batch.js'
import type { DecodedImage } from '../../src/records.js'
import { imageRow } from '../helpers/records.js'
import { collect } from '../helpers/util.js'

const solid = (rgb: [number, number, number]) =>
  sharp({ create: { width: 8, height: 8, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer()

describe('stackPixelValues', () => {
  it('normalises uint8 HWC pixels of images and clip frames into one contiguous float32 [N, 3, H, W] tensor equal to per-record pixel_values', async () => {
    const rows = [imageRow(0, await solid([255, 0, 0])), { ...imageRow(1, null), frames: [await solid([0, 255, 0]), await solid([0, 0, 255])] }, imageRow(2, await solid([10, 20, 30]))]
    const decoded = (await collect(from(rows).pipe(decodeImages({ size: 4, ordered: true })))) as DecodedImage[]
    const batch = stackPixelValues(decoded)
    expect(batch.pixel_values.dims).toEqual([4, 3, 4, 4])
    expect(batch.frames).toEqual([1, 2, 1])
    const expected = new Float32Array(decoded.flatMap((d) => Array.from(pixelValues(d))))
    expect(Array.from(batch.pixel_values.data as Float32Array)).toEqual(Array.from(expected))
  })

  it('rejects an empty batch and mixed sizes', async () => {
    expect(() => stackPixelValues([])).toThrow(ShapeMismatchError)
    const a = (await collect(from([imageRow(0, await solid([1, 2, 3]))]).pipe(decodeImages({ size: 4 })))) as DecodedImage[]
    const b = (await collect(from([imageRow(1, await solid([1, 2, 3]))]).pipe(decodeImages({ size: 6 })))) as DecodedImage[]
    expect(() => stackPixelValues([...a, ...b])).toThrow(/pixel_values: expected shape \[3, 4, 4\], got \[3, 6, 6\]/)
  })
})

describe('admitImages', () => {
  const options = { imageSize: 4, maxFrames: 3, tooManyFrames: 'sample' as const, stage: 'extractVitFeatures' }
  const decoded = async () => (await collect(from([imageRow(0, await solid([255, 0, 0])), imageRow(1, await solid([0, 0, 255]))]).pipe(decodeImages({ size: 4, ordered: true })))) as DecodedImage[]
  /** A clip of `frames` frames whose frame f is the first image's pixels plus f. */
  const clipOf = (image: DecodedImage, frames: number): DecodedImage => {
    const pixels = new Uint8Array(frames * image.pixels.length)
    for (let f = 0; f < frames; f++) pixels.set(image.pixels.map((v) => (v + f) % 256), f * image.pixels.length)
    return { ...image, frames, pixels }
  }

  it('admits images at the model\'s size, in order, untouched', async () => {
    const images = await decoded()
    const { admitted, refused } = admitImages(images, options)
    expect(admitted).toEqual(images)
    expect(admitted[0]).toBe(images[0])
    expect(refused).toEqual([])
  })

  it('samples a long clip to max frames (first and last kept) or refuses it; refuses another size', async () => {
    const [image, other] = await decoded()
    const long = clipOf(image, 5)
    const [sampled] = admitImages([long], options).admitted
    const plane = image.pixels.length
    expect(sampled.frames).toBe(3)
    expect([sampled.pixels[0], sampled.pixels[plane], sampled.pixels[2 * plane]]).toEqual([long.pixels[0], long.pixels[2 * plane], long.pixels[4 * plane]])
    const refused = admitImages([long, { ...other, width: 8 }], { ...options, tooManyFrames: 'error' }).refused
    expect(refused.map((r) => [r.code, r.id, r.message])).toEqual([
      ['too-many-frames', 'id-0', 'a clip of 5 frames; the model takes at most 3'],
      ['stage-failed', 'id-1', 'decoded at 8x4; the model takes 4x4 (decodeImages({ size: 4 }))'],
    ])
    // sampling needs a first and a last frame: a model of one frame refuses every clip
    expect(admitImages([clipOf(image, 2)], { ...options, maxFrames: 1 }).refused.map((r) => r.code)).toEqual(['too-many-frames'])
  })
})
