import type { OperatorFunction } from 'rxjs'

import type { VisionLanguageModel } from '../src/model/vision-language-model.js'
import { frameMask, packFrames } from '../src/tensor/frames.js'
import { float32, float32Data, int64 } from '../src/tensor/tensors.js'
import { isVisualTokens, type CrossMemory, type ErrorRecord, type VisualTokens } from '../src/records.js'
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
  return modelStage({
    name: 'crossAttend',
    model,
    accepts: isVisualTokens,
    rows: (batch) => batch.rows,
    run: async (batch, metrics) => {
      const [, l, q, d] = batch.visual_tokens.dims
      const frames = batch.rows.map((row) => row.frames)
      // Packing writes a new array (clips padded to the longest), which is transferred: the input record stays intact.
      const packed = packFrames(float32Data(batch.visual_tokens, 'visual_tokens'), frames, l * q * d)
      const { outputs, ms } = await model.pool().run(model.graph('xattn_kv'), {
        visual_tokens: float32([frames.length, packed.frames, l, q, d], packed.data),
        frame_mask: int64([frames.length, packed.frames], frameMask(frames, packed.frames)),
      })
      metrics?.add('compute_ms', ms)
      const memory: CrossMemory = { kind: 'cross-memory', rows: batch.rows, xattn_k: outputs.xattn_k, xattn_v: outputs.xattn_v, xattn_mask: outputs.xattn_mask }
      return [memory]
    },
  }, options)
}
