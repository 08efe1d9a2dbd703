/**
 * The pre-decode of the training export: encoded image → model-resolution uint8 RGB, exactly as evflow's
 * inference decode does it before normalising, so that training and inference see the same pixels.
 */
import sharp from 'sharp'

/** The reference model's input side (pixels). */
export const MODEL_SIZE = 64

/**
 * Decodes `encoded` (PNG, JPEG, ... anything sharp reads) and resizes it to `size × size` with sharp's
 * `fit: 'fill'` (stretch, ignoring the aspect ratio; default lanczos3 kernel, JPEG shrink-on-load
 * allowed), as 8-bit sRGB without alpha. Returns `size * size * 3` bytes, HWC order (row-major, R G B).
 *
 * The pipeline is the one of `src/image/decode.ts` (`decodeImage` with `resize: 'fill'`) up to its
 * uint8 raw output: EXIF orientation, sRGB, alpha flattened on white, fill resize, alpha removed.
 * Keep the two in step: a test compares them.
 */
export async function resizeForModel(encoded: Uint8Array, size: number = MODEL_SIZE): Promise<Buffer> {
  const input = Buffer.isBuffer(encoded) ? encoded : Buffer.from(encoded.buffer, encoded.byteOffset, encoded.byteLength)
  return sharp(input, { limitInputPixels: false, pages: 1, failOn: 'error' })
    .autoOrient()
    .toColourspace('srgb')
    .flatten({ background: { r: 255, g: 255, b: 255 } })
    .resize(size, size, { fit: 'fill' })
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer()
}
