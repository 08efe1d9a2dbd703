/**
 * The fast path (small JPEGs and PNGs) against sharp: which files it takes, how close its pixels are (the stated tolerance),
 * and that every image's outcome and info are the same whichever path decodes it.
 */
import sharp from 'sharp'
import { describe, expect, it } from 'vitest'

import { DEFAULT_IMAGE_DECODE, decodeImage, type ImageDecodeOptions } from '../../src/image/decode.js'
import { FAST_MAX_PIXELS, fastEligible } from '../../src/image/fast-decode.js'
import { readImageHeader } from '../../src/image/headers.js'
import { lyingJpeg } from '../helpers/hostile-images.js'
import * as img from '../helpers/images.js'

const at64: ImageDecodeOptions = { ...DEFAULT_IMAGE_DECODE, width: 64, height: 64 }

/** Max and mean absolute difference per channel value between the two paths. */
async function difference(bytes: Uint8Array, options: ImageDecodeOptions): Promise<{ max: number; mean: number }> {
  const a = await decodeImage(bytes, { ...options, decoder: 'sharp' })
  const b = await decodeImage(bytes, { ...options, decoder: 'auto' })
  let max = 0
  let sum = 0
  for (let i = 0; i < a.pixels.length; i++) {
    const d = Math.abs(a.pixels[i] - b.pixels[i])
    max = Math.max(max, d)
    sum += d
  }
  return { max, mean: sum / a.pixels.length }
}

describe('fast decode path', () => {
  it('takes small baseline YCbCr or grey JPEGs resized by 2x or more, and leaves the rest to sharp', async () => {
    const eligible = async (bytes: Uint8Array, size = 64, resize: 'fill' | 'cover' = 'fill') => fastEligible(readImageHeader(bytes)!, resize, size, size)
    expect(await eligible(await img.jpeg(256, 256, 1))).toBe(true)
    expect(await eligible(await sharp(await img.greyPng(200, 200, 1)).jpeg().toBuffer())).toBe(true)
    expect(await eligible(await img.jpeg(256, 256, 1), 224)).toBe(false) // near 1:1: chroma upsampling shows
    expect(await eligible(await img.jpeg(256, 256, 1), 64, 'cover')).toBe(false)
    expect(await eligible(await img.jpeg(440, 440, 1))).toBe(true)
    expect(await eligible(await img.jpeg(480, 480, 1))).toBe(false) // > FAST_MAX_PIXELS
    expect(480 * 480).toBeGreaterThan(FAST_MAX_PIXELS)
    expect(await eligible(await sharp(await img.jpeg(256, 256, 1)).jpeg({ progressive: true }).toBuffer())).toBe(false)
    expect(await eligible(await img.cmykJpeg(256, 256, 1))).toBe(false)
    expect(await eligible(await img.rotatedJpeg(256, 200, 1))).toBe(false)
    expect(await eligible(await sharp(await img.jpeg(256, 256, 1)).withIccProfile('p3').jpeg().toBuffer())).toBe(false)
    expect(await eligible(await img.truncatedJpeg(256, 256, 1))).toBe(false)
    expect(await eligible(await img.png(256, 256, 1))).toBe(true)
    expect(await eligible(await img.greyPng(256, 256, 1))).toBe(true)
    expect(await eligible(await img.pngWithAlpha(256, 256, 1))).toBe(false) // alpha is flattened by sharp
    expect(await eligible(await img.png16(256, 256, 1))).toBe(false)
    expect(await eligible(await sharp(await img.png(256, 256, 1)).png({ palette: true }).toBuffer())).toBe(false)
    expect(await eligible(await sharp(await img.png(256, 256, 1)).withIccProfile('p3').png().toBuffer())).toBe(false)
    expect(await eligible(await img.webp(256, 256, 1))).toBe(false)
  })

  it('gives pixels within the stated tolerance of sharp: mean |diff| <= 0.5, max |diff| <= 64 per channel value', async () => {
    // Measured on the fixtures' 512 scenes and 500 photo crops at 256 px → 64 px: mean 0.16 / 0.30, max 25 / 42.
    let worstMean = 0
    let worstMax = 0
    for (let seed = 0; seed < 12; seed++) {
      const bytes = seed % 3 === 2 ? await img.png(256 - seed * 8, 256, seed) : await img.jpeg(256 - seed * 8, 256, seed, 70 + seed * 2)
      const { max, mean } = await difference(bytes, at64)
      worstMean = Math.max(worstMean, mean)
      worstMax = Math.max(worstMax, max)
    }
    expect(worstMean).toBeLessThanOrEqual(0.5)
    expect(worstMax).toBeLessThanOrEqual(64)
    expect(worstMean).toBeGreaterThan(0) // the paths really differ: this compares two decoders
  })

  it('reports the same info as sharp (scan writes it), with and without hash', async () => {
    for (const bytes of [await img.jpeg(256, 200, 3), await sharp(await img.greyPng(160, 160, 4)).jpeg().toBuffer(), await img.png(200, 180, 5), await img.greyPng(160, 160, 6)]) {
      for (const hash of [false, true]) {
        const a = await decodeImage(bytes, { ...at64, hash, decoder: 'sharp' })
        const b = await decodeImage(bytes, { ...at64, hash, decoder: 'auto' })
        expect(b.info).toEqual(a.info)
      }
    }
  })

  it("takes a JPEG's info from its header exactly as sharp's metadata reports it", async () => {
    const jpegs = [
      await img.jpeg(120, 80, 1),
      await img.rotatedJpeg(120, 60, 2),
      await img.cmykJpeg(40, 30, 3),
      await sharp(await img.greyPng(50, 40, 4)).jpeg().toBuffer(),
      await sharp(await img.jpeg(300, 200, 5)).jpeg({ progressive: true }).toBuffer(),
      ...(await Promise.all([1, 2, 3, 4, 5, 7, 8].map(async (orientation) => sharp(await img.jpeg(90, 50, orientation)).jpeg().withMetadata({ orientation }).toBuffer()))),
    ]
    for (const bytes of jpegs) {
      const meta = await sharp(bytes).metadata()
      const { info } = await decodeImage(bytes, { ...at64, decoder: 'sharp' })
      expect(info).toMatchObject({ width: meta.autoOrient.width, height: meta.autoOrient.height, format: 'jpeg', channels: meta.channels, bitDepth: 8 })
    }
  })

  it('gives the same outcome as sharp on 400 mutated JPEGs and 200 mutated PNGs, and on lying and cut ones', async () => {
    const random = img.rng(7)
    const outcome = (bytes: Uint8Array, decoder: 'auto' | 'sharp') =>
      decodeImage(bytes, { ...at64, decoder }).then(
        () => 'ok',
        (error: { reason?: string }) => error.reason ?? 'threw',
      )
    const mismatches: string[] = []
    for (let k = 0; k < 10; k++) {
      const base = await img.jpeg(200 + k * 9, 180, k, 80)
      for (let m = 0; m < 40; m++) {
        const bytes = Buffer.from(base)
        for (let f = 0; f <= Math.floor(random() * 4); f++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256)
        const [a, b] = [await outcome(bytes, 'sharp'), await outcome(bytes, 'auto')]
        if (a !== b) mismatches.push(`${k}/${m}: sharp ${a}, auto ${b}`)
      }
    }
    for (let k = 0; k < 5; k++) {
      const base = await img.png(200 + k * 9, 180, k)
      for (let m = 0; m < 40; m++) {
        const bytes = Buffer.from(base)
        for (let f = 0; f <= Math.floor(random() * 4); f++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256)
        const [a, b] = [await outcome(bytes, 'sharp'), await outcome(bytes, 'auto')]
        if (a !== b) mismatches.push(`png ${k}/${m}: sharp ${a}, auto ${b}`)
      }
    }
    expect(mismatches).toEqual([])
    for (const bytes of [await lyingJpeg(7999, 7999, false), await img.truncatedJpeg(256, 256, 2), Buffer.concat([(await img.jpeg(256, 256, 3)).subarray(0, 600), Buffer.from([0xff, 0xd9])])]) {
      expect(await outcome(bytes, 'auto')).toBe(await outcome(bytes, 'sharp'))
    }
  })

})
