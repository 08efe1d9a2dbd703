/**
 * Minimal NumPy `.npy` (format version 1.0) writing for uint8 arrays, streamed row by row, so that a
 * PyTorch trainer loads the training export with `numpy.load(path, mmap_mode='r')` alone.
 */
import { closeSync, openSync, writeSync } from 'node:fs'

/** The `.npy` v1.0 header for a C-order uint8 array of `shape`, padded to a multiple of 64 bytes. */
export function npyHeader(shape: readonly number[]): Buffer {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ')
  const dict = `{'descr': '|u1', 'fortran_order': False, 'shape': (${dims}), }`
  const prefix = 10 // magic (6) + version (2) + header length (2)
  const total = Math.ceil((prefix + dict.length + 1) / 64) * 64
  if (total - prefix > 0xffff) throw new RangeError('npy header too long for format 1.0')
  const header = Buffer.alloc(total, 0x20)
  header.write('\x93NUMPY', 0, 'latin1')
  header[6] = 1
  header[7] = 0
  header.writeUInt16LE(total - prefix, 8)
  header.write(dict, prefix, 'latin1')
  header[total - 1] = 0x0a
  return header
}

/** Parses the shape and dtype out of a `.npy` header (for tests and checks). */
export function parseNpyHeader(bytes: Uint8Array): { descr: string; shape: number[]; dataOffset: number } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error('not an npy file')
  const major = buf[6]
  const len = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8)
  const start = major === 1 ? 10 : 12
  const dict = buf.toString('latin1', start, start + len)
  const descr = /'descr':\s*'([^']+)'/.exec(dict)?.[1] ?? ''
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(dict)?.[1] ?? ''
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number)
  return { descr, shape, dataOffset: start + len }
}

/** Writes a uint8 `.npy` file of a known shape, one row (`shape[1..]` elements) at a time. */
export class NpyWriter {
  private readonly fd: number
  private written = 0
  readonly rowBytes: number

  constructor(
    readonly path: string,
    readonly shape: readonly number[],
  ) {
    this.rowBytes = shape.slice(1).reduce((a, b) => a * b, 1)
    this.fd = openSync(path, 'w')
    writeSync(this.fd, npyHeader(shape))
  }

  /** Appends one row; shorter input (e.g. a clip with fewer frames) is zero-padded to the row size. */
  writeRow(row: Uint8Array): void {
    if (this.written >= this.shape[0]) throw new RangeError(`${this.path}: more than ${this.shape[0]} rows`)
    if (row.byteLength > this.rowBytes) throw new RangeError(`${this.path}: row of ${row.byteLength} bytes > ${this.rowBytes}`)
    writeSync(this.fd, row)
    if (row.byteLength < this.rowBytes) writeSync(this.fd, Buffer.alloc(this.rowBytes - row.byteLength))
    this.written++
  }

  /** Closes the file; throws unless exactly `shape[0]` rows were written. */
  close(): void {
    closeSync(this.fd)
    if (this.written !== this.shape[0]) throw new Error(`${this.path}: wrote ${this.written} of ${this.shape[0]} rows`)
  }
}
