/**
 * Errors by attribute, scored against the scene ground truth: a predicted caption is parsed with the
 * scenes grammar (docs/data.md) into object mentions, matched to the scene's objects, and each mismatch is
 * counted under the attribute it gets wrong; a question is classified by its grammar form.
 *
 * Matching, per caption:
 * 1. A mention said with a position ("a large red circle on the left") is matched to the scene object in
 *    that cell, when there is one.
 * 2. Every other mention (group members "two small green triangles", mentions whose cell is empty, video
 *    clauses) is matched to a remaining scene object, the pairs agreeing on the most attributes first.
 * 3. A matched pair counts one error per attribute that differs: `color`, `shape`, `size` (images),
 *    `motion` (video), and `position` when the mention was said with a cell other than the object's.
 *    Mentions left over (objects said that are not there) and objects left over (objects not said) count
 *    as `count` errors.
 */
import type { ImageScene, SceneObject, VideoScene } from './scene.js'
import {
  COLORS,
  DIRECTIONS,
  DIRECTION_PHRASES,
  NUMBER_WORDS,
  POSITION_PHRASES,
  SHAPES,
  SHAPE_PLURALS,
  SIZES,
  type Color,
  type Direction,
  type Shape,
  type Size,
} from './words.js'
import { normalizeText } from '../src/text/metrics.js'

export const ATTRIBUTES = ['color', 'shape', 'size', 'count', 'position', 'motion'] as const
export type Attribute = (typeof ATTRIBUTES)[number]

/** One object as a caption says it. Fields the caption does not say are undefined. */
export interface Mention {
  readonly color: Color
  readonly shape: Shape
  readonly size?: Size
  /** Grid cell `row * 3 + col`, when said ("on the left"). */
  readonly cell?: number
  readonly direction?: Direction
}

/** Errors found in one caption, by attribute (object-level counts). */
export type AttributeErrors = Record<Attribute, number>

export interface CaptionCheck {
  /** False when the caption is not in the grammar (then `errors` is empty and the caption counts as unparsed). */
  readonly parsed: boolean
  readonly errors: AttributeErrors
  /** Scene objects in the ground truth. */
  readonly objects: number
}

const emptyErrors = (): AttributeErrors => ({ color: 0, shape: 0, size: 0, count: 0, position: 0, motion: 0 })

const inList = <T extends string>(list: readonly T[], word: string | undefined): word is T =>
  word !== undefined && (list as readonly string[]).includes(word)

const PLURAL_TO_SHAPE = new Map<string, Shape>(SHAPES.map((s) => [SHAPE_PLURALS[s], s]))
const PHRASE_TO_DIRECTION = new Map<string, Direction>(DIRECTIONS.map((d) => [DIRECTION_PHRASES[d], d]))

/**
 * Parses an image caption into mentions (a group of n becomes n mentions without a cell); null when any
 * clause is not `a {size} {color} {shape} {where}` or `{two|three} {size} {color} {plural}`.
 */
export function parseImageCaption(caption: string): Mention[] | null {
  const text = normalizeText(caption)
  if (text === '') return null
  const mentions: Mention[] = []
  for (const clause of text.split(' and ')) {
    const w = clause.split(' ')
    if (w[0] === 'a' && inList(SIZES, w[1]) && inList(COLORS, w[2]) && inList(SHAPES, w[3])) {
      const cell = POSITION_PHRASES.indexOf(w.slice(4).join(' '))
      if (cell < 0) return null
      mentions.push({ size: w[1], color: w[2], shape: w[3], cell })
      continue
    }
    const count = (NUMBER_WORDS as readonly string[]).indexOf(w[0])
    const shape = PLURAL_TO_SHAPE.get(w[3] ?? '')
    if (count >= 2 && w.length === 4 && inList(SIZES, w[1]) && inList(COLORS, w[2]) && shape !== undefined) {
      for (let i = 0; i < count; i++) mentions.push({ size: w[1], color: w[2], shape })
      continue
    }
    return null
  }
  return mentions
}

/** Parses a video caption (`a {color} {shape} moves {direction}` clauses); null when it is not one. */
export function parseVideoCaption(caption: string): Mention[] | null {
  const text = normalizeText(caption)
  if (text === '') return null
  const mentions: Mention[] = []
  for (const clause of text.split(' and ')) {
    const w = clause.split(' ')
    const direction = PHRASE_TO_DIRECTION.get(w.slice(4).join(' '))
    if (w[0] !== 'a' || !inList(COLORS, w[1]) || !inList(SHAPES, w[2]) || w[3] !== 'moves' || direction === undefined) return null
    mentions.push({ color: w[1], shape: w[2], direction })
  }
  return mentions
}

interface Truth {
  readonly color: Color
  readonly shape: Shape
  readonly size?: Size
  readonly cell?: number
  readonly direction?: Direction
}

const imageTruth = (o: SceneObject): Truth => ({ color: o.color, shape: o.shape, size: o.size, cell: o.row * 3 + o.col })

function agreement(m: Mention, t: Truth): number {
  let n = 0
  if (m.color === t.color) n++
  if (m.shape === t.shape) n++
  if (m.size !== undefined && m.size === t.size) n++
  if (m.direction !== undefined && m.direction === t.direction) n++
  return n
}

function compare(mentions: readonly Mention[], truths: readonly Truth[]): AttributeErrors {
  const errors = emptyErrors()
  const freeMentions = new Set(mentions.map((_, i) => i))
  const freeTruths = new Set(truths.map((_, i) => i))
  const pairs: [Mention, Truth][] = []
  // 1. said cell → the object in that cell
  for (const [i, m] of mentions.entries()) {
    if (m.cell === undefined) continue
    const j = truths.findIndex((t, j) => freeTruths.has(j) && t.cell === m.cell)
    if (j < 0) continue
    pairs.push([m, truths[j]])
    freeMentions.delete(i)
    freeTruths.delete(j)
  }
  // 2. the rest, most agreeing pairs first (ties: mention order, then object order)
  const candidates: { i: number; j: number; score: number }[] = []
  for (const i of freeMentions) for (const j of freeTruths) candidates.push({ i, j, score: agreement(mentions[i], truths[j]) })
  candidates.sort((a, b) => b.score - a.score || a.i - b.i || a.j - b.j)
  for (const { i, j } of candidates) {
    if (!freeMentions.has(i) || !freeTruths.has(j)) continue
    pairs.push([mentions[i], truths[j]])
    freeMentions.delete(i)
    freeTruths.delete(j)
  }
  // 3. count the differences
  for (const [m, t] of pairs) {
    if (m.color !== t.color) errors.color++
    if (m.shape !== t.shape) errors.shape++
    if (m.size !== undefined && t.size !== undefined && m.size !== t.size) errors.size++
    if (m.direction !== undefined && t.direction !== undefined && m.direction !== t.direction) errors.motion++
    if (m.cell !== undefined && t.cell !== undefined && m.cell !== t.cell) errors.position++
  }
  errors.count += freeMentions.size + freeTruths.size
  return errors
}

/** Scores a predicted caption against the scene it describes (image or video). */
export function checkCaption(scene: ImageScene | VideoScene, caption: string | null): CaptionCheck {
  const objects = scene.objects.length
  if (caption === null) return { parsed: false, errors: emptyErrors(), objects }
  if (scene.kind === 'video') {
    const mentions = parseVideoCaption(caption)
    if (mentions === null) return { parsed: false, errors: emptyErrors(), objects }
    const truths = scene.objects.map((o) => ({ color: o.color, shape: o.shape, direction: o.direction }))
    return { parsed: true, errors: compare(mentions, truths), objects }
  }
  const mentions = parseImageCaption(caption)
  if (mentions === null) return { parsed: false, errors: emptyErrors(), objects }
  return { parsed: true, errors: compare(mentions, scene.objects.map(imageTruth)), objects }
}

// --------------------------------------------------------------------------------------------- questions

export const QUESTION_TYPES = ['color', 'count', 'exists', 'where', 'shape', 'direction', 'other'] as const
export type EvalQuestionType = (typeof QUESTION_TYPES)[number]

/** The grammar's question type of `question` (docs/data.md), from its form; `other` when it has none. */
export function questionType(question: string): EvalQuestionType {
  const q = question.trim().toLowerCase().replace(/\s+/g, ' ')
  if (/^what color is the .+\?$/.test(q)) return 'color'
  if (/^how many \S+ are there\?$/.test(q)) return 'count'
  if (/^is there an? \S+ \S+\?$/.test(q)) return 'exists'
  if (/^where is the .+\?$/.test(q)) return 'where'
  if (/^what shape is the .+ object\?$/.test(q)) return 'shape'
  if (/^which way does the .+ move\?$/.test(q)) return 'direction'
  return 'other'
}
