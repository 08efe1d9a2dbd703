/**
 * The sharp pipeline that turns encoded bytes into `width × height` 8-bit sRGB pixels, shared by the
 * in-process decoder (`decode.ts`) and the child process that renders SVG (`decode-child.ts`).
 */
import sharp from 'sharp'

/**
 * How the image is fitted to `width × height`:
 * - `cover`: scale to cover the box, centre-crop the overflow (CLIP-style);
 * - `contain`: scale to fit inside, centred, the rest filled with `background` (letterbox);
 * - `pad`: scale to fit inside, anchored top-left, the rest filled with `background`;
 * - `fill`: stretch to the box, ignoring the aspect ratio.
 */
export type ResizeMode = 'cover' | 'contain' | 'pad' | 'fill'

export interface PipelineOptions {
  readonly width: number
  readonly height: number
  readonly resize: ResizeMode
  readonly background: readonly [number, number, number]
  /** Largest accepted `width × height` of the source (libvips refuses larger ones itself). */
  readonly maxPixels: number
  /** libvips stops the pipeline after this many whole seconds where it can (0: never). */
  readonly timeoutSeconds: number
}

/**
 * EXIF orientation applied, first frame of animations, 8-bit sRGB (greyscale, CMYK, 16-bit included), alpha
 * flattened onto `background`, resized, alpha removed: `[height, width, 3]` uint8.
 */
export function rgbPixels(input: Buffer, options: PipelineOptions): Promise<Buffer> {
  const { width, height } = options
  const background = { r: options.background[0], g: options.background[1], b: options.background[2] }
  let image = sharp(input, { limitInputPixels: options.maxPixels, pages: 1, failOn: 'error' })
    .autoOrient()
    .toColourspace('srgb')
    .flatten({ background })
  if (options.resize === 'fill') {
    image = image.resize(width, height, { fit: 'fill' })
  } else if (options.resize === 'cover') {
    image = image.resize(width, height, { fit: 'cover', position: 'centre' })
  } else {
    image = image.resize(width, height, { fit: 'contain', position: options.resize === 'pad' ? 'left top' : 'centre', background })
  }
  if (options.timeoutSeconds > 0) image = image.timeout({ seconds: options.timeoutSeconds })
  return image.removeAlpha().raw({ depth: 'uchar' }).toBuffer()
}
