/**
 * The decoder's self-attention KV cache as the generation loop keeps it between steps: `k`, `v`
 * `[n_layer, rows, H, S, dh]` (the layout of `decoder.onnx`'s `past_k / past_v` and `present_k / present_v`)
 * and a 0/1 mask per row and position. Rows are left-padded so that rows of different lengths share one S;
 * padding positions are masked (attention weight exactly zero), so a row's values never depend on its
 * neighbours. Every operation returns a new cache (the arrays of a cache are never written after it is made).
 */
import { float32, type TensorData } from '../tensor/tensors.js'

/** The cache's fixed dims: decoder layers, heads, head size (the manifest's `n_layer`, `n_head`, `head_dim`). */
export interface CacheShape {
  readonly nLayer: number
  readonly heads: number
  readonly headDim: number
}

/** A self-attention cache: `k`, `v` `[nl, rows, H, S, dh]` and a 0/1 mask per row and position. */
export class KvCache {
  constructor(
    readonly nl: number,
    readonly heads: number,
    readonly dh: number,
    readonly rows: number,
    readonly length: number,
    readonly k: Float32Array,
    readonly v: Float32Array,
    /** `[rows, length]` */
    readonly mask: Uint8Array,
  ) {}

  /** A cache of no rows. */
  static empty(shape: CacheShape): KvCache {
    return new KvCache(shape.nLayer, shape.heads, shape.headDim, 0, 0, new Float32Array(0), new Float32Array(0), new Uint8Array(0))
  }

  /** The cache a prefill returned (`present_k / present_v [nl, rows, H, length, dh]`), with its prompts' mask. */
  static fromPresent(shape: CacheShape, rows: number, length: number, present_k: TensorData, present_v: TensorData, mask: Uint8Array): KvCache {
    return new KvCache(shape.nLayer, shape.heads, shape.headDim, rows, length, present_k.data as Float32Array, present_v.data as Float32Array, mask)
  }

  /** The cache of rows `indices` (in that order; an index may repeat). */
  gather(indices: readonly number[]): KvCache {
    const { nl, heads, dh, length } = this
    const span = length * dh
    const rows = indices.length
    const k = new Float32Array(nl * rows * heads * span)
    const v = new Float32Array(k.length)
    const mask = new Uint8Array(rows * length)
    for (let l = 0; l < nl; l++) {
      for (let r = 0; r < rows; r++) {
        const src = (l * this.rows + indices[r]) * heads * span
        const dst = (l * rows + r) * heads * span
        k.set(this.k.subarray(src, src + heads * span), dst)
        v.set(this.v.subarray(src, src + heads * span), dst)
      }
    }
    indices.forEach((from, r) => mask.set(this.mask.subarray(from * length, (from + 1) * length), r * length))
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  /** This cache's rows then `other`'s, right-aligned to the longer length (left padding masked). */
  concat(other: KvCache): KvCache {
    if (this.rows === 0) return other
    if (other.rows === 0) return this
    const { nl, heads, dh } = this
    const length = Math.max(this.length, other.length)
    const rows = this.rows + other.rows
    const k = new Float32Array(nl * rows * heads * length * dh)
    const v = new Float32Array(k.length)
    const mask = new Uint8Array(rows * length)
    const place = (cache: KvCache, rowOffset: number) => {
      const shift = length - cache.length
      for (let l = 0; l < nl; l++) {
        for (let r = 0; r < cache.rows; r++) {
          for (let h = 0; h < heads; h++) {
            const src = ((l * cache.rows + r) * heads + h) * cache.length * dh
            const dst = (((l * rows + rowOffset + r) * heads + h) * length + shift) * dh
            k.set(cache.k.subarray(src, src + cache.length * dh), dst)
            v.set(cache.v.subarray(src, src + cache.length * dh), dst)
          }
        }
      }
      for (let r = 0; r < cache.rows; r++) mask.set(cache.mask.subarray(r * cache.length, (r + 1) * cache.length), (rowOffset + r) * length + shift)
    }
    place(this, 0)
    place(other, this.rows)
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  /** Drops leading positions that every row masks (left padding no row needs any more). */
  trim(): KvCache {
    let drop = 0
    while (drop < this.length && this.maskedForAll(drop)) drop++
    if (drop === 0) return this
    const { nl, heads, dh, rows } = this
    const length = this.length - drop
    const k = new Float32Array(nl * rows * heads * length * dh)
    const v = new Float32Array(k.length)
    for (let block = 0; block < nl * rows * heads; block++) {
      const src = (block * this.length + drop) * dh
      k.set(this.k.subarray(src, src + length * dh), block * length * dh)
      v.set(this.v.subarray(src, src + length * dh), block * length * dh)
    }
    const mask = new Uint8Array(rows * length)
    for (let r = 0; r < rows; r++) mask.set(this.mask.subarray(r * this.length + drop, (r + 1) * this.length), r * length)
    return new KvCache(nl, heads, dh, rows, length, k, v, mask)
  }

  private maskedForAll(position: number): boolean {
    for (let r = 0; r < this.rows; r++) if (this.mask[r * this.length + position] !== 0) return false
    return true
  }

  /** The cache after a decoder run that appended `t` positions (the run's `present_*`, masks extended). */
  extended(present_k: TensorData, present_v: TensorData, appendedMask: Uint8Array, t: number): KvCache {
    const length = this.length + t
    const mask = new Uint8Array(this.rows * length)
    for (let r = 0; r < this.rows; r++) {
      mask.set(this.mask.subarray(r * this.length, (r + 1) * this.length), r * length)
      mask.set(appendedMask.subarray(r * t, (r + 1) * t), r * length + this.length)
    }
    return new KvCache(this.nl, this.heads, this.dh, this.rows, length, present_k.data as Float32Array, present_v.data as Float32Array, mask)
  }

  /** The `attention_mask [rows, length + 1]` of a one-token step: each row's mask, then 1 for the new token. */
  stepAttention(): BigInt64Array {
    const width = this.length + 1
    const attention = new BigInt64Array(this.rows * width)
    for (let r = 0; r < this.rows; r++) {
      for (let j = 0; j < this.length; j++) attention[r * width + j] = BigInt(this.mask[r * this.length + j])
      attention[r * width + this.length] = 1n
    }
    return attention
  }

  /** `past_k / past_v` feeds of the next decoder run. */
  feeds(): { past_k: TensorData; past_v: TensorData } {
    const dims = [this.nl, this.rows, this.heads, this.length, this.dh]
    return { past_k: float32(dims, this.k), past_v: float32(dims, this.v) }
  }
}
