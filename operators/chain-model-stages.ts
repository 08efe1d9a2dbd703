import type { OperatorFunction } from 'rxjs'

import { fuseModelStages } from './internal/model-stage.js'

/**
 * Composes model operators so that each batch runs all of their stages in **one** inference-thread task:
 * the tensors between them stay in the thread (no transfer back to the main thread and out again, no copy
 * per stage), and only the last operator's outputs come back. Use it where model operators follow each
 * other; an operator of your own between two of them breaks the chain there (it reads their tensors).
 *
 * In → out: what `pipe(a, b, c, ...)` of the same operators gives — byte-identical tensors and texts, the
 * same error rows (rows the first stage refuses, rows without a question, a batch failing at a stage, with
 * the same messages), records the stages do not take passed around — except that a batch's error rows and
 * results may be emitted in another order (the sink restores input order). The operators must be model
 * operators of one model (`extractVitFeatures`, `resampleTokens`, `routeToExperts`, `crossAttend`,
 * `decodeText`), each taking what the one before makes, and only the first may open `batchRecords` batches.
 * The first operator's `concurrency` and `inFlight` apply to the chain; each operator's `metrics` count its
 * own stage (the task's bytes moved and held are counted under the first).
 * Errors: `PipelineConfigError` at once for an empty list, an operator that is not a model operator, or a
 * first-only operator later in the chain.
 *
 * @example
 * decoded$.pipe(
 *   batchRecords({ maxSize: 32 }),
 *   chainModelStages(extractVitFeatures({ model }), resampleTokens({ model }), routeToExperts({ model }), crossAttend({ model }), decodeText({ model })),
 * )
 */
export function chainModelStages<T, R>(...operators: readonly OperatorFunction<any, any>[]): OperatorFunction<T, R> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return fuseModelStages<T, R>(operators)
}
