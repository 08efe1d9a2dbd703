/**
 * Drawing scenes: an SVG string per image or frame, rendered and encoded by sharp (librsvg + libvips).
 * Pure functions of the scene: the same scene gives the same bytes on the same sharp build.
 */
import sharp from 'sharp'

import type { Background, ImageFormat, ImageScene, VideoScene } from './scene.js'
import type { Shape } from './words.js'

/** Shortest decimal for a coordinate already rounded to 0.01. */
const num = (v: number) => String(Math.round(v * 100) / 100)

function points(pts: [number, number][]): string {
  return pts.map(([x, y]) => `${num(x)},${num(y)}`).join(' ')
}

/** One shape centred on (x, y), fitting in a box of half-side r, upright. */
export function shapeSvg(shape: Shape, x: number, y: number, r: number, fill: string): string {
  switch (shape) {
    case 'circle':
      return `<circle cx="${num(x)}" cy="${num(y)}" r="${num(r)}" fill="${fill}"/>`
    case 'square': {
      const s = 0.86 * r
      return `<rect x="${num(x - s)}" y="${num(y - s)}" width="${num(2 * s)}" height="${num(2 * s)}" fill="${fill}"/>`
    }
    case 'triangle': {
      // equilateral, pointing up, centred on its bounding box
      const h = 0.84 * r
      const w = 0.97 * r
      return `<polygon points="${points([
        [x, y - h],
        [x + w, y + h],
        [x - w, y + h],
      ])}" fill="${fill}"/>`
    }
    case 'star': {
      const pts: [number, number][] = []
      for (let i = 0; i < 10; i++) {
        const a = -Math.PI / 2 + (i * Math.PI) / 5
        const rad = i % 2 === 0 ? r : 0.42 * r
        pts.push([x + rad * Math.cos(a), y + 0.08 * r + rad * Math.sin(a)])
      }
      return `<polygon points="${points(pts)}" fill="${fill}"/>`
    }
    case 'cross': {
      const a = 0.32 * r
      const e = 0.92 * r
      return `<polygon points="${points([
        [x - a, y - e],
        [x + a, y - e],
        [x + a, y - a],
        [x + e, y - a],
        [x + e, y + a],
        [x + a, y + a],
        [x + a, y + e],
        [x - a, y + e],
        [x - a, y + a],
        [x - e, y + a],
        [x - e, y - a],
        [x - a, y - a],
      ])}" fill="${fill}"/>`
    }
    case 'diamond':
      return `<polygon points="${points([
        [x, y - r],
        [x + 0.68 * r, y],
        [x, y + r],
        [x - 0.68 * r, y],
      ])}" fill="${fill}"/>`
  }
}

function hexToUnit(hex: string): [number, number, number] {
  const v = parseInt(hex.slice(1), 16)
  return [((v >> 16) & 255) / 255, ((v >> 8) & 255) / 255, (v & 255) / 255]
}

/** Noise is drawn at 1/NOISE_SCALE of the image size and stretched: smooth, cheap and compressible. */
const NOISE_SCALE = 4

/**
 * The noise background as a small PNG (feTurbulence with the scene's seed, mapped from `from` to `to`),
 * drawn at a quarter of the image size; the scene SVG stretches it over the whole canvas.
 */
async function noiseTile(bg: Extract<Background, { kind: 'noise' }>, width: number, height: number): Promise<Buffer> {
  const w = Math.ceil(width / NOISE_SCALE)
  const h = Math.ceil(height / NOISE_SCALE)
  const a = hexToUnit(bg.from)
  const b = hexToUnit(bg.to)
  // fractalNoise's R channel sits mostly in [0.3, 0.7]: stretch it, then blend from → to
  const gain = 1.6
  const row = (c: number) => {
    const d = b[c] - a[c]
    return `${num4(d * gain)} 0 0 0 ${num4(a[c] + d * (0.5 - 0.5 * gain))}`
  }
  const svg =
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}">` +
    `<filter id="n" x="0" y="0" width="100%" height="100%" color-interpolation-filters="sRGB">` +
    `<feTurbulence type="fractalNoise" baseFrequency="${num4(bg.frequency * NOISE_SCALE)}" numOctaves="2" seed="${bg.seed}"/>` +
    `<feColorMatrix type="matrix" values="${row(0)}  ${row(1)}  ${row(2)}  0 0 0 0 1"/>` +
    `</filter><rect width="${w}" height="${h}" filter="url(#n)"/></svg>`
  return sharp(Buffer.from(svg)).removeAlpha().png({ compressionLevel: 1 }).toBuffer()
}

const num4 = (v: number) => String(Math.round(v * 10_000) / 10_000)

/** SVG elements drawing the background over a `width × height` canvas. */
async function backgroundSvg(bg: Background, width: number, height: number): Promise<string> {
  switch (bg.kind) {
    case 'plain':
      return `<rect width="${width}" height="${height}" fill="${bg.color}"/>`
    case 'gradient': {
      const t = (bg.angle * Math.PI) / 180
      const dx = 0.5 * Math.cos(t)
      const dy = 0.5 * Math.sin(t)
      return (
        `<defs><linearGradient id="bg" x1="${num4(0.5 - dx)}" y1="${num4(0.5 - dy)}" x2="${num4(0.5 + dx)}" y2="${num4(0.5 + dy)}">` +
        `<stop offset="0" stop-color="${bg.from}"/><stop offset="1" stop-color="${bg.to}"/></linearGradient></defs>` +
        `<rect width="${width}" height="${height}" fill="url(#bg)"/>`
      )
    }
    case 'noise': {
      const tile = await noiseTile(bg, width, height)
      return `<image x="0" y="0" width="${width}" height="${height}" preserveAspectRatio="none" href="data:image/png;base64,${tile.toString('base64')}"/>`
    }
  }
}

function svgDocument(width: number, height: number, background: string, shapes: string): string {
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    `${background}${shapes}</svg>`
  )
}

/** The complete SVG of an image scene (exported for inspection and tests). */
export async function imageSceneSvg(scene: ImageScene): Promise<string> {
  const background = await backgroundSvg(scene.background, scene.width, scene.height)
  const shapes = scene.objects.map((o) => shapeSvg(o.shape, o.x, o.y, o.r, o.fill)).join('')
  return svgDocument(scene.width, scene.height, background, shapes)
}

/** The SVG of every frame of a video scene. */
export async function videoSceneSvgs(scene: VideoScene): Promise<string[]> {
  const background = await backgroundSvg(scene.background, scene.width, scene.height)
  const out: string[] = []
  for (let t = 0; t < scene.frames; t++) {
    const shapes = scene.objects.map((o) => shapeSvg(o.shape, o.path[t][0], o.path[t][1], o.r, o.fill)).join('')
    out.push(svgDocument(scene.width, scene.height, background, shapes))
  }
  return out
}

/** Renders an SVG string and encodes it as 8-bit RGB PNG or JPEG (no metadata, no alpha). */
export async function encodeSvg(svg: string, format: ImageFormat, quality: number | null): Promise<Buffer> {
  const image = sharp(Buffer.from(svg)).removeAlpha()
  return format === 'png'
    ? image.png({ compressionLevel: 6 }).toBuffer()
    : image.jpeg({ quality: quality ?? 80 }).toBuffer()
}

/** The encoded image of an image scene. */
export async function renderImage(scene: ImageScene): Promise<Buffer> {
  return encodeSvg(await imageSceneSvg(scene), scene.format, scene.quality)
}

/** The encoded frames of a video scene, all the same size and format. */
export async function renderVideo(scene: VideoScene): Promise<Buffer[]> {
  const svgs = await videoSceneSvgs(scene)
  return Promise.all(svgs.map((svg) => encodeSvg(svg, scene.format, scene.quality)))
}
