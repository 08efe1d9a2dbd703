/**
 * The bound on work in flight between a source and its sink. The source `acquire`s before it emits a
 * record and the sink `release`s when the record has left the pipeline, so a slow stage stops the reader
 * instead of letting records pile up in memory: memory depends on the bound, not on the dataset.
 */
import { PipelineConfigError } from '../errors.js'
import type { RowKey } from '../records.js'

export interface InFlightOptions {
  /** Most records between source and sink. Default 1024. */
  maxRecords?: number
  /** Most encoded bytes between source and sink (one record is always admitted). Default 256 MiB. */
  maxBytes?: number
}

export class InFlight {
  readonly maxRecords: number
  readonly maxBytes: number
  private records = 0
  private bytes = 0
  private readonly held = new Map<string, number>()
  private readonly waiters: { id: string; bytes: number; resolve: () => void }[] = []
  /** Highest number of records seen in flight. */
  peakRecords = 0

  constructor(options: InFlightOptions = {}) {
    this.maxRecords = options.maxRecords ?? 1024
    this.maxBytes = options.maxBytes ?? 256 * 1024 * 1024
    if (!Number.isInteger(this.maxRecords) || this.maxRecords < 1) {
      throw new PipelineConfigError('maxRecords', `must be a positive integer, got ${this.maxRecords}`)
    }
    if (!(this.maxBytes > 0)) throw new PipelineConfigError('maxBytes', `must be positive, got ${this.maxBytes}`)
  }

  get inFlightRecords(): number {
    return this.records
  }

  get inFlightBytes(): number {
    return this.bytes
  }

  private fits(bytes: number): boolean {
    if (this.records === 0) return true
    return this.records < this.maxRecords && this.bytes + bytes <= this.maxBytes
  }

  /** Resolves when one more record of `bytes` may enter; registers it under `key`. */
  acquire(key: RowKey, bytes: number): Promise<void> {
    const id = keyString(key)
    if (this.waiters.length === 0 && this.fits(bytes)) {
      this.admit(id, bytes)
      return Promise.resolve()
    }
    return new Promise<void>((resolve) => this.waiters.push({ id, bytes, resolve }))
  }

  /** Releases the record registered under `key` (a no-op for keys never acquired). */
  release(key: RowKey): void {
    const id = keyString(key)
    const bytes = this.held.get(id)
    if (bytes === undefined) return
    this.held.delete(id)
    this.records -= 1
    this.bytes -= bytes
    // Admit waiters in order, accounting for them here so two cannot take the same free slot.
    while (this.waiters.length > 0 && this.fits(this.waiters[0].bytes)) {
      const waiter = this.waiters.shift()!
      this.admit(waiter.id, waiter.bytes)
      waiter.resolve()
    }
  }

  private admit(id: string, bytes: number): void {
    this.records += 1
    this.bytes += bytes
    this.peakRecords = Math.max(this.peakRecords, this.records)
    this.held.set(id, bytes)
  }
}

function keyString(key: RowKey): string {
  return `${key.shard}\u0000${key.row}`
}
