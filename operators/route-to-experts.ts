import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, tensor } from '../src/tensor/tensors.js'
import { isVisualTokens, type ErrorRecord, type VisualTokens } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface RouteToExpertsOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

const isUnrefined = (record: unknown): record is VisualTokens => isVisualTokens(record) && !record.refined

/**
 * Refines visual tokens with the mixture of visual experts, in one sparse dispatch per batch: the router
 * (`router.onnx`) scores every token, each token goes to its top-k experts (no capacity limit, so a token's
 * result never depends on the rest of the batch), the tokens of each expert run together (`experts.onnx`,
 * once per expert), and `tokens + shared_out + Σ w·expert_out` comes back. EVLM form: 8 fine-grained
 * experts, top-2, plus the always-on shared ("world") expert; Eve form: the original and the elastic
 * vision FFN, top-1. Router and experts run in one inference-thread task.
 *
 * In → out: `VisualTokens` (not yet refined) → `VisualTokens` (`refined` true), 1 → 1; everything else
 * (refined tokens included) passes through. Metrics: per-expert token counts `expert_0 … expert_{E-1}`
 * under `routeToExperts`. Errors: a failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * tokens$.pipe(routeToExperts({ model, metrics }))
 */
export function routeToExperts<T extends { kind: string }>(options: RouteToExpertsOptions): OperatorFunction<T, Exclude<T, VisualTokens> | VisualTokens | ErrorRecord> {
  const { model } = options
  return modelStage({
    name: 'routeToExperts',
    model,
    accepts: isUnrefined,
    rows: (batch) => batch.rows,
    run: async (batch, metrics) => {
      const { dims } = batch.visual_tokens
      const d = dims[dims.length - 1]
      // A copy crosses to the inference thread (transferring detaches it): the input record stays intact.
      const { data } = copyTensor(batch.visual_tokens)
      const result = await model.pool().route(model.graph('router'), model.graph('experts'), tensor('float32', [data.length / d, d], data), model.manifest.experts.top_k)
      metrics?.add('compute_ms', result.ms)
      result.load.forEach((count, expert) => metrics?.add(`expert_${expert}`, count))
      const refined: VisualTokens = { kind: 'visual-tokens', rows: batch.rows, visual_tokens: tensor('float32', dims, result.refined.data), refined: true }
      return [refined]
    },
  }, options)
}
