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
})
