import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { copyTensor, type Feeds } from '../src/tensor/tensors.js'
import { isVisualTokens, type BatchRow, type ErrorRecord, type VisualTokens } from '../src/records.js'
import { modelStage, type ModelStageOptions, type StagePlan } from './internal/model-stage.js'

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
 * vision FFN, top-1. Router and experts run in one inference-thread step.
 *
 * In → out: `VisualTokens` (not yet refined) → `VisualTokens` (`refined` true), 1 → 1; everything else
 * (refined tokens included) passes through. Chains with the model operators around it
 * (`chainModelStages`). Metrics: per-expert token counts `expert_0 … expert_{E-1}` under `routeToExperts`.
 * Errors: a failing run turns the batch's rows into error rows (`stage-failed`).
 *
 * @example
 * tokens$.pipe(routeToExperts({ model, metrics }))
 */
export function routeToExperts<T extends { kind: string }>(options: RouteToExpertsOptions): OperatorFunction<T, Exclude<T, VisualTokens> | VisualTokens | ErrorRecord> {
  const { model } = options
  const name = 'routeToExperts'
  const plan = (rows: readonly BatchRow[]): StagePlan<VisualTokens> => ({
    step: { kind: 'route', stage: name, router: model.graph('router'), experts: model.graph('experts'), topK: model.manifest.experts.top_k },
    refused: [],
    rows,
    build: (_, tensors) => [{ kind: 'visual-tokens', rows, visual_tokens: tensors.visual_tokens, refined: true }],
  })
  return modelStage(
    {
      name,
      model,
      accepts: isUnrefined,
      rows: (batch: VisualTokens) => batch.rows,
      outputs: ['visual_tokens'],
      // A copy crosses to the inference thread (transferring detaches it): the input record stays intact.
      start: (batch: VisualTokens): { plan: StagePlan<VisualTokens>; inputs: Feeds } => ({ plan: plan(batch.rows), inputs: { visual_tokens: copyTensor(batch.visual_tokens) } }),
      follow: plan,
      count: (outcome, metrics) => {
        metrics.add('compute_ms', outcome.ms)
        outcome.load?.forEach((count, expert) => metrics.add(`expert_${expert}`, count))
      },
    },
    options,
  )
}
