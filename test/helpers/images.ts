/**
 * Small test images in every layout `decodeImages` must handle, made with sharp from a seed, and the
 * broken inputs it must turn into error rows. Deterministic for a given seed.
 */
import sharp from 'sharp'

import { seededRandom } from '../../app/report/sample.js'

/** A tiny seeded PRNG (mulberry32): the report's sampler's. */
export const rng = seededRandom

/** RGB pixels of a seeded scene: a gradient background and a solid rectangle. */
function pixels(width: number, height: number, seed: number, channels = 3): Buffer {
  const random = rng(seed)
  const c1 = [random() * 255, random() * 255, random() * 255]
  const c2 = [random() * 255, random() * 255, random() * 255]
  const box = [random() * width * 0.5, random() * height * 0.5]
  const out = Buffer.alloc(width * height * channels)
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inBox = x > box[0] && x < box[0] + width / 3 && y > box[1] && y < box[1] + height / 3
      for (let c = 0; c < channels; c++) {
        const v = c < 3 ? (inBox ? c2[c] : (c1[c] * x) / width) : 128 + (x % 2) * 127
        out[(y * width + x) * channels + c] = Math.round(v)
      }
    }
  }
  return out
}

export async function jpeg(width: number, height: number, seed: number, quality = 85): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).jpeg({ quality }).toBuffer()
}

export async function png(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).png().toBuffer()
}

export async function pngWithAlpha(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed, 4), { raw: { width, height, channels: 4 } }).png().toBuffer()
}

export async function greyPng(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).toColourspace('b-w').png().toBuffer()
}

export async function png16(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).toColourspace('rgb16').png().toBuffer()
}

export async function cmykJpeg(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).toColourspace('cmyk').jpeg().toBuffer()
}

export async function webp(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).webp().toBuffer()
}

/** A JPEG stored landscape with EXIF orientation 6 (display rotated 90° clockwise: portrait). */
export async function rotatedJpeg(width: number, height: number, seed: number): Promise<Buffer> {
  return sharp(pixels(width, height, seed), { raw: { width, height, channels: 3 } }).jpeg().withMetadata({ orientation: 6 }).toBuffer()
}

/** A two-frame animated GIF. */
export async function animatedGif(width: number, height: number, seed: number): Promise<Buffer> {
  const frame1 = pixels(width, height, seed)
  const frame2 = pixels(width, height, seed + 1)
  return sharp(Buffer.concat([frame1, frame2]), { raw: { width, height: height * 2, channels: 3, pageHeight: height } as never })
    .gif({ loop: 0 })
    .toBuffer()
}

/** The first `fraction` of a valid JPEG. */
export async function truncatedJpeg(width: number, height: number, seed: number, fraction = 0.5): Promise<Buffer> {
  const full = await jpeg(width, height, seed)
  return full.subarray(0, Math.floor(full.length * fraction))
}

/** Bytes that are no image format. */
export function garbage(length: number, seed: number): Buffer {
  const random = rng(seed)
  return Buffer.from(Array.from({ length }, () => Math.floor(random() * 256)))
}
