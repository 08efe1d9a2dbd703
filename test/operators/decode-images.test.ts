import sharp from 'sharp'
import { EMPTY, Subject, from, of, throwError } from 'rxjs'
import { describe, expect, it } from 'vitest'

import { decodeImages } from '../../operators/decode-images.js'
import { PipelineConfigError } from '../../src/errors.js'
import { pixelValues, writePixelValues } from '../../src/image/decode.js'
import type { DecodedImage, ErrorRecord } from '../../src/records.js'
import * as img from '../helpers/images.js'
import { imageRow } from '../helpers/records.js'
import { collect } from '../helpers/util.js'

type Out = DecodedImage | ErrorRecord

async function solid(width: number, height: number, rgb: [number, number, number]): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } }).png().toBuffer()
}

async function decodeOne(bytes: Uint8Array | null, options = {}): Promise<Out> {
  const [out] = (await collect(of(imageRow(0, bytes)).pipe(decodeImages(options)))) as Out[]
  return out
}

describe('decodeImages', () => {
  it('emits nothing for an empty source', async () => {
    expect(await collect(EMPTY.pipe(decodeImages()))).toEqual([])
  })

  it('decodes one image into normalised float32 CHW pixel_values', async () => {
    const out = await decodeOne(await solid(40, 30, [255, 0, 51]), { size: 8 })
    expect(out.kind).toBe('decoded-image')
    const d = out as DecodedImage
    expect(pixelValues(d)).toBeInstanceOf(Float32Array)
    expect(pixelValues(d).length).toBe(3 * 8 * 8)
    // (v/255 - 0.5) / 0.5: 255 → 1, 0 → -1, 51 → -0.6
    expect(pixelValues(d)[0]).toBeCloseTo(1, 5)
    expect(pixelValues(d)[64]).toBeCloseTo(-1, 5)
    expect(pixelValues(d)[128]).toBeCloseTo(-0.6, 5)
    expect(d.info).toMatchObject({ width: 40, height: 30, format: 'png', channels: 3, bitDepth: 8 })
    expect(d.key).toEqual({ shard: 'shard', rowGroup: 0, row: 0 })
    expect(d.id).toBe('id-0')
  })

  it('decodes many images, one output per input, keeping keys', async () => {
    const rows = await Promise.all(Array.from({ length: 12 }, async (_, i) => imageRow(i, await img.jpeg(64, 48, i))))
    const out = (await collect(from(rows).pipe(decodeImages({ size: 16, concurrency: 3 })))) as Out[]
    expect(out).toHaveLength(12)
    expect(out.every((r) => r.kind === 'decoded-image')).toBe(true)
    expect(out.map((r) => r.key.row).sort((a, b) => a - b)).toEqual([...Array(12).keys()])
  })

  it('keeps input order when ordered is true', async () => {
    const rows = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => imageRow(i, i % 2 === 0 ? await img.jpeg(400, 400, i) : await img.png(8, 8, i))),
    )
    const out = (await collect(from(rows).pipe(decodeImages({ size: 8, concurrency: 4, ordered: true })))) as Out[]
    expect(out.map((r) => r.key.row)).toEqual([...Array(10).keys()])
  })

  it('keeps uint8 HWC pixels and normalises them straight into a batch tensor at an offset', async () => {
    const out = (await decodeOne(await solid(8, 8, [255, 0, 51]), { size: 2 })) as DecodedImage
    expect(out.pixels).toBeInstanceOf(Uint8Array)
    expect(Array.from(out.pixels.subarray(0, 3))).toEqual([255, 0, 51])
    const batch = new Float32Array(2 * 3 * 4).fill(9)
    writePixelValues(out.pixels, 2, 2, 1, out.mean, out.std, batch, 12)
    expect(Array.from(batch.subarray(0, 12))).toEqual(new Array(12).fill(9))
    expect(Array.from(batch.subarray(12, 16))).toEqual([1, 1, 1, 1])
    expect(Array.from(batch.subarray(16, 20))).toEqual([-1, -1, -1, -1])
    expect(batch[20]).toBeCloseTo(-0.6, 5)
    expect(() => writePixelValues(out.pixels, 2, 2, 1, out.mean, out.std, new Float32Array(5))).toThrow(RangeError)
  })

  it('applies mean and std', async () => {
    const out = (await decodeOne(await solid(8, 8, [255, 255, 255]), { size: 4, mean: [0.25, 0.5, 0.75], std: [0.5, 0.25, 0.125] })) as DecodedImage
    expect(pixelValues(out)[0]).toBeCloseTo(1.5, 5)
    expect(pixelValues(out)[16]).toBeCloseTo(2, 5)
    expect(pixelValues(out)[32]).toBeCloseTo(2, 5)
  })

  it('flattens alpha onto the background, converts grey, 16-bit and CMYK to 8-bit sRGB', async () => {
    const transparent = await sharp({ create: { width: 8, height: 8, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } }).png().toBuffer()
    const flat = (await decodeOne(transparent, { size: 4, background: [255, 0, 0] })) as DecodedImage
    expect(pixelValues(flat)[0]).toBeCloseTo(1, 5) // red channel = background red
    expect(pixelValues(flat)[16]).toBeCloseTo(-1, 5)
    for (const bytes of [await img.greyPng(32, 32, 1), await img.png16(32, 32, 2), await img.cmykJpeg(32, 32, 3), await img.webp(32, 32, 4)]) {
      const out = await decodeOne(bytes, { size: 8 })
      expect(out.kind).toBe('decoded-image')
    }
    expect(((await decodeOne(await img.png16(32, 32, 2))) as DecodedImage).info.bitDepth).toBe(16)
    expect(((await decodeOne(await img.cmykJpeg(32, 32, 3))) as DecodedImage).info.channels).toBe(4)
    expect(((await decodeOne(await img.greyPng(32, 32, 1))) as DecodedImage).info.channels).toBe(1)
  })

  it('applies the EXIF orientation (reported size is the displayed one)', async () => {
    const out = (await decodeOne(await img.rotatedJpeg(120, 60, 7))) as DecodedImage
    expect(out.info).toMatchObject({ width: 60, height: 120 })
  })

  it('takes the first frame of an animated image', async () => {
    const out = (await decodeOne(await img.animatedGif(16, 16, 8), { size: 16 })) as DecodedImage
    expect(out.kind).toBe('decoded-image')
    expect(out.info).toMatchObject({ width: 16, height: 16, format: 'gif' })
  })

  it('resizes with cover, contain, pad and fill', async () => {
    // A 20x10 white image: contain letterboxes with the background, pad fills the bottom, cover and fill are all white.
    const white = await solid(20, 10, [255, 255, 255])
    const options = { size: 10, background: [0, 0, 0] as [number, number, number] }
    const at = (d: DecodedImage, x: number, y: number) => pixelValues(d)[y * 10 + x]
    const contain = (await decodeOne(white, { ...options, resize: 'contain' })) as DecodedImage
    expect(at(contain, 5, 0)).toBeCloseTo(-1, 1)
    expect(at(contain, 5, 5)).toBeCloseTo(1, 1)
    expect(at(contain, 5, 9)).toBeCloseTo(-1, 1)
    const pad = (await decodeOne(white, { ...options, resize: 'pad' })) as DecodedImage
    expect(at(pad, 5, 0)).toBeCloseTo(1, 1)
    expect(at(pad, 5, 9)).toBeCloseTo(-1, 1)
    for (const resize of ['cover', 'fill'] as const) {
      const d = (await decodeOne(white, { ...options, resize })) as DecodedImage
      expect(Math.min(...pixelValues(d))).toBeCloseTo(1, 1)
    }
  })

  it('turns undecodable rows into error records with a reason, and goes on', async () => {
    const cases: [Uint8Array | null, string][] = [
      [null, 'missing'],
      [new Uint8Array(0), 'empty'],
      [img.garbage(200, 1), 'unsupported-format'],
      [await img.truncatedJpeg(128, 128, 2), 'truncated'],
    ]
    const rows = [...cases.map(([bytes], i) => imageRow(i, bytes)), imageRow(cases.length, await img.png(8, 8, 3))]
    const out = (await collect(from(rows).pipe(decodeImages({ ordered: true })))) as Out[]
    expect(out).toHaveLength(rows.length)
    cases.forEach(([, code], i) => {
      expect(out[i]).toMatchObject({ kind: 'error', code, stage: 'decodeImages', id: `id-${i}` })
      expect((out[i] as ErrorRecord).message.length).toBeGreaterThan(code.length)
    })
    expect(out[cases.length].kind).toBe('decoded-image')
  })

  it('gives the same reason and message for a bad image whatever else fails at the same time', async () => {
    // libvips has one process-wide error buffer: concurrent failures must not change each other's messages.
    const truncated = await img.truncatedJpeg(128, 128, 9)
    const rows = await Promise.all(
      Array.from({ length: 48 }, async (_, i) => imageRow(i, i % 3 === 0 ? truncated : i % 3 === 1 ? img.garbage(64, 5) : await img.jpeg(200, 200, i))),
    )
    const out = (await collect(from(rows).pipe(decodeImages({ concurrency: 8 })))) as Out[]
    const errors = out.filter((r): r is ErrorRecord => r.kind === 'error')
    const byRow = new Map(errors.map((e) => [e.key.row, e.message]))
    expect(errors).toHaveLength(32)
    expect(new Set(errors.filter((e) => e.key.row % 3 === 0).map((e) => byRow.get(e.key.row)))).toEqual(
      new Set(['truncated: jpeg data ends before its end marker (679 bytes)'.replace('679', String(truncated.length))]),
    )
    expect(new Set(errors.filter((e) => e.key.row % 3 === 1).map((e) => e.code))).toEqual(new Set(['unsupported-format']))
    expect(new Set(errors.filter((e) => e.key.row % 3 === 1).map((e) => e.message)).size).toBe(1)
  })

  it('decodes a clip of frames into [F, 3, H, W] and fails the clip on a bad frame, naming it', async () => {
    const frames = [await solid(16, 16, [255, 0, 0]), await solid(16, 16, [0, 255, 0]), await solid(16, 16, [0, 0, 255])]
    const clip = { ...imageRow(0, null), frames }
    const [out] = (await collect(of(clip).pipe(decodeImages({ size: 4 })))) as DecodedImage[]
    expect(out).toMatchObject({ kind: 'decoded-image', frames: 3, width: 4, height: 4 })
    expect(pixelValues(out).length).toBe(3 * 3 * 16)
    expect(pixelValues(out)[0]).toBeCloseTo(1, 5) // frame 0 red
    expect(pixelValues(out)[48 + 16]).toBeCloseTo(1, 5) // frame 1 green
    expect(pixelValues(out)[96 + 32]).toBeCloseTo(1, 5) // frame 2 blue
    const broken = { ...imageRow(1, null), frames: [frames[0], new Uint8Array(0)] }
    const [bad] = (await collect(of(broken).pipe(decodeImages()))) as ErrorRecord[]
    expect(bad).toMatchObject({ kind: 'error', code: 'empty', message: 'empty: frame 1 of 2: the image has 0 bytes' })
    const [none] = (await collect(of({ ...imageRow(2, null), frames: null }).pipe(decodeImages()))) as ErrorRecord[]
    expect(none).toMatchObject({ kind: 'error', code: 'missing' })
  })

  it('enforces the pixel and byte limits', async () => {
    const big = await img.png(300, 300, 1)
    expect(await decodeOne(big, { maxPixels: 10_000 })).toMatchObject({ kind: 'error', code: 'too-many-pixels' })
    expect(await decodeOne(big, { maxBytes: 100 })).toMatchObject({ kind: 'error', code: 'too-many-bytes' })
  })

  it('turns an unexpected throw of the stage into a stage-failed error row', async () => {
    const bad = { ...imageRow(0, null), image: {} as Uint8Array }
    const [out] = (await collect(of(bad).pipe(decodeImages()))) as Out[]
    expect(out).toMatchObject({ kind: 'error', code: 'stage-failed', stage: 'decodeImages' })
  })

  it('passes error records and other kinds through untouched', async () => {
    const error: ErrorRecord = { ...imageRow(0, null), kind: 'error', code: 'shard-read', stage: 'readShards', message: 'x' }
    const out = await collect(of(error).pipe(decodeImages()))
    expect(out).toEqual([error])
  })

  it('forwards an upstream error', async () => {
    await expect(collect(throwError(() => new Error('upstream')).pipe(decodeImages()))).rejects.toThrow('upstream')
  })

  it('rejects invalid options at once', () => {
    expect(() => decodeImages({ size: 0 })).toThrow(PipelineConfigError)
    expect(() => decodeImages({ resize: 'squash' as never })).toThrow(/resize/)
    expect(() => decodeImages({ std: [1, 0, 1] })).toThrow(/std/)
    expect(() => decodeImages({ concurrency: 0 })).toThrow(/concurrency/)
    expect(() => decodeImages({ decoder: 'turbo' as never })).toThrow(/decoder/)
    expect(() => decodeImages({ timeoutMs: -1 })).toThrow(/timeoutMs/)
    expect(() => decodeImages({ maxPixelsInFlight: 0 })).toThrow(/maxPixelsInFlight/)
  })

  it('stops on early unsubscribe: nothing is emitted after it', async () => {
    const source = new Subject<ReturnType<typeof imageRow>>()
    const seen: unknown[] = []
    const subscription = source.pipe(decodeImages()).subscribe((r) => seen.push(r))
    source.next(imageRow(0, await img.jpeg(512, 512, 1)))
    subscription.unsubscribe()
    expect(source.observed).toBe(false)
    await new Promise((r) => setTimeout(r, 200))
    expect(seen).toEqual([])
  })
})
