/**
 * Hostile images for the decoder's budgets, generated from a seed (nothing committed): headers that lie
 * about their size, decompression bombs, cut data, a nested-`<use>` SVG, too many progressive scans.
 */
import sharp from 'sharp'

import { seededRandom } from '../../app/report/sample.js'

/** Rewrites the dimensions in a JPEG's SOF segment. */
export function patchJpegSize(jpeg: Uint8Array, width: number, height: number): Buffer {
  const b = Buffer.from(jpeg)
  for (let i = 2; i + 9 < b.length; ) {
    if (b[i] !== 0xff) throw new Error(`no marker at ${i}`)
    const marker = b[i + 1]
    const length = b.readUInt16BE(i + 2)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      b.writeUInt16BE(height, i + 5)
      b.writeUInt16BE(width, i + 7)
      return b
    }
    i += 2 + length
  }
  throw new Error('no SOF segment')
}

/** A real 16×16 JPEG whose header claims `width × height` (the "16×16 JPEG that says 7999×7999"). */
export async function lyingJpeg(width = 7999, height = 7999, progressive = true): Promise<Buffer> {
  const small = await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: 200, g: 10, b: 10 } } }).jpeg({ progressive }).toBuffer()
  return patchJpegSize(small, width, height)
}

/** A real 16×16 PNG whose IHDR claims `width × height` (CRC fixed, so only the data can tell). */
export async function lyingPng(width = 7999, height = 7999): Promise<Buffer> {
  const b = Buffer.from(await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toBuffer())
  b.writeUInt32BE(width, 16)
  b.writeUInt32BE(height, 20)
  b.writeUInt32BE(crc32(b.subarray(12, 29)), 29)
  return b
}

/** A legitimate flat image of `width × height`: compresses to a few bytes per block, decodes fine. */
export async function flat(format: 'jpeg' | 'png', width: number, height: number, progressive = false): Promise<Buffer> {
  const image = sharp({ create: { width, height, channels: 3, background: { r: 90, g: 120, b: 30 } } })
  return format === 'jpeg' ? image.jpeg({ progressive }).toBuffer() : image.png({ compressionLevel: 9 }).toBuffer()
}

/**
 * A noisy (photo-like entropy) image: what a cut leaves is still plenty of data for its size. Gaussian
 * noise around 128 (sigma 40) from a seeded generator, so that the same seed gives the same bytes (libvips'
 * own `noise` is not seeded: a test's outcome must not depend on the run).
 */
export async function noisy(format: 'jpeg' | 'png' | 'webp', side: number, seed = 1): Promise<Buffer> {
  const random = seededRandom(seed)
  const pixels = Buffer.alloc(side * side * 3)
  for (let i = 0; i < pixels.length; i++) {
    // Box-Muller; 1 - random() is in (0, 1], so the log is finite
    const gaussian = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
    pixels[i] = Math.max(0, Math.min(255, Math.round(128 + 40 * gaussian)))
  }
  return sharp(pixels, { raw: { width: side, height: side, channels: 3 } })[format]().toBuffer()
}

/** The first `fraction` of `bytes`, then `tail` (e.g. the end marker put back). */
export function cut(bytes: Uint8Array, fraction: number, tail: readonly number[] = []): Buffer {
  return Buffer.concat([bytes.subarray(0, Math.floor(bytes.length * fraction)), Buffer.from(tail)])
}

/**
 * An SVG of `depth` levels of `fan` nested `<use>` of a blurred full-canvas rectangle: fan^depth blurred
 * rectangles, 1.8 KB at depth 5 / fan 10, which librsvg renders in about a minute on one core, in one
 * uninterruptible call.
 */
export function nestedUseSvg(depth = 5, fan = 10): Buffer {
  let svg =
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="2000" height="2000">' +
    '<defs><filter id="b"><feGaussianBlur stdDeviation="9"/></filter>' +
    '<rect id="l0" width="2000" height="2000" fill="red" opacity="0.5" filter="url(#b)"/>'
  for (let i = 1; i <= depth; i++) {
    svg += `<g id="l${i}">${Array.from({ length: fan }, (_, k) => `<use xlink:href="#l${i - 1}" x="${k}"/>`).join('')}</g>`
  }
  return Buffer.from(`${svg}</defs><use xlink:href="#l${depth}"/></svg>`)
}

/** A progressive JPEG with its last scan repeated until it has `scans` scans. */
export async function manyScansJpeg(scans: number): Promise<Buffer> {
  const jpeg = await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 9, g: 99, b: 199 } } }).jpeg({ progressive: true }).toBuffer()
  const sos: number[] = []
  for (let i = 0; i + 1 < jpeg.length; i++) if (jpeg[i] === 0xff && jpeg[i + 1] === 0xda) sos.push(i)
  const last = jpeg.subarray(sos[sos.length - 1], jpeg.length - 2)
  return Buffer.concat([jpeg.subarray(0, jpeg.length - 2), ...Array.from({ length: scans - sos.length }, () => last), Buffer.from([0xff, 0xd9])])
}

function crc32(bytes: Uint8Array): number {
  let c = ~0
  for (const byte of bytes) {
    c ^= byte
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1))
  }
  return ~c >>> 0
}
