import sharp from 'sharp'
import { describe, expect, it } from 'vitest'

import { PixelBudget } from '../../src/image/budget.js'
import { DEFAULT_IMAGE_DECODE, decodeImage } from '../../src/image/decode.js'
import { MAX_JPEG_SCANS, jpegHeader, pngHeader, pngOverrun, readImageHeader, webpHeader } from '../../src/image/headers.js'
import type { ImageDecodeError } from '../../src/errors.js'
import { cut, flat, lyingJpeg, lyingPng, manyScansJpeg, noisy } from '../helpers/hostile-images.js'
import * as img from '../helpers/images.js'

describe('readImageHeader', () => {
  it('reads the dimensions of JPEG, PNG, WebP (lossy, lossless, extended) and GIF', async () => {
    expect(readImageHeader(await img.jpeg(120, 60, 1))).toMatchObject({ format: 'jpeg', width: 120, height: 60 })
    expect(readImageHeader(await img.png(33, 17, 1))).toMatchObject({ format: 'png', width: 33, height: 17 })
    expect(readImageHeader(await img.webp(50, 40, 1))).toMatchObject({ format: 'webp', width: 50, height: 40 })
    const lossless = await sharp(await img.png(31, 29, 2)).webp({ lossless: true }).toBuffer()
    expect(webpHeader(lossless)).toMatchObject({ width: 31, height: 29 })
    const alpha = await sharp(await img.pngWithAlpha(21, 19, 3)).webp().toBuffer()
    expect(webpHeader(alpha)).toMatchObject({ width: 21, height: 19 })
    expect(readImageHeader(await img.animatedGif(12, 10, 4))).toMatchObject({ format: 'gif', width: 12, height: 10 })
    expect(readImageHeader(img.garbage(100, 1))).toBeUndefined()
  })

  it('reads JPEG components, scans, EXIF orientation and ICC', async () => {
    const base = jpegHeader(await img.jpeg(64, 64, 1))!
    expect(base).toMatchObject({ sof: 0xc0, precision: 8, scans: 1, orientation: 1, icc: false, arithmetic: false, complete: true })
    expect(base.components.map((c) => [c.h, c.v])).toEqual([[2, 2], [1, 1], [1, 1]])
    expect(jpegHeader(await img.rotatedJpeg(40, 20, 2))!.orientation).toBe(6)
    const progressive = jpegHeader(await sharp(await img.jpeg(64, 64, 1)).jpeg({ progressive: true }).toBuffer())!
    expect(progressive.sof).toBe(0xc2)
    expect(progressive.scans).toBeGreaterThan(1)
    const icc = await sharp(await img.jpeg(32, 32, 5)).withIccProfile('p3').jpeg().toBuffer()
    expect(jpegHeader(icc)!.icc).toBe(true)
    expect(jpegHeader(await img.cmykJpeg(16, 16, 3))!.components).toHaveLength(4)
  })

  it('finds that a JPEG header lies about its size (baseline and progressive), without a size ratio', async () => {
    for (const progressive of [false, true]) {
      const header = jpegHeader(await lyingJpeg(7999, 7999, progressive))!
      expect(header.width).toBe(7999)
      expect(header.shortfall).toMatch(/jpeg scan data ends before its header's 7999x7999 are filled/)
    }
    // Legitimate flat images compress to very little and must pass: 16 MP in 60-250 KB.
    for (const progressive of [false, true]) {
      const legit = await flat('jpeg', 4000, 4000, progressive)
      expect(legit.length).toBeLessThan(300_000)
      expect(jpegHeader(legit)!.shortfall).toBeUndefined()
    }
    // A cut photo still holds far more than the minimum: the bound does not claim it (the end marker does).
    const photo = await noisy('jpeg', 512)
    expect(jpegHeader(cut(photo, 0.5))!.shortfall).toBeUndefined()
  })

  it('finds that a PNG IHDR lies about its size; a flat PNG bomb is legitimate', async () => {
    expect(pngHeader(await lyingPng(7999, 7999))!.shortfall).toMatch(/png image data ends before its header's 7999x7999 are filled/)
    const bomb = await flat('png', 6000, 6000)
    expect(bomb.length).toBeLessThan(120_000)
    expect(pngHeader(bomb)!.shortfall).toBeUndefined()
  })

  it(`refuses a JPEG with more than ${MAX_JPEG_SCANS} scans`, async () => {
    expect(jpegHeader(await manyScansJpeg(MAX_JPEG_SCANS))!.refused).toBeUndefined()
    expect(jpegHeader(await manyScansJpeg(MAX_JPEG_SCANS + 1))!.refused).toMatch(/501 scans/)
  })

  it('never throws on cut or garbled headers', async () => {
    const jpeg = await img.jpeg(64, 64, 3)
    const png = await img.png(64, 64, 3)
    for (let n = 0; n < 400; n += 7) {
      expect(() => readImageHeader(jpeg.subarray(0, n))).not.toThrow()
      expect(() => readImageHeader(png.subarray(0, n))).not.toThrow()
      const garbled = Buffer.from(jpeg)
      garbled[n % jpeg.length] ^= 0x5a
      expect(() => readImageHeader(garbled)).not.toThrow()
    }
  })
})

describe('PixelBudget', () => {
  it('admits images while their pixels fit, one always, first come first served', async () => {
    const budget = new PixelBudget(100)
    const order: string[] = []
    const a = await budget.acquire(60)
    const b = budget.acquire(50).then((release) => (order.push('b'), release))
    const c = budget.acquire(10).then((release) => (order.push('c'), release))
    await Promise.resolve()
    expect(order).toEqual([]) // c fits, but waits behind b
    expect(budget.inFlightPixels).toBe(60)
    a()
    a() // a second release is a no-op
    const releaseB = await b
    const releaseC = await c
    expect(order).toEqual(['b', 'c'])
    expect(budget.inFlightPixels).toBe(60)
    releaseB()
    releaseC()
    expect(budget.inFlightPixels).toBe(0)
    const huge = await budget.acquire(1e9) // larger than the budget: admitted alone
    expect(budget.inFlightPixels).toBe(100)
    huge()
    expect(budget.peakPixels).toBe(100)
  })

  it('rejects a budget below 1', () => {
    expect(() => new PixelBudget(0)).toThrow(/maxPixelsInFlight/)
  })
})

describe('pngOverrun: a cut PNG whose end marker was put back', () => {
  const IEND = [0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]

  it('names the chunk that runs past the end of the file, and says nothing of a whole PNG', async () => {
    const png = await noisy('png', 64)
    expect(pngOverrun(png)).toBeUndefined()
    expect(pngOverrun(cut(png, 0.5, IEND))).toMatch(/^png chunk IDAT at byte \d+ claims \d+ bytes; the file ends \d+ bytes into it$/)
  })

  it('makes every such file truncated, whatever its pixels (the 12 bytes put back used to be inflated as data: corrupt or truncated by chance)', async () => {
    const outcomes: string[] = []
    for (let seed = 1; seed <= 24; seed++) {
      const bytes = cut(await noisy('png', 256, seed), 0.5, IEND)
      outcomes.push(await decodeImage(bytes, DEFAULT_IMAGE_DECODE).then(() => 'ok', (e: ImageDecodeError) => e.reason))
    }
    expect(outcomes).toEqual(new Array(24).fill('truncated'))
  })
})
