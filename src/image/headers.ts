/**
 * What an encoded image's own header says, read in JavaScript before any decoder allocates from it: the
 * format, the dimensions, and whether the data present can possibly fill those dimensions. Pure functions
 * over bytes; nothing here decodes pixels.
 *
 * The bounds are the formats' own limits, not size ratios: a flat image that compresses to a few bytes per
 * megapixel is legitimate and passes. What fails is data that no encoder could have produced for the claimed
 * size — a 16×16 JPEG whose SOF says 7999×7999, a PNG whose IDAT cannot inflate to its IHDR's rows.
 */

/** A Huffman-coded JPEG scan spends at least one bit on every block it codes the DC value of. */
const MIN_BITS_PER_DC_BLOCK = 1
/** Deflate's largest possible expansion: 258-byte matches at one bit each, about 1032:1. */
export const MAX_DEFLATE_RATIO = 1032
/**
 * More progressive scans than this is rejected before decoding: libjpeg decodes every scan into the whole
 * coefficient buffer inside one uninterruptible call, so a file of thousands of tiny scans costs minutes.
 * libjpeg-turbo's `tjbench -limitscans` and TurboJPEG's scan limit use 500; encoders write at most a few dozen.
 */
export const MAX_JPEG_SCANS = 500

export interface ImageHeader {
  /** `jpeg`, `png`, `webp` or `gif` (the formats whose headers are read here). */
  readonly format: 'jpeg' | 'png' | 'webp' | 'gif'
  /** Stored width and height (before any EXIF orientation). */
  readonly width: number
  readonly height: number
  /**
   * Set when the data present cannot fill the header's dimensions (a header that lies, or data cut short):
   * a sentence for the error row. Absent when the format gives no such bound or the data can fill them.
   */
  readonly shortfall?: string
  /** Set when the file is well-formed enough to read but outside what is decoded safely (e.g. too many scans). */
  readonly refused?: string
}

/** JPEG facts the fast decoder needs to know whether it may take the file (see `jpegHeader`). */
export interface JpegHeader extends ImageHeader {
  readonly format: 'jpeg'
  /** The SOF marker (0xc0 baseline, 0xc1 extended, 0xc2 progressive, ...). */
  readonly sof: number
  /** Sample precision in bits (8 or 12; 2-16 for lossless). */
  readonly precision: number
  /** Components with their sampling factors. */
  readonly components: readonly { readonly id: number; readonly h: number; readonly v: number }[]
  /** Scans (SOS markers) present. */
  readonly scans: number
  /** EXIF orientation (1 when absent). */
  readonly orientation: number
  /** An embedded ICC profile (APP2) is present. */
  readonly icc: boolean
  /** The Adobe APP14 colour transform (0 none / RGB or CMYK, 1 YCbCr, 2 YCCK), or -1 without APP14. */
  readonly adobeTransform: number
  /** Arithmetic coding (SOF9-11, SOF13-15). */
  readonly arithmetic: boolean
  /** The file ends with the EOI marker. */
  readonly complete: boolean
}

/** PNG facts the fast decoder needs to know whether it may take the file (see `pngHeader`). */
export interface PngHeader extends ImageHeader {
  readonly format: 'png'
  /** IHDR bit depth and colour type (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA). */
  readonly depth: number
  readonly colorType: number
  /** A tRNS chunk (transparency for grey, RGB or palette images). */
  readonly transparency: boolean
  /** An iCCP chunk (embedded ICC profile). */
  readonly icc: boolean
  /** The file has its IEND chunk. */
  readonly complete: boolean
}

/** The format from magic numbers, for the formats whose headers are read here (and SVG, by its text). */
export function sniffFormat(bytes: Uint8Array): string | undefined {
  const b = bytes
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg'
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'png'
  if (b.length >= 6 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46) return 'gif'
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45) return 'webp'
  return undefined
}

/** Reads the header of a JPEG, PNG, WebP or GIF; undefined for other formats or a header too short to read. */
export function readImageHeader(bytes: Uint8Array): ImageHeader | JpegHeader | PngHeader | undefined {
  switch (sniffFormat(bytes)) {
    case 'jpeg':
      return jpegHeader(bytes)
    case 'png':
      return pngHeader(bytes)
    case 'webp':
      return webpHeader(bytes)
    case 'gif':
      return bytes.length >= 10 ? { format: 'gif', width: u16le(bytes, 6), height: u16le(bytes, 8) } : undefined
    default:
      return undefined
  }
}

const u16 = (b: Uint8Array, i: number) => (b[i] << 8) | b[i + 1]
const u16le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8)
const u32 = (b: Uint8Array, i: number) => ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0
const u24le = (b: Uint8Array, i: number) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)
const ascii = (b: Uint8Array, i: number, text: string) => [...text].every((c, k) => b[i + k] === c.charCodeAt(0))

/** Index just past the entropy-coded data that starts at `start`: the next marker other than a restart. */
function entropyEnd(b: Uint8Array, start: number): number {
  let i = start
  for (;;) {
    i = b.indexOf(0xff, i)
    if (i < 0 || i + 1 >= b.length) return b.length
    const next = b[i + 1]
    if (next === 0x00 || (next >= 0xd0 && next <= 0xd7) || next === 0xff) {
      i += next === 0xff ? 1 : 2
      continue
    }
    return i
  }
}

/** EXIF orientation from an APP1 segment's TIFF structure (1 when absent or unreadable). */
function exifOrientation(b: Uint8Array, start: number, end: number): number {
  const tiff = start + 6
  if (tiff + 8 > end) return 1
  const little = b[tiff] === 0x49
  const r16 = (i: number) => (little ? u16le(b, i) : u16(b, i))
  const r32 = (i: number) => (little ? (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0 : u32(b, i))
  const ifd = tiff + r32(tiff + 4)
  if (ifd + 2 > end) return 1
  const entries = r16(ifd)
  for (let k = 0; k < entries; k++) {
    const e = ifd + 2 + k * 12
    if (e + 12 > end) return 1
    if (r16(e) === 0x0112) {
      const value = r16(e + 8)
      return value >= 1 && value <= 8 ? value : 1
    }
  }
  return 1
}

/**
 * Walks a JPEG's markers: dimensions, components, scans, EXIF orientation, ICC and Adobe segments, and the
 * bound on scan data. Every Huffman-coded scan that codes DC values (a baseline scan, or a progressive
 * first DC scan) spends at least one bit per block it covers, so its entropy-coded bytes must be at least
 * blocks / 8; less means the file ends (or its scans stop) long before the SOF's dimensions are filled.
 * Arithmetic-coded files have no such bound.
 */
export function jpegHeader(b: Uint8Array): JpegHeader | undefined {
  let pos = 2
  let frame: { sof: number; precision: number; width: number; height: number; components: { id: number; h: number; v: number }[] } | undefined
  let scans = 0
  let orientation = 1
  let icc = false
  let adobeTransform = -1
  let neededBits = 0
  let presentBytes = 0
  let complete = false
  while (pos + 1 < b.length) {
    if (b[pos] !== 0xff) break
    let marker = b[pos + 1]
    while (marker === 0xff && pos + 2 < b.length) marker = b[++pos + 1]
    pos += 2
    if (marker === 0xd9) {
      complete = true
      break
    }
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01 || marker === 0xd8) continue
    if (pos + 2 > b.length) break
    const length = u16(b, pos)
    const start = pos + 2
    const end = pos + length
    if (length < 2 || end > b.length) break
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (length < 8) break
      const count = b[start + 5]
      const components = []
      for (let k = 0; k < count && start + 6 + k * 3 + 2 < end; k++) {
        const o = start + 6 + k * 3
        components.push({ id: b[o], h: b[o + 1] >> 4 || 1, v: b[o + 1] & 15 || 1 })
      }
      frame ??= { sof: marker, precision: b[start], height: u16(b, start + 1), width: u16(b, start + 3), components }
    } else if (marker === 0xe1 && ascii(b, start, 'Exif\0\0')) {
      orientation = exifOrientation(b, start, end)
    } else if (marker === 0xe2 && ascii(b, start, 'ICC_PROFILE\0')) {
      icc = true
    } else if (marker === 0xee && ascii(b, start, 'Adobe') && length >= 14) {
      adobeTransform = b[start + 11]
    } else if (marker === 0xda) {
      scans += 1
      const dataEnd = entropyEnd(b, end)
      if (frame && !isArithmetic(frame.sof)) {
        const count = b[start]
        const ss = b[start + 1 + count * 2]
        const ah = b[start + 3 + count * 2] >> 4
        if (ss === 0 && ah === 0) {
          neededBits += MIN_BITS_PER_DC_BLOCK * scanBlocks(frame, Array.from({ length: count }, (_, k) => b[start + 1 + k * 2]))
          presentBytes += dataEnd - end
        }
      }
      pos = dataEnd
      continue
    }
    pos = end
  }
  if (!frame) return undefined
  const neededBytes = Math.ceil(neededBits / 8)
  const header: JpegHeader = {
    format: 'jpeg',
    width: frame.width,
    height: frame.height,
    sof: frame.sof,
    precision: frame.precision,
    components: frame.components,
    scans,
    orientation,
    icc,
    adobeTransform,
    arithmetic: isArithmetic(frame.sof),
    complete,
  }
  if (scans > MAX_JPEG_SCANS) return { ...header, refused: `the jpeg has ${scans} scans (more than ${MAX_JPEG_SCANS})` }
  if (presentBytes < neededBytes) {
    return {
      ...header,
      shortfall: `jpeg scan data ends before its header's ${frame.width}x${frame.height} are filled (${presentBytes} bytes where at least ${neededBytes} are needed)`,
    }
  }
  if (scans === 0 && frame.width * frame.height > 0) {
    return { ...header, shortfall: `jpeg data ends before its first scan (${b.length} bytes for ${frame.width}x${frame.height})` }
  }
  return header
}

const isArithmetic = (sof: number) => sof >= 0xc9 && sof !== 0xcc

/** Blocks a scan over `ids` codes: one component's own blocks, or whole MCUs when interleaved. */
function scanBlocks(frame: { width: number; height: number; components: readonly { id: number; h: number; v: number }[] }, ids: readonly number[]): number {
  const hMax = Math.max(1, ...frame.components.map((c) => c.h))
  const vMax = Math.max(1, ...frame.components.map((c) => c.v))
  const inScan = frame.components.filter((c) => ids.includes(c.id))
  if (inScan.length === 1) {
    const c = inScan[0]
    return Math.ceil(Math.ceil((frame.width * c.h) / hMax) / 8) * Math.ceil(Math.ceil((frame.height * c.v) / vMax) / 8)
  }
  const mcus = Math.ceil(frame.width / (8 * hMax)) * Math.ceil(frame.height / (8 * vMax))
  return mcus * inScan.reduce((n, c) => n + c.h * c.v, 0)
}

/** Channels per PNG colour type. */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }

/**
 * IHDR dimensions, and the bound on IDAT data: the pixel rows need at least `width × height × channels ×
 * depth / 8` bytes once inflated, and deflate cannot expand more than about 1032:1, so IDAT chunks holding
 * fewer than 1/1032 of that cannot fill the image.
 */
export function pngHeader(b: Uint8Array): PngHeader | undefined {
  if (b.length < 33 || !ascii(b, 12, 'IHDR')) return undefined
  const width = u32(b, 16)
  const height = u32(b, 20)
  const depth = b[24]
  const colorType = b[25]
  const channels = PNG_CHANNELS[colorType] ?? 1
  let idat = 0
  let transparency = false
  let icc = false
  let complete = false
  let pos = 8
  while (pos + 8 <= b.length) {
    const length = u32(b, pos)
    if (ascii(b, pos + 4, 'IDAT')) idat += Math.min(length, b.length - pos - 8)
    else if (ascii(b, pos + 4, 'tRNS')) transparency = true
    else if (ascii(b, pos + 4, 'iCCP')) icc = true
    else if (ascii(b, pos + 4, 'IEND')) {
      complete = true
      break
    }
    pos += 12 + length
  }
  const header: PngHeader = { format: 'png', width, height, depth, colorType, transparency, icc, complete }
  const rawBytes = Math.ceil((width * height * channels * depth) / 8)
  if (idat * MAX_DEFLATE_RATIO < rawBytes) {
    return { ...header, shortfall: `png image data ends before its header's ${width}x${height} are filled (${idat} bytes of IDAT cannot inflate to ${rawBytes})` }
  }
  return header
}

/** Bytes the inflated IDAT stream of a PNG must hold: every row of every (Adam7) pass with its filter byte. */
export function pngRawBytes(width: number, height: number, depth: number, colorType: number, interlaced: boolean): number {
  const bitsPerPixel = (PNG_CHANNELS[colorType] ?? 1) * depth
  const rows = (w: number, h: number) => (w === 0 || h === 0 ? 0 : h * (1 + Math.ceil((w * bitsPerPixel) / 8)))
  if (!interlaced) return rows(width, height)
  const passes = [
    [0, 0, 8, 8],
    [4, 0, 8, 8],
    [0, 4, 4, 8],
    [2, 0, 4, 4],
    [0, 2, 2, 4],
    [1, 0, 2, 2],
    [0, 1, 1, 2],
  ]
  return passes.reduce((n, [x0, y0, dx, dy]) => n + rows(Math.ceil((width - x0) / dx), Math.ceil((height - y0) / dy)), 0)
}

/** The concatenated IDAT data of a PNG (the zlib stream), as far as it is present. */
/**
 * For a PNG whose chunks run past the end of the file (a chunk's length claims bytes the file does not
 * have: the file was cut, whatever was put back after the cut), a sentence saying so; undefined otherwise.
 */
export function pngOverrun(b: Uint8Array): string | undefined {
  let pos = 8
  while (pos + 8 <= b.length) {
    const length = u32(b, pos)
    const type = String.fromCharCode(b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7])
    if (pos + 12 + length > b.length) return `png chunk ${type} at byte ${pos} claims ${length} bytes; the file ends ${b.length - pos - 8} bytes into it`
    if (type === 'IEND') return undefined
    pos += 12 + length
  }
  return undefined
}

export function pngIdat(b: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = []
  let pos = 8
  while (pos + 8 <= b.length) {
    const length = u32(b, pos)
    if (ascii(b, pos + 4, 'IDAT')) parts.push(b.subarray(pos + 8, Math.min(b.length, pos + 8 + length)))
    if (ascii(b, pos + 4, 'IEND')) break
    pos += 12 + length
  }
  return Buffer.concat(parts)
}

/** Canvas size of a WebP (VP8X), or the frame size of a simple lossy (VP8) or lossless (VP8L) file. */
export function webpHeader(b: Uint8Array): ImageHeader | undefined {
  if (b.length < 30) return undefined
  if (ascii(b, 12, 'VP8X')) return { format: 'webp', width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 }
  if (ascii(b, 12, 'VP8L') && b[20] === 0x2f) {
    const bits = (b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24)) >>> 0
    return { format: 'webp', width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 }
  }
  if (ascii(b, 12, 'VP8 ') && b[23] === 0x9d && b[24] === 0x01 && b[25] === 0x2a) {
    return { format: 'webp', width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff }
  }
  return undefined
}

/** Whether encoded data stops before the format's end marker. */
export function isTruncated(bytes: Uint8Array, format: string): boolean {
  const tail = bytes.subarray(Math.max(0, bytes.length - 64))
  const has = (...marker: number[]) => {
    for (let i = tail.length - marker.length; i >= 0; i--) {
      if (marker.every((m, j) => tail[i + j] === m)) return true
    }
    return false
  }
  switch (format) {
    case 'jpeg':
      return !has(0xff, 0xd9)
    case 'png':
      return !has(0x49, 0x45, 0x4e, 0x44) // IEND
    case 'gif':
      return bytes[bytes.length - 1] !== 0x3b
    case 'webp': {
      if (bytes.length < 8) return true
      const size = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(4, true)
      return bytes.length < size + 8
    }
    default:
      return false
  }
}
