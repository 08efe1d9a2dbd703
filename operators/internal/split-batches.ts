/**
 * Opening the batches of `batchRecords` for the first model stage: each batch (an array, or a single record
 * as a batch of one) becomes its members that the stage does not take, passed on one by one in batch order,
 * then one array of the members it takes (when there are any). N → 1 + the others.
 */
import { mergeMap, type OperatorFunction } from 'rxjs'

export function splitBatches<T extends { kind: string }, In extends { kind: string }>(
  accepts: (record: unknown) => record is In,
): OperatorFunction<T | readonly T[], Exclude<T, In> | readonly In[]> {
  return mergeMap((input: T | readonly T[]) => {
    const members: readonly T[] = isBatch(input) ? input : [input]
    const passed: (Exclude<T, In> | readonly In[])[] = []
    const taken: In[] = []
    for (const member of members) {
      if (accepts(member)) taken.push(member)
      // TypeScript does not narrow a generic `T` to `Exclude<T, In>` when a guard fails; it is that.
      else passed.push(member as Exclude<T, In>)
    }
    if (taken.length > 0) passed.push(taken)
    return passed
  })
}

function isBatch<T>(input: T | readonly T[]): input is readonly T[] {
  return Array.isArray(input)
}
