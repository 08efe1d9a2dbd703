import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { float32 } from '../src/tensor/tensors.js'
import type { ErrorRecord, VisualTokens } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface RouteToExpertsOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

/**
 * Refines visual tokens with the mixture of visual experts, in one sparse dispatch per batch: the router
 * (`router.onnx`) scores every token, each token goes to its top-k experts (no capacity limit, so a token's
 * result never depends on the rest of the batch), the tokens of each expert run together (`experts.onnx`,
 * once per expert), and `tokens + shared_out + Σ w·expert_out` comes back. EVLM form: 8 fine-grained
 * experts, top-2, plus the always-on shared ("world") expert; Eve form: the original and the elastic
 * vision FFN, top-1. Router and experts run in one worker message.
 *
 * In → out: `VisualTokens` (not yet refined) → `VisualTokens` (`refined` true), 1 → 1; everything else
 * passes through. Metrics: per-expert token counts `expert_0 … expert_{E-1}` under `routeToExperts`.
 * Errors: a failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * tokens$.pipe(routeToExperts({ model, metrics }))
 */
export function routeToExperts<T extends { kind: string }>(options: RouteToExpertsOptions): OperatorFunction<T, T | VisualTokens | ErrorRecord> {
  const { model } = options
  return modelStage<VisualTokens>(
    'routeToExperts',
    model,
    (record) => (record as VisualTokens).kind === 'visual-tokens' && !(record as VisualTokens).refined,
    (batch) => batch.rows,
    async (batch, metrics) => {
      const { dims } = batch.visual_tokens
      const d = dims[dims.length - 1]
      const n = batch.visual_tokens.data.length / d
      const tokens = float32([n, d], (batch.visual_tokens.data as Float32Array).slice())
      const result = await model.pool().route(model.graph('router'), model.graph('experts'), tokens, model.manifest.experts.top_k)
      metrics?.add('compute_ms', result.ms)
      result.load.forEach((count, expert) => metrics?.add(`expert_${expert}`, count))
      const refined: VisualTokens = { kind: 'visual-tokens', rows: batch.rows, visual_tokens: float32(dims, result.refined.data as Float32Array), refined: true }
      return [refined]
    },
    options,
  ) as OperatorFunction<T, T | VisualTokens | ErrorRecord>
}
