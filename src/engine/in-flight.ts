/**
 * The bound on work in flight between a source and its sink, in records and in **bytes**. The source
 * `acquire`s before it emits a record and the sink `release`s when the record has left the pipeline, so a
 * slow stage stops the reader instead of letting records pile up in memory: memory depends on the bound,
 * not on the dataset.
 *
 * The bytes are everything the rows in flight hold, against one budget: a row is charged its encoded size
 * when read; a model stage re-charges its rows with their share of the tensors its output records carry
 * (`resize`: taps, visual tokens, cross-attention memory; a few bytes once only text is left); and while a
 * model stage runs a batch, the tensors the inference thread holds for it (pixels, taps, tokens, memory, KV
 * cache) are `reserve`d before the batch starts and freed when it ends. The reader admits a row only while
 * the rows' bytes plus the reservations leave room for it; a stage's reservation waits until it fits, except
 * that a stage with no reservation of its own always gets one (so every stage can make progress and nothing
 * deadlocks). With the model stages chained in one task (`chainModelStages`), the bytes in flight therefore
 * stay within `maxBytes` plus at most one batch (a batch that alone exceeds the budget still runs, one at a
 * time); with them piped, rows admitted before the budget filled can still grow past it as they move on.
 */
import { PipelineConfigError } from '../errors.js'
import type { RowKey } from '../records.js'

export interface InFlightOptions {
  /** Most records between source and sink. Default 1024. */
  maxRecords?: number
  /**
   * Most bytes held by the records between source and sink and by the model batches running (one record is
   * always admitted; see the class). Default `DEFAULT_MAX_BYTES_IN_FLIGHT` (256 MiB).
   */
  maxBytes?: number
}

/**
 * The default byte budget: 256 MiB. At base size (evlm-base, 1.2 GB of weights) it cuts batches at about 9
 * images (the budget / (threads + 2)); measured against 512 MiB (17 images): the same rate, 1.60 rows/s,
 * and 212 MiB less peak RSS (2,200 against 2,412 MiB; docs/benchmarks.md, "base rss"). On small models the
 * 1,024-row bound decides first.
 */
export const DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024

/** Bytes a model stage holds for one running batch; `release` frees them (idempotent). */
export interface Reservation {
  readonly bytes: number
  release(): void
}

export class InFlight {
  readonly maxRecords: number
  readonly maxBytes: number
  private records = 0
  private bytes = 0
  private reserved = 0
  private readonly held = new Map<string, number>()
  /** Reservations held, by owner (a model stage). */
  private readonly owners = new Map<string, number>()
  private readonly waiters: { id: string; bytes: number; resolve: () => void }[] = []
  private readonly reservers: { owner: string; bytes: number; resolve: (reservation: Reservation) => void }[] = []
  /** Highest number of records seen in flight. */
  peakRecords = 0
  /** Highest number of bytes seen in flight (rows and reservations). */
  peakBytes = 0
  /** Highest number of bytes reserved by running batches at once. */
  peakReserved = 0

  constructor(options: InFlightOptions = {}) {
    this.maxRecords = options.maxRecords ?? 1024
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES_IN_FLIGHT
    if (!Number.isInteger(this.maxRecords) || this.maxRecords < 1) {
      throw new PipelineConfigError('maxRecords', `must be a positive integer, got ${this.maxRecords}`)
    }
    if (!(this.maxBytes > 0)) throw new PipelineConfigError('maxBytes', `must be positive, got ${this.maxBytes}`)
  }

  get inFlightRecords(): number {
    return this.records
  }

  /** Bytes held now: the rows' charges plus the reservations. */
  get inFlightBytes(): number {
    return this.bytes + this.reserved
  }

  private fits(bytes: number): boolean {
    if (this.records === 0) return true
    return this.records < this.maxRecords && this.bytes + this.reserved + bytes <= this.maxBytes
  }

  /** Resolves when one more record of `bytes` may enter; registers it under `key`. */
  acquire(key: RowKey, bytes: number): Promise<void> {
    const id = keyString(key)
    if (this.waiters.length === 0 && this.reservers.length === 0 && this.fits(bytes)) {
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
    this.wake()
  }

  /**
   * Re-charges the record under `key` with `bytes` (what it holds now: its share of an output batch's
   * tensors, or of its result). Never waits; a no-op for keys never acquired or already released.
   */
  resize(key: RowKey, bytes: number): void {
    const id = keyString(key)
    const before = this.held.get(id)
    if (before === undefined) return
    this.held.set(id, bytes)
    this.bytes += bytes - before
    this.peak()
    if (bytes < before) this.wake()
  }

  /**
   * Reserves `bytes` for a batch that `owner` (a model stage) is about to run. Resolves when they fit in the
   * budget, or at once when `owner` holds no reservation (so that every stage can always run one batch).
   * Reservations waiting go before records waiting: finishing work in flight frees memory, reading more
   * takes it.
   */
  reserve(owner: string, bytes: number): Promise<Reservation> {
    if (!(bytes >= 0)) throw new PipelineConfigError('reserve', `bytes must be >= 0, got ${bytes}`)
    if (this.reservers.length === 0 && this.reservable(owner, bytes)) return Promise.resolve(this.grant(owner, bytes))
    return new Promise<Reservation>((resolve) => this.reservers.push({ owner, bytes, resolve }))
  }

  private reservable(owner: string, bytes: number): boolean {
    return (this.owners.get(owner) ?? 0) === 0 || this.bytes + this.reserved + bytes <= this.maxBytes
  }

  private grant(owner: string, bytes: number): Reservation {
    this.reserved += bytes
    this.owners.set(owner, (this.owners.get(owner) ?? 0) + 1)
    this.peakReserved = Math.max(this.peakReserved, this.reserved)
    this.peak()
    let released = false
    return {
      bytes,
      release: () => {
        if (released) return
        released = true
        this.reserved -= bytes
        this.owners.set(owner, this.owners.get(owner)! - 1)
        this.wake()
      },
    }
  }

  /** Grants the reservations, then the records, that now fit, in order (each accounted before the next is tried). */
  private wake(): void {
    for (let i = 0; i < this.reservers.length; ) {
      const waiter = this.reservers[i]
      if (this.reservable(waiter.owner, waiter.bytes)) {
        this.reservers.splice(i, 1)
        waiter.resolve(this.grant(waiter.owner, waiter.bytes))
      } else i++
    }
    if (this.reservers.length > 0) return
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
    this.peak()
  }

  private peak(): void {
    this.peakBytes = Math.max(this.peakBytes, this.bytes + this.reserved)
  }
}

function keyString(key: RowKey): string {
  return `${key.shard}\u0000${key.row}`
}
