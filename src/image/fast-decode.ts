/**
 * The fast path for small JPEGs and PNGs: one call into `@napi-rs/image` (Rust decoders plus a SIMD
 * Lanczos3 resize, on libuv threads) instead of sharp's libvips pipeline, whose fixed cost per call
 * (pipeline set-up, GObject properties, thread hand-offs: about 1.4 ms of CPU for a 256×256 JPEG) dwarfs the
 * decode itself (0.1-0.2 ms in libjpeg-turbo). It only takes files it decodes like sharp does colour-wise:
 * - JPEG: baseline Huffman, 8-bit YCbCr or grey samples, no ICC profile, no EXIF rotation, one scan, an end
 *   marker;
 * - PNG: 8-bit grey or RGB without transparency (no tRNS), no ICC profile, an IEND chunk;
 * at most `FAST_MAX_PIXELS` (above that, sharp's shrink-on-load decodes fewer pixels and wins), to a `fill`
 * resize to at most half the source's width and height. Everything else, and anything this decoder
 * rejects, goes to sharp. The budgets (header bounds, pixel budget, time limit) are applied by the caller,
 * as for sharp.
 */
import { FastResizeFilter, ResizeFit, Transformer } from '@napi-rs/image'

import type { ImageHeader, JpegHeader, PngHeader } from './headers.js'
import type { ResizeMode } from './pipeline.js'

/**
 * Largest source (`width × height`) the fast path takes, e.g. 512×384. Measured break-even with sharp at 64 px
 * (CPU per image, same run): 384² 1.0-1.3 vs 1.9-2.2 ms, 416² 1.4 vs 2.9, 448² 1.1-2.4 vs 2.2-2.4, 512² 3.2 vs 2.6.
 */
export const FAST_MAX_PIXELS = 196_608

/**
 * Whether the fast path decodes this image close to sharp (see the module comment). The output must be at
 * most half the source on each side: the JPEG decoders reconstruct subsampled chroma differently
 * (libjpeg's fancy upsampling), which a 2× or larger reduction averages out (256 → 64 px: mean absolute
 * difference 0.16-0.30 per channel value) but a near-1:1 resize shows at colour edges (256 → 224 px: mean
 * 1.9, single values up to 231).
 */
export function fastEligible(header: ImageHeader, resize: ResizeMode, width: number, height: number): boolean {
  if (resize !== 'fill' || header.width * header.height > FAST_MAX_PIXELS || header.width < 2 * width || header.height < 2 * height) return false
  if (header.format === 'jpeg') {
    const jpeg = header as JpegHeader
    const ycc = jpeg.components.length === 3 && (jpeg.adobeTransform === -1 || jpeg.adobeTransform === 1)
    const grey = jpeg.components.length === 1
    return (jpeg.sof === 0xc0 || jpeg.sof === 0xc1) && jpeg.precision === 8 && (ycc || grey) && !jpeg.icc && jpeg.orientation === 1 && jpeg.scans === 1 && jpeg.complete
  }
  if (header.format === 'png') {
    const png = header as PngHeader
    return png.depth === 8 && (png.colorType === 0 || png.colorType === 2) && !png.transparency && !png.icc && png.complete
  }
  return false
}

/** Channels of the source as sharp's metadata reports them, for the fast path's `info`. */
export function fastChannels(header: ImageHeader): number {
  if (header.format === 'jpeg') return (header as JpegHeader).components.length
  return (header as PngHeader).colorType === 0 ? 1 : 3
}

/** Decodes and resizes to `width × height` uint8 RGB (`[height, width, 3]`). Throws on undecodable data. */
export async function decodeFastRgb(bytes: Uint8Array, width: number, height: number): Promise<Uint8Array> {
  const rgba = await new Transformer(bytes).fastResize({ width, height, filter: FastResizeFilter.Lanczos3, fit: ResizeFit.Fill }).rawPixels()
  const pixels = width * height
  if (rgba.length !== pixels * 4) throw new Error(`fast decoder returned ${rgba.length} bytes for ${width}x${height}x4`)
  const rgb = new Uint8Array(pixels * 3)
  for (let i = 0, s = 0, d = 0; i < pixels; i++, s += 4, d += 3) {
    rgb[d] = rgba[s]
    rgb[d + 1] = rgba[s + 1]
    rgb[d + 2] = rgba[s + 2]
  }
  return rgb
}
