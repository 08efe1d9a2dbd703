import { fileURLToPath } from 'node:url'
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'
import { describe, expect, it } from 'vitest'

import { checkCaption, parseImageCaption, parseVideoCaption, questionType } from '../../scenes/score.js'
import { captionOf, sampleQuestions } from '../../scenes/grammar.js'
import { Rng } from '../../scenes/rng.js'
import type { ImageScene, Scene, VideoScene } from '../../scenes/scene.js'

const fixture = (name: string) => fileURLToPath(new URL(`../../fixtures/scenes/${name}`, import.meta.url))

async function scenesOf(name: string): Promise<Scene[]> {
  const file = await asyncBufferFromFile(fixture(name))
  const rows = await parquetReadObjects({ file, columns: ['scene'], compressors })
  return rows.map((r) => (typeof r.scene === 'string' ? JSON.parse(r.scene) : r.scene) as Scene)
}

const obj = (shape: string, color: string, size: string, row: number, col: number) => ({ shape, color, size, row, col, position: 'x', x: 0, y: 0, r: 1, fill: '#000000' })
const image = (...objects: ReturnType<typeof obj>[]): ImageScene =>
  ({ kind: 'image', width: 256, height: 256, format: 'png', quality: null, background: { kind: 'plain', color: '#888888' }, objects }) as ImageScene

// "a large red circle on the left" (cell 3) and two small green triangles (cells 1 and 8)
const scene = image(obj('triangle', 'green', 'small', 0, 1), obj('circle', 'red', 'large', 1, 0), obj('triangle', 'green', 'small', 2, 2))
const none = { color: 0, shape: 0, size: 0, count: 0, position: 0, motion: 0 }

describe('parseImageCaption / parseVideoCaption', () => {
  it('parses both clause forms; a group of n gives n mentions without a cell', () => {
    expect(parseImageCaption('two small green triangles and a large red circle on the left')).toEqual([
      { size: 'small', color: 'green', shape: 'triangle' },
      { size: 'small', color: 'green', shape: 'triangle' },
      { size: 'large', color: 'red', shape: 'circle', cell: 3 },
    ])
    expect(parseImageCaption('a small blue square at the top right')).toEqual([{ size: 'small', color: 'blue', shape: 'square', cell: 2 }])
    expect(parseVideoCaption('a red circle moves to the left and a blue star moves up')).toEqual([
      { color: 'red', shape: 'circle', direction: 'left' },
      { color: 'blue', shape: 'star', direction: 'up' },
    ])
  })

  it('returns null for text outside the grammar', () => {
    for (const text of ['', 'a red circle', 'a large red circle somewhere', 'one small green triangles', 'a large red circle on the left and', 'two large red circle']) {
      expect(parseImageCaption(text)).toBeNull()
    }
    expect(parseVideoCaption('a red circle moves sideways')).toBeNull()
  })
})

describe('checkCaption', () => {
  it('finds no error in the true caption of every fixture scene (images and clips)', async () => {
    const scenes = [...(await scenesOf('test.parquet')), ...(await scenesOf('video.parquet'))]
    expect(scenes.length).toBe(512 + 128)
    for (const s of scenes) {
      const check = checkCaption(s as ImageScene | VideoScene, captionOf(s))
      expect(check.parsed).toBe(true)
      expect(check.errors).toEqual(none)
    }
  })

  it('counts a wrong colour, shape, size or position on a positioned object', () => {
    const check = (caption: string) => checkCaption(scene, caption).errors
    expect(check('two small green triangles and a large red circle on the left')).toEqual(none)
    expect(check('two small green triangles and a large blue circle on the left')).toEqual({ ...none, color: 1 })
    expect(check('two small green triangles and a large red square on the left')).toEqual({ ...none, shape: 1 })
    expect(check('two small green triangles and a small red circle on the left')).toEqual({ ...none, size: 1 })
    expect(check('two small green triangles and a large red circle on the right')).toEqual({ ...none, position: 1 })
    expect(check('two small blue triangles and a large red circle on the left')).toEqual({ ...none, color: 2 })
  })

  it('counts objects said but absent and objects present but not said as count errors', () => {
    const check = (caption: string) => checkCaption(scene, caption).errors
    expect(check('three small green triangles and a large red circle on the left')).toEqual({ ...none, count: 1 })
    // one triangle said with a position (top, where one is), the other not said
    expect(check('a small green triangle at the top and a large red circle on the left')).toEqual({ ...none, count: 1 })
    expect(check('a large red circle on the left')).toEqual({ ...none, count: 2 })
  })

  it('marks a caption outside the grammar (or an error row) as unparsed', () => {
    expect(checkCaption(scene, 'a picture of shapes')).toMatchObject({ parsed: false, errors: none, objects: 3 })
    expect(checkCaption(scene, null)).toMatchObject({ parsed: false })
  })

  it('counts motion, colour and shape errors in video captions', () => {
    const clip = {
      kind: 'video',
      objects: [
        { shape: 'circle', color: 'red', size: 'small', direction: 'up', r: 1, fill: '#000', path: [[10, 10]] },
        { shape: 'star', color: 'blue', size: 'large', direction: 'left', r: 1, fill: '#000', path: [[50, 10]] },
      ],
    } as unknown as VideoScene
    const check = (caption: string) => checkCaption(clip, caption).errors
    expect(check('a red circle moves up and a blue star moves to the left')).toEqual(none)
    expect(check('a red circle moves down and a blue star moves to the left')).toEqual({ ...none, motion: 1 })
    expect(check('a red circle moves up and a green star moves to the left')).toEqual({ ...none, color: 1 })
    expect(check('a red circle moves up')).toEqual({ ...none, count: 1 })
  })
})

describe('questionType', () => {
  it("agrees with the generator's type for every question it asks of the fixture scenes", async () => {
    const scenes = [...(await scenesOf('test.parquet')), ...(await scenesOf('video.parquet'))]
    let asked = 0
    for (const [i, s] of scenes.entries()) {
      for (const qa of sampleQuestions(s, new Rng([7, i]))) {
        expect(questionType(qa.question)).toBe(qa.type)
        asked++
      }
    }
    expect(asked).toBeGreaterThan(2000)
    expect(questionType('what is this?')).toBe('other')
  })
})
