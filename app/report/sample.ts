/**
 * Seeded sampling in one pass with bounded memory: a reservoir (Vitter's algorithm R) over a stream of
 * unknown length, and the k smallest items of a stream. The same seed over the same stream gives the same
 * sample.
 */

/** mulberry32: a small, fast 32-bit PRNG; returns floats in [0, 1). Deterministic for a seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A uniform sample of at most `size` items of a stream (algorithm R), seeded. */
export class Reservoir<T> {
  private readonly items: T[] = []
  private seen = 0

  constructor(
    readonly size: number,
    private readonly random: () => number,
  ) {}

  /** Offers the next item of the stream; `make` is called only when the item is kept. */
  offer(make: () => T): void {
    this.seen += 1
    if (this.size <= 0) return
    if (this.items.length < this.size) {
      this.items.push(make())
      return
    }
    const j = Math.floor(this.random() * this.seen)
    if (j < this.size) this.items[j] = make()
  }

  /** Items offered so far. */
  get count(): number {
    return this.seen
  }

  values(): T[] {
    return [...this.items]
  }
}

/** The `size` items with the smallest `score` (ties: the earliest), in ascending score. */
export class Smallest<T> {
  private readonly items: { score: number; order: number; item: T }[] = []
  private order = 0

  constructor(readonly size: number) {}

  offer(score: number, make: () => T): void {
    const order = this.order++
    if (this.size <= 0 || !Number.isFinite(score)) return
    const worst = this.items.at(-1)
    if (this.items.length >= this.size && worst !== undefined && score >= worst.score) return
    let i = this.items.length
    while (i > 0 && this.items[i - 1].score > score) i--
    this.items.splice(i, 0, { score, order, item: make() })
    if (this.items.length > this.size) this.items.pop()
  }

  values(): T[] {
    return this.items.map((e) => e.item)
  }
}
