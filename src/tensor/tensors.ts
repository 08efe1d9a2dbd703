/**
 * Plain tensors that cross thread boundaries: a dtype, dims and a typed array whose buffer is transferred
 * (not copied) between the main thread and inference workers.
 */
import { ShapeMismatchError } from '../errors.js'

export type TensorDtype = 'float32' | 'int64' | 'int32' | 'uint8' | 'bool'

export type TensorArray = Float32Array | BigInt64Array | Int32Array | Uint8Array

export interface TensorData {
  readonly dtype: TensorDtype
  readonly dims: readonly number[]
  readonly data: TensorArray
}

export type Feeds = Readonly<Record<string, TensorData>>

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((n, d) => n * d, 1)
}

/** A tensor, checking that `data` holds exactly `dims` elements. */
export function tensor(dtype: TensorDtype, dims: readonly number[], data: TensorArray): TensorData {
  if (data.length !== elementCount(dims)) throw new ShapeMismatchError('tensor', dims, [data.length])
  return { dtype, dims: [...dims], data }
}

export function float32(dims: readonly number[], data?: Float32Array | readonly number[]): TensorData {
  return tensor('float32', dims, data instanceof Float32Array ? data : data === undefined ? new Float32Array(elementCount(dims)) : Float32Array.from(data))
}

export function int64(dims: readonly number[], data?: BigInt64Array | readonly (number | bigint)[]): TensorData {
  const array = data instanceof BigInt64Array ? data : BigInt64Array.from((data ?? new Array(elementCount(dims)).fill(0)).map((v) => BigInt(v)))
  return tensor('int64', dims, array)
}

/** The buffers of `feeds`, for transfer lists. Buffers shared by several tensors are listed once. */
export function buffersOf(tensors: Iterable<TensorData>): ArrayBuffer[] {
  const seen = new Set<ArrayBufferLike>()
  for (const t of tensors) seen.add(t.data.buffer)
  return [...seen].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer)
}

export function describeTensor(name: string, t: TensorData): string {
  return `${name}: ${t.dtype}[${t.dims.join(', ')}]`
}

/** A tensor with its own copy of the data (to transfer without detaching the original). */
export function copyTensor(t: TensorData): TensorData {
  return { dtype: t.dtype, dims: [...t.dims], data: t.data.slice() }
}
