/**
 * Seeded pseudo-random numbers for the synthetic scenes. Integer arithmetic only (`Math.imul`, shifts), so
 * a stream is the same on every platform and Node version.
 *
 * Every generated unit (an image, a clip) gets its own generator derived from `(seed, stream, index)`, so
 * rows can be rendered concurrently and in any order and still come out identical.
 */

/** murmur3's 32-bit finaliser: a bijective avalanche mix. */
function mix32(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

/** Hashes a list of non-negative integers (each < 2^53) into 32 bits. */
export function hashInts(values: readonly number[]): number {
  let h = 0x9e3779b9
  for (const v of values) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`hashInts: expected a non-negative safe integer, got ${v}`)
    const lo = v >>> 0
    const hi = Math.floor(v / 2 ** 32) >>> 0
    h = mix32(h ^ mix32(lo + 0x632be5ab))
    h = mix32(h ^ mix32(hi + 0x2545f491))
  }
  return h
}

/** sfc32 (Chris Doty-Humphrey's Small Fast Counting generator), 128-bit state. */
export class Rng {
  private a: number
  private b: number
  private c: number
  private d: number

  /** Seeds from any list of non-negative integers, e.g. `new Rng([seed, stream, index])`. */
  constructor(key: readonly number[]) {
    this.a = hashInts([...key, 1])
    this.b = hashInts([...key, 2])
    this.c = hashInts([...key, 3])
    this.d = 1
    for (let i = 0; i < 12; i++) this.nextUint32()
  }

  /** Uniform integer in [0, 2^32). */
  nextUint32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0
    this.d = (this.d + 1) | 0
    this.a = this.b ^ (this.b >>> 9)
    this.b = (this.c + (this.c << 3)) | 0
    this.c = (this.c << 21) | (this.c >>> 11)
    this.c = (this.c + t) | 0
    return t >>> 0
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.nextUint32() / 4294967296
  }

  /** Uniform float in [lo, hi). */
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.float()
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n)
  }

  /** Uniform integer in [lo, hi] (both inclusive). */
  intIn(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1)
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p
  }

  /** A uniformly chosen element. */
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick: empty list')
    return items[this.int(items.length)]
  }

  /** An element chosen with the given relative weights. */
  weighted<T>(items: readonly (readonly [T, number])[]): T {
    const total = items.reduce((s, [, w]) => s + w, 0)
    let x = this.float() * total
    for (const [item, w] of items) {
      if (x < w) return item
      x -= w
    }
    return items[items.length - 1][0]
  }

  /** A shuffled copy (Fisher-Yates). */
  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice()
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1)
      const tmp = out[i]
      out[i] = out[j]
      out[j] = tmp
    }
    return out
  }
}
