import sharp from 'sharp'
import { from } from 'rxjs'
import { describe, expect, it } from 'vitest'

import { decodeImages } from '../../operators/decode-images.js'
import { ShapeMismatchError } from '../../src/errors.js'
import { pixelValues } from '../../src/image/decode.js'
import { stackPixelValues } from '../../src/model/batch.js'
import type { DecodedImage } from '../../src/records.js'
import { imageRow } from '../helpers/records.js'
import { collect } from '../helpers/util.js'

const solid = (rgb: [number, number, number]) =>
  sharp({ create: { width: 8, height: 8, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer()

describe('stackPixelValues', () => {
  it('stacks images and clip frames into one contiguous [N, 3, H, W] tensor equal to per-record pixel_values', async () => {
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
