/**
 * The caption and question grammar of the synthetic scenes, and its vocabulary.
 *
 * Everything here is a pure function of a scene (plus a seeded `Rng` to choose questions), so any stored
 * caption or answer can be re-derived from the scene JSON next to it: `captionOf(scene)` and
 * `answerQuestion(scene, question)` are what a scorer or a test uses. docs/data.md states the rules.
 */
import type { Rng } from './rng.js'
import type { ImageScene, Scene, SceneObject, VideoScene } from './scene.js'
import {
  COLORS,
  DIRECTIONS,
  DIRECTION_PHRASES,
  NO,
  NUMBER_WORDS,
  POSITIONS,
  POSITION_PHRASES,
  SHAPES,
  SHAPE_PLURALS,
  SIZES,
  SPECIAL_TOKENS,
  YES,
  type Color,
  type Shape,
  type Size,
} from './words.js'

const cellOf = (o: SceneObject) => o.row * 3 + o.col

// ---------------------------------------------------------------------------------------------- captions

/**
 * Image caption. Objects are taken in reading order (grid row, then column); objects with the same
 * (size, color, shape) form one group, placed where its first member is, and said with a count and no
 * position ("two small green triangles"); a lone object is said with its position ("a large red circle
 * on the left"). Groups are joined with "and".
 */
export function captionImage(scene: ImageScene): string {
  const ordered = scene.objects.slice().sort((a, b) => cellOf(a) - cellOf(b))
  const groups: { first: SceneObject; count: number }[] = []
  for (const o of ordered) {
    const g = groups.find((g) => g.first.size === o.size && g.first.color === o.color && g.first.shape === o.shape)
    if (g) g.count++
    else groups.push({ first: o, count: 1 })
  }
  return groups
    .map(({ first: o, count }) =>
      count === 1
        ? `a ${o.size} ${o.color} ${o.shape} ${POSITION_PHRASES[cellOf(o)]}`
        : `${NUMBER_WORDS[count]} ${o.size} ${o.color} ${SHAPE_PLURALS[o.shape]}`,
    )
    .join(' and ')
}

/**
 * Video caption: "a {color} {shape} moves {to the left | to the right | up | down}" per object, objects
 * ordered left to right by their position on the first frame, joined with "and".
 */
export function captionVideo(scene: VideoScene): string {
  return scene.objects
    .slice()
    .sort((a, b) => a.path[0][0] - b.path[0][0] || a.path[0][1] - b.path[0][1])
    .map((o) => `a ${o.color} ${o.shape} moves ${DIRECTION_PHRASES[o.direction]}`)
    .join(' and ')
}

/** The caption of any scene. */
export function captionOf(scene: Scene): string {
  return scene.kind === 'image' ? captionImage(scene) : captionVideo(scene)
}

// --------------------------------------------------------------------------------------------- questions

export type QuestionType = 'color' | 'count' | 'exists' | 'where' | 'shape' | 'direction'

/** The question types asked about images, in the order `sampleQuestions` returns them. */
export const IMAGE_QUESTION_TYPES: readonly QuestionType[] = ['color', 'count', 'exists', 'where', 'shape']
export const VIDEO_QUESTION_TYPES: readonly QuestionType[] = ['direction']

export interface QaPair {
  type: QuestionType
  question: string
  /** Always a single word. */
  answer: string
}

type Filter = { size?: Size; color?: Color; shape?: Shape; cell?: number }

function matches(o: SceneObject, f: Filter): boolean {
  return (
    (f.size === undefined || o.size === f.size) &&
    (f.color === undefined || o.color === f.color) &&
    (f.shape === undefined || o.shape === f.shape) &&
    (f.cell === undefined || cellOf(o) === f.cell)
  )
}

const countMatching = (scene: ImageScene, f: Filter) => scene.objects.filter((o) => matches(o, f)).length

/** "the {ref}" in a color question: the shortest of shape / size shape / shape position that is unique. */
function colorRef(scene: ImageScene, o: SceneObject): string {
  if (countMatching(scene, { shape: o.shape }) === 1) return o.shape
  if (countMatching(scene, { size: o.size, shape: o.shape }) === 1) return `${o.size} ${o.shape}`
  return `${o.shape} ${POSITION_PHRASES[cellOf(o)]}`
}

/** "the {ref}" in a where question: color shape, else size color shape; null when neither is unique. */
function whereRef(scene: ImageScene, o: SceneObject): string | null {
  if (countMatching(scene, { color: o.color, shape: o.shape }) === 1) return `${o.color} ${o.shape}`
  if (countMatching(scene, { size: o.size, color: o.color, shape: o.shape }) === 1) return `${o.size} ${o.color} ${o.shape}`
  return null
}

/** "the {ref} object" in a shape question: color, else size color; null when neither is unique. */
function shapeRef(scene: ImageScene, o: SceneObject): string | null {
  if (countMatching(scene, { color: o.color }) === 1) return o.color
  if (countMatching(scene, { size: o.size, color: o.color }) === 1) return `${o.size} ${o.color}`
  return null
}

const present = (scene: ImageScene, color: Color, shape: Shape) => countMatching(scene, { color, shape }) > 0

/**
 * One question of each type that the scene allows, in the order of `IMAGE_QUESTION_TYPES` /
 * `VIDEO_QUESTION_TYPES` (a where or shape question is left out when no object can be named uniquely
 * that way). The answer is always `answerQuestion(scene, question)`.
 */
export function sampleQuestions(scene: Scene, rng: Rng): QaPair[] {
  if (scene.kind === 'video') {
    const o = rng.pick(scene.objects)
    const question = `which way does the ${o.color} ${o.shape} move?`
    return [{ type: 'direction', question, answer: o.direction }]
  }
  const objects = scene.objects
  const out: QaPair[] = []

  const c = rng.pick(objects)
  out.push({ type: 'color', question: `what color is the ${colorRef(scene, c)}?`, answer: c.color })

  const absentShapes = SHAPES.filter((s) => countMatching(scene, { shape: s }) === 0)
  const countShape = rng.chance(0.7) || absentShapes.length === 0 ? rng.pick(objects).shape : rng.pick(absentShapes)
  out.push({
    type: 'count',
    question: `how many ${SHAPE_PLURALS[countShape]} are there?`,
    answer: NUMBER_WORDS[countMatching(scene, { shape: countShape })],
  })

  let color: Color
  let shape: Shape
  if (rng.chance(0.5)) {
    ;({ color, shape } = rng.pick(objects))
  } else {
    // a near miss (an object present with its color or its shape changed) or any absent pair
    const near = rng.chance(2 / 3)
    const base = rng.pick(objects)
    const changeColor = rng.chance(0.5)
    do {
      color = near && !changeColor ? base.color : rng.pick(COLORS)
      shape = near && changeColor ? base.shape : rng.pick(SHAPES)
    } while (present(scene, color, shape))
  }
  out.push({
    type: 'exists',
    question: `is there a ${color} ${shape}?`,
    answer: present(scene, color, shape) ? YES : NO,
  })

  const nameable = objects.filter((o) => whereRef(scene, o) !== null)
  if (nameable.length > 0) {
    const o = rng.pick(nameable)
    out.push({ type: 'where', question: `where is the ${whereRef(scene, o)}?`, answer: o.position })
  }

  const byColor = objects.filter((o) => shapeRef(scene, o) !== null)
  if (byColor.length > 0) {
    const o = rng.pick(byColor)
    out.push({ type: 'shape', question: `what shape is the ${shapeRef(scene, o)} object?`, answer: o.shape })
  }
  return out
}

/** Parses "[size] [color] [shape] [position phrase]" into a filter; null when it is not that. */
function parseRef(ref: string): Filter | null {
  const words = ref.split(' ')
  const f: Filter = {}
  let i = 0
  if ((SIZES as readonly string[]).includes(words[i])) f.size = words[i++] as Size
  if ((COLORS as readonly string[]).includes(words[i])) f.color = words[i++] as Color
  if ((SHAPES as readonly string[]).includes(words[i])) f.shape = words[i++] as Shape
  const rest = words.slice(i).join(' ')
  if (rest !== '') {
    const cell = POSITION_PHRASES.indexOf(rest)
    if (cell < 0) return null
    f.cell = cell
  }
  return f
}

function unique(scene: ImageScene, f: Filter | null): SceneObject | null {
  if (f === null) return null
  const found = scene.objects.filter((o) => matches(o, f))
  return found.length === 1 ? found[0] : null
}

/**
 * The answer the grammar gives to `question` about `scene`, or null when the question is not one the
 * grammar produces or does not name exactly one object. Used to score VQA outputs and to check shards.
 */
export function answerQuestion(scene: Scene, question: string): string | null {
  let m: RegExpMatchArray | null
  if (scene.kind === 'video') {
    if ((m = question.match(/^which way does the (\w+) (\w+) move\?$/))) {
      const found = scene.objects.filter((o) => o.color === m![1] && o.shape === m![2])
      return found.length === 1 ? found[0].direction : null
    }
    return null
  }
  if ((m = question.match(/^what color is the (.+)\?$/))) {
    const f = parseRef(m[1])
    if (f === null || f.shape === undefined || f.color !== undefined) return null
    return unique(scene, f)?.color ?? null
  }
  if ((m = question.match(/^how many (\w+) are there\?$/))) {
    const shape = SHAPES.find((s) => SHAPE_PLURALS[s] === m![1])
    return shape === undefined ? null : NUMBER_WORDS[countMatching(scene, { shape })]
  }
  if ((m = question.match(/^is there a (\w+) (\w+)\?$/))) {
    const f = parseRef(`${m[1]} ${m[2]}`)
    if (f === null || f.color === undefined || f.shape === undefined || f.size !== undefined) return null
    return present(scene, f.color, f.shape) ? YES : NO
  }
  if ((m = question.match(/^where is the (.+)\?$/))) {
    const f = parseRef(m[1])
    if (f === null || f.color === undefined || f.shape === undefined || f.cell !== undefined) return null
    return unique(scene, f)?.position ?? null
  }
  if ((m = question.match(/^what shape is the (.+) object\?$/))) {
    const f = parseRef(m[1])
    if (f === null || f.color === undefined || f.shape !== undefined || f.cell !== undefined) return null
    return unique(scene, f)?.shape ?? null
  }
  return null
}

// -------------------------------------------------------------------------------------------- vocabulary

/**
 * The reference tokenizer's word split: lowercase words separated by spaces, with "?" a token of its own
 * ("where is the red circle?" → [..., "circle", "?"]).
 */
export function tokenize(text: string): string[] {
  return text
    .replace(/\?/g, ' ? ')
    .split(/\s+/)
    .filter((w) => w !== '')
}

/**
 * Every phrase the grammar can produce, exhaustively: caption phrases (whole captions are these joined
 * with "and"), every question form, every answer. The vocabulary is exactly the words of these phrases.
 */
export function grammarPhrases(): string[] {
  const out: string[] = ['and']
  for (const size of SIZES)
    for (const color of COLORS)
      for (const shape of SHAPES) {
        for (const where of POSITION_PHRASES) out.push(`a ${size} ${color} ${shape} ${where}`)
        for (const n of [2, 3]) out.push(`${NUMBER_WORDS[n]} ${size} ${color} ${SHAPE_PLURALS[shape]}`)
      }
  for (const color of COLORS)
    for (const shape of SHAPES) {
      for (const d of DIRECTIONS) out.push(`a ${color} ${shape} moves ${DIRECTION_PHRASES[d]}`)
      out.push(`which way does the ${color} ${shape} move?`)
      out.push(`is there a ${color} ${shape}?`)
      out.push(`where is the ${color} ${shape}?`)
      for (const size of SIZES) out.push(`where is the ${size} ${color} ${shape}?`)
    }
  for (const shape of SHAPES) {
    out.push(`what color is the ${shape}?`)
    for (const size of SIZES) out.push(`what color is the ${size} ${shape}?`)
    for (const where of POSITION_PHRASES) out.push(`what color is the ${shape} ${where}?`)
    out.push(`how many ${SHAPE_PLURALS[shape]} are there?`)
  }
  for (const color of COLORS) {
    out.push(`what shape is the ${color} object?`)
    for (const size of SIZES) out.push(`what shape is the ${size} ${color} object?`)
  }
  out.push(...COLORS, ...NUMBER_WORDS, YES, NO, ...POSITIONS, ...SHAPES, ...DIRECTIONS)
  return out
}

/**
 * The reference model's vocabulary, one token per id: the special tokens (`<pad>` = 0, `<bos>`, `<eos>`,
 * `<unk>`, `<sep>`) then every word of `grammarPhrases()` in sorted order. This is `vocab.txt`.
 */
export function buildVocabulary(): string[] {
  const words = new Set<string>()
  for (const p of grammarPhrases()) for (const w of tokenize(p)) words.add(w)
  return [...SPECIAL_TOKENS, ...[...words].sort()]
}
