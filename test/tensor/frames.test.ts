/**
 * Frame sampling (src/tensor/frames.ts): which frames of a clip are kept when it is longer than the model's
 * `max_frames`. Packing and the frame mask are specified with crossAttend (test/operators/cross-attend.test.ts).
 */
import { describe, expect, it } from 'vitest'

import { ShapeMismatchError } from '../../src/errors.js'
import { evenlySpacedFrames, sampleFrames } from '../../src/tensor/frames.js'

describe('evenlySpacedFrames', () => {
  it('keeps the first and the last frame and spaces the others evenly (rounded)', () => {
    expect(evenlySpacedFrames(12, 8)).toEqual([0, 2, 3, 5, 6, 8, 9, 11])
    expect(evenlySpacedFrames(9, 3)).toEqual([0, 4, 8])
    expect(evenlySpacedFrames(5, 5)).toEqual([0, 1, 2, 3, 4])
    expect(evenlySpacedFrames(7, 1)).toEqual([0])
  })

  it('refuses to keep none, or more frames than there are', () => {
    expect(() => evenlySpacedFrames(3, 0)).toThrow(ShapeMismatchError)
    expect(() => evenlySpacedFrames(3, 4)).toThrow('frames: expected shape [1..3], got [4]')
  })
})

describe('sampleFrames', () => {
  it('copies the kept frames of uint8 HWC pixels into a new array, in order', () => {
    // 5 frames of 2 values each: frame f holds [f, 10 + f]
    const pixels = Uint8Array.from([0, 10, 1, 11, 2, 12, 3, 13, 4, 14])
    const kept = sampleFrames(pixels, 5, 2, 3)
    expect(Array.from(kept)).toEqual([0, 10, 2, 12, 4, 14])
    expect(kept.buffer).not.toBe(pixels.buffer)
  })

  it('refuses pixels that are not frames × frameSize values', () => {
    expect(() => sampleFrames(new Uint8Array(9), 5, 2, 3)).toThrow('pixels: expected shape [5, 2], got [9]')
  })
})
