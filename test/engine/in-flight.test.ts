import { describe, expect, it } from 'vitest'

import { InFlight } from '../../src/engine/in-flight.js'
import { PipelineConfigError } from '../../src/errors.js'

const key = (row: number) => ({ shard: 's', rowGroup: 0, row })

describe('InFlight', () => {
  it('admits up to maxRecords, then admits waiters in order as records are released', async () => {
    const limit = new InFlight({ maxRecords: 2 })
    const admitted: number[] = []
    for (const row of [0, 1, 2, 3]) void limit.acquire(key(row), 1).then(() => admitted.push(row))
    await Promise.resolve()
    expect(admitted).toEqual([0, 1])
    limit.release(key(1))
    await Promise.resolve()
    expect(admitted).toEqual([0, 1, 2])
    expect(limit.inFlightRecords).toBe(2)
    limit.release(key(0))
    limit.release(key(2))
    await Promise.resolve()
    expect(admitted).toEqual([0, 1, 2, 3])
    expect(limit.peakRecords).toBe(2)
  })

  it('bounds bytes but always admits one record, however large', async () => {
    const limit = new InFlight({ maxRecords: 100, maxBytes: 1000 })
    await limit.acquire(key(0), 5000)
    let second = false
    void limit.acquire(key(1), 10).then(() => (second = true))
    await Promise.resolve()
    expect(second).toBe(false)
    limit.release(key(0))
    await Promise.resolve()
    expect(second).toBe(true)
    expect(limit.inFlightBytes).toBe(10)
  })

  it('ignores releases of keys never acquired', () => {
    const limit = new InFlight()
    limit.release(key(9))
    expect(limit.inFlightRecords).toBe(0)
  })

  it('validates its options', () => {
    expect(() => new InFlight({ maxRecords: 0 })).toThrow(PipelineConfigError)
    expect(() => new InFlight({ maxBytes: -1 })).toThrow(/maxBytes/)
  })

  it('re-charges a row with what it holds now (resize): a larger share stops the reader, a smaller one lets it go on', async () => {
    const limit = new InFlight({ maxRecords: 100, maxBytes: 1000 })
    await limit.acquire(key(0), 100)
    limit.resize(key(0), 950) // e.g. its share of a batch's cross-attention memory
    let next = false
    void limit.acquire(key(1), 100).then(() => (next = true))
    await Promise.resolve()
    expect([next, limit.inFlightBytes, limit.peakBytes]).toEqual([false, 950, 950])
    limit.resize(key(0), 256) // only its text is left
    await Promise.resolve()
    expect([next, limit.inFlightBytes]).toEqual([true, 356])
    limit.resize(key(7), 10_000) // never acquired: ignored
    expect(limit.inFlightBytes).toBe(356)
  })

  it('reservations: a batch waits until its bytes fit, except the first of its owner; waiting reservations go before waiting rows', async () => {
    const limit = new InFlight({ maxRecords: 100, maxBytes: 1000 })
    await limit.acquire(key(0), 100)
    const first = await limit.reserve('stage', 800) // fits: 900
    const big = await limit.reserve('other', 5000) // does not fit, but 'other' holds none: granted (progress)
    expect(limit.inFlightBytes).toBe(5900)
    const order: string[] = []
    const second = limit.reserve('stage', 300).then((r) => {
      order.push('stage')
      return r
    })
    void limit.acquire(key(1), 50).then(() => order.push('row'))
    await Promise.resolve()
    expect(order).toEqual([])
    big.release()
    await Promise.resolve()
    expect(order).toEqual([]) // 100 + 800 + 300 > 1000
    first.release()
    await second
    await Promise.resolve()
    expect(order).toEqual(['stage', 'row']) // 100 + 300, then the row: 450
    expect([limit.inFlightBytes, limit.peakBytes, limit.peakReserved]).toEqual([450, 5900, 5800])
    ;(await second).release()
    ;(await second).release() // idempotent
    expect(limit.inFlightBytes).toBe(150)
  })
})
