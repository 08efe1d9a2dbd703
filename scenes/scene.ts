/**
 * Scene descriptions (the ground truth stored as JSON next to every image) and their seeded sampling.
 * A scene fully determines its pixels: `render.ts` draws from the scene alone, with every coordinate
 * already rounded to 0.01 px, so the JSON in a shard is enough to redraw, re-caption and score a row.
 */
import { Rng } from './rng.js'
import {
  COLORS,
  COLOR_HSL,
  DIRECTIONS,
  POSITIONS,
  SHAPES,
  SIZES,
  type Color,
  type Direction,
  type Position,
  type Shape,
  type Size,
} from './words.js'

/** Image encoding of a scene. */
export type ImageFormat = 'png' | 'jpeg'

export type Background =
  | { kind: 'plain'; color: string }
  /** Linear gradient from `from` to `to` along `angle` degrees (0 = left to right, 90 = top to bottom). */
  | { kind: 'gradient'; from: string; to: string; angle: number }
  /**
   * Smooth fractal noise (SVG feTurbulence, seeded) blending `from` and `to`. `frequency` is in cycles
   * per pixel of the full-size image.
   */
  | { kind: 'noise'; from: string; to: string; frequency: number; seed: number }

export interface SceneObject {
  shape: Shape
  color: Color
  size: Size
  /** Grid row 0-2 (top to bottom) and column 0-2 (left to right) of the cell holding the object. */
  row: number
  col: number
  /** `POSITIONS[row * 3 + col]`. */
  position: Position
  /** Centre and half-extent in pixels of the full-size image. */
  x: number
  y: number
  r: number
  /** Exact fill color, `#rrggbb` (a jitter around the color name's base). */
  fill: string
}

export interface ImageScene {
  kind: 'image'
  width: number
  height: number
  format: ImageFormat
  /** JPEG quality 1-100; null for PNG. */
  quality: number | null
  background: Background
  /** 1-3 objects in distinct cells, sorted by (row, col): the caption's order. */
  objects: SceneObject[]
}

export interface VideoObject {
  shape: Shape
  color: Color
  size: Size
  direction: Direction
  r: number
  fill: string
  /** Centre `[x, y]` in pixels on each frame. */
  path: [number, number][]
}

export interface VideoScene {
  kind: 'video'
  width: number
  height: number
  /** Number of frames, 4-8. */
  frames: number
  format: ImageFormat
  quality: number | null
  background: Background
  /** 1-2 objects with distinct (color, shape), sorted left to right by their first-frame x. */
  objects: VideoObject[]
}

export type Scene = ImageScene | VideoScene

/** Rounds to 0.01, the precision of every coordinate in a scene. */
export function round2(v: number): number {
  return Math.round(v * 100) / 100
}

/** Canvas sizes: mostly 256×256, some others so that resizing to the model's square input matters. */
export const IMAGE_SIZES: readonly (readonly [number, number])[] = [
  [320, 240],
  [240, 320],
  [384, 216],
  [216, 384],
  [192, 192],
  [300, 200],
  [200, 300],
  [384, 288],
]
export const VIDEO_SIZES: readonly (readonly [number, number])[] = [
  [160, 120],
  [120, 160],
  [192, 108],
  [96, 96],
]

/** Half-extent of an object as a fraction of the smaller side of a grid cell. */
export const SIZE_FACTOR: Readonly<Record<Size, number>> = { small: 0.3, large: 0.44 }

function hslToHex(h: number, s: number, l: number): string {
  h = ((h % 360) + 360) % 360
  const c = (1 - Math.abs(2 * l - 1)) * s
  const x = c * (1 - Math.abs(((h / 60) % 2) - 1))
  const m = l - c / 2
  const [r, g, b] =
    h < 60 ? [c, x, 0] : h < 120 ? [x, c, 0] : h < 180 ? [0, c, x] : h < 240 ? [0, x, c] : h < 300 ? [x, 0, c] : [c, 0, x]
  const hex = (v: number) =>
    Math.max(0, Math.min(255, Math.round((v + m) * 255)))
      .toString(16)
      .padStart(2, '0')
  return `#${hex(r)}${hex(g)}${hex(b)}`
}

function objectFill(rng: Rng, color: Color): string {
  const [h, s, l] = COLOR_HSL[color]
  return hslToHex(h + rng.range(-6, 6), Math.min(1, s * rng.range(0.9, 1.05)), l + rng.range(-0.05, 0.05))
}

/** A low-saturation color, so that every object color stands out against it. */
function neutral(rng: Rng, lo: number, hi: number): string {
  return hslToHex(rng.range(0, 360), rng.range(0, 0.12), rng.range(lo, hi))
}

function sampleBackground(rng: Rng): Background {
  const kind = rng.weighted([
    ['plain', 0.4],
    ['gradient', 0.3],
    ['noise', 0.3],
  ] as const)
  if (kind === 'plain') return { kind, color: neutral(rng, 0.14, 0.82) }
  // two neutrals at least 0.25 apart in lightness, in random order
  const dark = rng.range(0.14, 0.5)
  let pair = [neutral(rng, dark, dark), neutral(rng, dark + 0.25, 0.85)]
  if (rng.chance(0.5)) pair = [pair[1], pair[0]]
  const [from, to] = pair
  if (kind === 'gradient') return { kind, from, to, angle: rng.int(360) }
  return { kind, from, to, frequency: Math.round(rng.range(0.012, 0.035) * 10_000) / 10_000, seed: rng.int(100_000) }
}

function sampleEncoding(rng: Rng, background: Background): { format: ImageFormat; quality: number | null } {
  // PNG of a noisy background is large: mostly JPEG there
  const png = rng.chance(background.kind === 'noise' ? 0.1 : 0.5)
  return png ? { format: 'png', quality: null } : { format: 'jpeg', quality: rng.intIn(40, 95) }
}

/**
 * Samples an image scene: 1-3 objects in distinct cells of a 3×3 grid (so they never overlap), each with
 * a shape, color and size. About a third of multi-object scenes repeat the first object's (size, color,
 * shape), so that captions and "how many" questions see counts of two and three.
 */
export function sampleImageScene(rng: Rng): ImageScene {
  const [width, height] = rng.chance(0.7) ? ([256, 256] as const) : rng.pick(IMAGE_SIZES)
  const background = sampleBackground(rng)
  const { format, quality } = sampleEncoding(rng, background)
  const n = rng.weighted([
    [1, 0.3],
    [2, 0.35],
    [3, 0.35],
  ] as const)
  const cells = rng.shuffle([0, 1, 2, 3, 4, 5, 6, 7, 8]).slice(0, n)
  const attrs = cells.map(() => ({ shape: rng.pick(SHAPES), color: rng.pick(COLORS), size: rng.pick(SIZES) }))
  if (n >= 2 && rng.chance(0.35)) {
    attrs[1] = { ...attrs[0] }
    if (n === 3 && rng.chance(0.4)) attrs[2] = { ...attrs[0] }
  }
  const cw = width / 3
  const ch = height / 3
  const m = Math.min(cw, ch)
  const objects: SceneObject[] = cells.map((cell, i) => {
    const { shape, color, size } = attrs[i]
    const row = Math.floor(cell / 3)
    const col = cell % 3
    const r = SIZE_FACTOR[size] * m * rng.range(0.95, 1.05)
    const pad = 0.04 * m
    const jx = Math.max(0, cw / 2 - r - pad) * 0.75
    const jy = Math.max(0, ch / 2 - r - pad) * 0.75
    return {
      shape,
      color,
      size,
      row,
      col,
      position: POSITIONS[cell],
      x: round2((col + 0.5) * cw + rng.range(-jx, jx)),
      y: round2((row + 0.5) * ch + rng.range(-jy, jy)),
      r: round2(r),
      fill: objectFill(rng, color),
    }
  })
  objects.sort((a, b) => a.row - b.row || a.col - b.col)
  return { kind: 'image', width, height, format, quality, background, objects }
}

function samplePath(
  rng: Rng,
  width: number,
  height: number,
  frames: number,
  r: number,
  direction: Direction,
): [number, number][] {
  const horizontal = direction === 'left' || direction === 'right'
  const along = horizontal ? width : height
  const across = horizontal ? height : width
  const margin = 2
  const distance = rng.range(0.3, 0.5) * along
  const forward = direction === 'right' || direction === 'down'
  const s0 = forward
    ? rng.range(r + margin, along - r - margin - distance)
    : rng.range(r + margin + distance, along - r - margin)
  const c = rng.range(r + margin, across - r - margin)
  const path: [number, number][] = []
  for (let t = 0; t < frames; t++) {
    const s = s0 + (forward ? 1 : -1) * distance * (t / (frames - 1))
    path.push(horizontal ? [round2(s), round2(c)] : [round2(c), round2(s)])
  }
  return path
}

/** Whether two moving objects stay apart on every frame and start clearly left / right of each other. */
function separated(a: VideoObject, b: VideoObject, width: number): boolean {
  if (Math.abs(a.path[0][0] - b.path[0][0]) < 0.2 * width) return false
  for (let t = 0; t < a.path.length; t++) {
    const dx = a.path[t][0] - b.path[t][0]
    const dy = a.path[t][1] - b.path[t][1]
    if (Math.hypot(dx, dy) < a.r + b.r + 4) return false
  }
  return true
}

/**
 * Samples a video scene: 4-8 frames of one or two objects (distinct color and shape), each moving in a
 * straight line left, right, up or down by 30-50% of the frame, never touching each other or the border.
 */
export function sampleVideoScene(rng: Rng): VideoScene {
  const [width, height] = rng.chance(0.7) ? ([128, 128] as const) : rng.pick(VIDEO_SIZES)
  const frames = rng.intIn(4, 8)
  const background = sampleBackground(rng)
  const { format, quality } = sampleEncoding(rng, background)
  const m = Math.min(width, height) / 3
  const makeObject = (): VideoObject => {
    const size = rng.pick(SIZES)
    const r = round2(SIZE_FACTOR[size] * m * rng.range(0.95, 1.05))
    const direction = rng.pick(DIRECTIONS)
    const color = rng.pick(COLORS)
    return {
      shape: rng.pick(SHAPES),
      color,
      size,
      direction,
      r,
      fill: objectFill(rng, color),
      path: samplePath(rng, width, height, frames, r, direction),
    }
  }
  const first = makeObject()
  const objects = [first]
  if (rng.chance(0.5)) {
    for (let attempt = 0; attempt < 200; attempt++) {
      const second = makeObject()
      if (second.color === first.color && second.shape === first.shape) continue
      if (!separated(first, second, width)) continue
      objects.push(second)
      break
    }
  }
  objects.sort((a, b) => a.path[0][0] - b.path[0][0] || a.path[0][1] - b.path[0][1])
  return { kind: 'video', width, height, frames, format, quality, background, objects }
}
