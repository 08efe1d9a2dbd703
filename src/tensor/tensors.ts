/**
 * Making and describing tensors (`TensorData`, defined with the records in `src/records.ts`): a dtype, dims
 * and a typed array. Tensors cross to and from inference threads as transferred ArrayBuffers, which
 * detaches them on the sending side; `copyTensor` is how a caller keeps its own.
 */
import { ShapeMismatchError } from '../errors.js'
import type { TensorArray, TensorData, TensorDtype } from '../records.js'

export type { TensorArray, TensorData, TensorDtype } from '../records.js'

export type Feeds = Readonly<Record<string, TensorData>>

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((n, d) => n * d, 1)
}

/** A tensor, checking that `data` holds exactly `dims` elements. */
export function tensor(dtype: TensorDtype, dims: readonly number[], data: TensorArray): TensorData {
  if (data.length !== elementCount(dims)) throw new ShapeMismatchError('tensor', dims, [data.length])
  return { dtype, dims: [...dims], data }
}

/** A float32 tensor over `data` (not copied when it is a Float32Array), or zeros. */
export function float32(dims: readonly number[], data?: Float32Array | readonly number[]): TensorData {
  return tensor('float32', dims, data instanceof Float32Array ? data : data === undefined ? new Float32Array(elementCount(dims)) : Float32Array.from(data))
}

/** An int64 tensor over `data` (not copied when it is a BigInt64Array), or zeros. */
export function int64(dims: readonly number[], data?: BigInt64Array | readonly (number | bigint)[]): TensorData {
  const array = data instanceof BigInt64Array ? data : BigInt64Array.from((data ?? new Array(elementCount(dims)).fill(0)).map((v) => BigInt(v)))
  return tensor('int64', dims, array)
}

/** The data of a float32 tensor; throws `ShapeMismatchError` naming `name` for another dtype. */
export function float32Data(t: TensorData, name: string): Float32Array {
  if (!(t.data instanceof Float32Array)) throw new ShapeMismatchError(`${name} (float32)`, t.dims, [...t.dims], { cause: `dtype ${t.dtype}` })
  return t.data
}

/** The buffers of `tensors`, for transfer lists. Buffers shared by several tensors are listed once. */
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
