import { describe, expect, it } from 'vitest'

import {
  answerQuestion,
  captionImage,
  captionVideo,
  IMAGE_QUESTION_TYPES,
  sampleQuestions,
  tokenize,
} from '../../scenes/grammar.js'
import { Rng } from '../../scenes/rng.js'
import { sampleImageScene, sampleVideoScene, type ImageScene, type SceneObject, type VideoScene } from '../../scenes/scene.js'
import { POSITIONS, type Color, type Shape, type Size } from '../../scenes/words.js'

function obj(size: Size, color: Color, shape: Shape, row: number, col: number): SceneObject {
  return { shape, color, size, row, col, position: POSITIONS[row * 3 + col], x: 0, y: 0, r: 10, fill: '#000000' }
}

function image(...objects: SceneObject[]): ImageScene {
  return {
    kind: 'image',
    width: 256,
    height: 256,
    format: 'png',
    quality: null,
    background: { kind: 'plain', color: '#808080' },
    objects,
  }
}

function video(...objects: { color: Color; shape: Shape; direction: 'left' | 'right' | 'up' | 'down'; x: number }[]): VideoScene {
  return {
    kind: 'video',
    width: 128,
    height: 128,
    frames: 4,
    format: 'png',
    quality: null,
    background: { kind: 'plain', color: '#808080' },
    objects: objects.map((o) => ({
      shape: o.shape,
      color: o.color,
      size: 'small',
      direction: o.direction,
      r: 8,
      fill: '#000000',
      path: [[o.x, 50], [o.x, 50], [o.x, 50], [o.x, 50]],
    })),
  }
}

describe('captionImage', () => {
  it('describes one object with its position', () => {
    expect(captionImage(image(obj('large', 'red', 'circle', 1, 0)))).toBe('a large red circle on the left')
    expect(captionImage(image(obj('small', 'blue', 'square', 0, 2)))).toBe('a small blue square at the top right')
    expect(captionImage(image(obj('small', 'cyan', 'star', 1, 1)))).toBe('a small cyan star in the center')
  })

  it('orders objects by grid row, then column, whatever their order in the scene', () => {
    const scene = image(obj('large', 'red', 'circle', 1, 0), obj('small', 'blue', 'square', 0, 2), obj('small', 'green', 'cross', 2, 1))
    expect(captionImage(scene)).toBe(
      'a small blue square at the top right and a large red circle on the left and a small green cross at the bottom',
    )
  })

  it('counts repeated (size, color, shape) and drops their positions', () => {
    expect(captionImage(image(obj('small', 'green', 'triangle', 0, 0), obj('small', 'green', 'triangle', 2, 2)))).toBe(
      'two small green triangles',
    )
    expect(
      captionImage(image(obj('large', 'red', 'star', 0, 0), obj('large', 'red', 'star', 1, 1), obj('large', 'red', 'star', 2, 0))),
    ).toBe('three large red stars')
  })

  it('places a group where its first member is and keeps near-duplicates apart', () => {
    const scene = image(obj('small', 'yellow', 'triangle', 1, 1), obj('large', 'yellow', 'triangle', 0, 2), obj('large', 'yellow', 'triangle', 1, 2))
    expect(captionImage(scene)).toBe('two large yellow triangles and a small yellow triangle in the center')
  })
})

describe('captionVideo', () => {
  it('says each motion, objects left to right on the first frame', () => {
    expect(captionVideo(video({ color: 'red', shape: 'circle', direction: 'right', x: 40 }))).toBe('a red circle moves to the right')
    expect(
      captionVideo(
        video({ color: 'blue', shape: 'square', direction: 'left', x: 90 }, { color: 'red', shape: 'circle', direction: 'up', x: 30 }),
      ),
    ).toBe('a red circle moves up and a blue square moves to the left')
  })
})

describe('answerQuestion', () => {
  const scene = image(
    obj('large', 'red', 'circle', 0, 0),
    obj('small', 'red', 'circle', 1, 2),
    obj('small', 'blue', 'star', 2, 1),
  )

  it('answers every question form', () => {
    expect(answerQuestion(scene, 'what color is the star?')).toBe('blue')
    expect(answerQuestion(scene, 'what color is the small circle?')).toBe('red')
    expect(answerQuestion(scene, 'what color is the circle on the right?')).toBe('red')
    expect(answerQuestion(scene, 'how many circles are there?')).toBe('two')
    expect(answerQuestion(scene, 'how many crosses are there?')).toBe('zero')
    expect(answerQuestion(scene, 'is there a blue star?')).toBe('yes')
    expect(answerQuestion(scene, 'is there a red star?')).toBe('no')
    expect(answerQuestion(scene, 'where is the blue star?')).toBe('bottom')
    expect(answerQuestion(scene, 'where is the large red circle?')).toBe('top-left')
    expect(answerQuestion(scene, 'what shape is the blue object?')).toBe('star')
    expect(answerQuestion(scene, 'what shape is the small red object?')).toBe('circle')
  })

  it('gives null for ambiguous, unknown or malformed questions', () => {
    expect(answerQuestion(scene, 'what color is the circle?')).toBeNull() // two circles
    expect(answerQuestion(scene, 'where is the red circle?')).toBeNull()
    expect(answerQuestion(scene, 'what shape is the red object?')).toBeNull()
    expect(answerQuestion(scene, 'what color is the square?')).toBeNull() // no square
    expect(answerQuestion(scene, 'how many dogs are there?')).toBeNull()
    expect(answerQuestion(scene, 'what is the meaning of life?')).toBeNull()
    expect(answerQuestion(scene, 'which way does the red circle move?')).toBeNull()
  })

  it('answers the direction of a video object', () => {
    const v = video({ color: 'red', shape: 'circle', direction: 'down', x: 30 }, { color: 'red', shape: 'star', direction: 'left', x: 90 })
    expect(answerQuestion(v, 'which way does the red star move?')).toBe('left')
    expect(answerQuestion(v, 'which way does the blue star move?')).toBeNull()
  })
})

describe('sampleQuestions', () => {
  it('asks answerable single-word questions whose answers the parser re-derives', () => {
    const seen = new Set<string>()
    for (let i = 0; i < 2000; i++) {
      const rng = new Rng([42, i])
      const scene = i % 4 === 3 ? sampleVideoScene(rng) : sampleImageScene(rng)
      const qa = sampleQuestions(scene, rng)
      expect(qa.length).toBeGreaterThan(0)
      for (const { type, question, answer } of qa) {
        seen.add(type)
        expect(answer).toMatch(/^[a-z-]+$/)
        expect(answerQuestion(scene, question)).toBe(answer)
      }
      if (scene.kind === 'image') {
        // color, count and exists are always available, in this order
        expect(qa.slice(0, 3).map((q) => q.type)).toEqual(['color', 'count', 'exists'])
      }
    }
    expect([...seen].sort()).toEqual([...IMAGE_QUESTION_TYPES, 'direction'].sort())
  })

  it('balances yes and no', () => {
    let yes = 0
    const n = 2000
    for (let i = 0; i < n; i++) {
      const rng = new Rng([7, i])
      const qa = sampleQuestions(sampleImageScene(rng), rng)
      if (qa.find((q) => q.type === 'exists')!.answer === 'yes') yes++
    }
    expect(yes / n).toBeGreaterThan(0.4)
    expect(yes / n).toBeLessThan(0.6)
  })
})

describe('tokenize', () => {
  it('splits on spaces and makes "?" a token', () => {
    expect(tokenize('where is the red circle?')).toEqual(['where', 'is', 'the', 'red', 'circle', '?'])
    expect(tokenize('a small cyan star in the center')).toHaveLength(7)
    expect(tokenize('  ')).toEqual([])
  })
})
