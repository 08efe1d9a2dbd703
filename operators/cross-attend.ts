import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { float32, int64 } from '../src/tensor/tensors.js'
import type { CrossMemory, ErrorRecord, VisualTokens } from '../src/records.js'
import { modelStage, type ModelStageOptions } from './internal/model-stage.js'

export interface CrossAttendOptions extends ModelStageOptions {
  model: VisionLanguageModel
}

/**
 * Computes the decoder's cross-attention memory once per image or clip (`xattn_kv.onnx`): for each decoder
 * layer, keys and values from the tap that feeds that layer (different ViT depths feed different decoder
 * depths, as in EVLM). Clips are laid out frame-major with a learned frame embedding; a batch's clips are
 * padded to its longest (`frame_mask` 0), and padding frames are masked out of attention (-1e9).
 * `visual_tokens [N, L, Q, D]` → `xattn_k / xattn_v [B, n_layer, H, M, dh]`, `xattn_mask [B, M]`, M = F·Q.
 *
 * In → out: `VisualTokens` → `CrossMemory`, 1 → 1; everything else passes through. Unrefined tokens are
 * accepted (a model run without its experts). Errors: a failing run turns the batch's rows into error rows.
 *
 * @example
 * refined$.pipe(crossAttend({ model }))
 */
export function crossAttend<T extends { kind: string }>(options: CrossAttendOptions): OperatorFunction<T, Exclude<T, VisualTokens> | CrossMemory | ErrorRecord> {
  const { model } = options
  return modelStage<VisualTokens>(
    'crossAttend',
    model,
    (record) => (record as { kind: string }).kind === 'visual-tokens',
    (batch) => batch.rows,
    async (batch, metrics) => {
      const [, l, q, d] = batch.visual_tokens.dims
      const per = l * q * d
      const rows = batch.rows
      const f = Math.max(...rows.map((r) => r.frames))
      const source = batch.visual_tokens.data as Float32Array
      let packed: Float32Array
      if (f === 1) packed = source.slice()
      else {
        packed = new Float32Array(rows.length * f * per)
        let offset = 0
        rows.forEach((row, b) => {
          packed.set(source.subarray(offset * per, (offset + row.frames) * per), b * f * per)
          offset += row.frames
        })
      }
      const frameMask = new Array<number>(rows.length * f).fill(0)
      rows.forEach((row, b) => frameMask.fill(1, b * f, b * f + row.frames))
      const { outputs, ms } = await model.pool().run(model.graph('xattn_kv'), {
        visual_tokens: float32([rows.length, f, l, q, d], packed),
        frame_mask: int64([rows.length, f], frameMask),
      })
      metrics?.add('compute_ms', ms)
      const memory: CrossMemory = { kind: 'cross-memory', rows, xattn_k: outputs.xattn_k, xattn_v: outputs.xattn_v, xattn_mask: outputs.xattn_mask }
      return [memory]
    },
    options,
  ) as OperatorFunction<T, Exclude<T, VisualTokens> | CrossMemory | ErrorRecord>
}
