/**
 * The closed sets of words the scene grammar is built from. Everything the generator writes (captions,
 * questions, answers) is made of these words, and `vocab.txt` is derived from them (see `grammar.ts`).
 * American spelling throughout ("color", "center").
 */

export const SHAPES = ['circle', 'square', 'triangle', 'star', 'cross', 'diamond'] as const
export type Shape = (typeof SHAPES)[number]

export const SHAPE_PLURALS: Readonly<Record<Shape, string>> = {
  circle: 'circles',
  square: 'squares',
  triangle: 'triangles',
  star: 'stars',
  cross: 'crosses',
  diamond: 'diamonds',
}

/** Consonant-initial on purpose: the article is always "a". */
export const COLORS = ['red', 'green', 'blue', 'yellow', 'purple', 'cyan'] as const
export type Color = (typeof COLORS)[number]

/** Base hue (degrees), saturation and lightness of each color name; objects jitter around these. */
export const COLOR_HSL: Readonly<Record<Color, readonly [number, number, number]>> = {
  red: [0, 0.82, 0.5],
  green: [125, 0.65, 0.4],
  blue: [222, 0.85, 0.52],
  yellow: [52, 0.95, 0.55],
  purple: [285, 0.6, 0.5],
  cyan: [186, 0.9, 0.45],
}

export const SIZES = ['small', 'large'] as const
export type Size = (typeof SIZES)[number]

/** Grid cells in reading order: index = row * 3 + col. The single-token answer to "where is ...?". */
export const POSITIONS = [
  'top-left',
  'top',
  'top-right',
  'left',
  'center',
  'right',
  'bottom-left',
  'bottom',
  'bottom-right',
] as const
export type Position = (typeof POSITIONS)[number]

/** How a caption or question says where a cell is, same index as `POSITIONS`. */
export const POSITION_PHRASES: readonly string[] = [
  'at the top left',
  'at the top',
  'at the top right',
  'on the left',
  'in the center',
  'on the right',
  'at the bottom left',
  'at the bottom',
  'at the bottom right',
]

export const DIRECTIONS = ['left', 'right', 'up', 'down'] as const
export type Direction = (typeof DIRECTIONS)[number]

/** How a video caption says a direction ("a red circle moves to the left"). */
export const DIRECTION_PHRASES: Readonly<Record<Direction, string>> = {
  left: 'to the left',
  right: 'to the right',
  up: 'up',
  down: 'down',
}

/** Counts as words; index = count. */
export const NUMBER_WORDS = ['zero', 'one', 'two', 'three'] as const

export const YES = 'yes'
export const NO = 'no'

/**
 * Special tokens of the reference model's word-level tokenizer, in id order (`<pad>` = 0 ...). `<sep>`
 * separates a question from its answer in a VQA training sequence: `<bos> question <sep> answer <eos>`.
 */
export const SPECIAL_TOKENS = ['<pad>', '<bos>', '<eos>', '<unk>', '<sep>'] as const
