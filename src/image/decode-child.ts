/**
 * Child process of `ChildDecoder`: renders one image at a time with the shared sharp pipeline and answers
 * over IPC. It exists so that a decoder that cannot be interrupted (librsvg renders a whole SVG in one call:
 * a 2 KB file of nested `<use>` took 67 s, and sharp's `timeout` cannot stop it) can be killed.
 */
import { rgbPixels, type PipelineOptions } from './pipeline.js'

export interface ChildRequest {
  readonly id: number
  readonly bytes: Uint8Array
  readonly options: PipelineOptions
}

export type ChildReply = { readonly id: number; readonly pixels: Uint8Array } | { readonly id: number; readonly error: string }

process.on('message', (message: ChildRequest) => {
  const input = Buffer.from(message.bytes.buffer, message.bytes.byteOffset, message.bytes.byteLength)
  rgbPixels(input, message.options).then(
    (raw) => process.send?.({ id: message.id, pixels: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength) } satisfies ChildReply),
    (error: unknown) => process.send?.({ id: message.id, error: error instanceof Error ? error.message : String(error) } satisfies ChildReply),
  )
})
process.on('disconnect', () => process.exit(0))
