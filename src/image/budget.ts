/**
 * The bound on pixels being decoded at once. A decoder's memory follows the pixels its header claims (a
 * progressive JPEG holds a coefficient buffer for the whole frame, whatever the output size), not the number
 * of images, so concurrency alone cannot bound it: eight 64-megapixel progressive JPEGs decoded at once took
 * 1.4 GB. Each decode acquires its source's `width × height` before the decoder starts and releases it when
 * the decoder has returned (not when a timeout gave up waiting for it).
 */
import { PipelineConfigError } from '../errors.js'

export class PixelBudget {
  private held = 0
  private active = 0
  private readonly waiting: { pixels: number; resolve: (release: () => void) => void }[] = []
  /** Highest number of pixels held at once. */
  peakPixels = 0

  /** @param maxPixels most source pixels decoded at once; one image is always admitted, however large. */
  constructor(readonly maxPixels: number) {
    if (!(maxPixels >= 1) || !Number.isFinite(maxPixels)) throw new PipelineConfigError('maxPixelsInFlight', `must be a number >= 1, got ${maxPixels}`)
  }

  /** Pixels held now. */
  get inFlightPixels(): number {
    return this.held
  }

  /** Resolves with a release function once `pixels` fit (first come, first served). */
  acquire(pixels: number): Promise<() => void> {
    const weight = Math.max(0, Math.min(pixels, this.maxPixels))
    if (this.waiting.length === 0 && this.fits(weight)) return Promise.resolve(this.admit(weight))
    return new Promise((resolve) => this.waiting.push({ pixels: weight, resolve }))
  }

  private fits(pixels: number): boolean {
    return this.active === 0 || this.held + pixels <= this.maxPixels
  }

  private admit(pixels: number): () => void {
    this.held += pixels
    this.active += 1
    this.peakPixels = Math.max(this.peakPixels, this.held)
    let released = false
    return () => {
      if (released) return
      released = true
      this.held -= pixels
      this.active -= 1
      while (this.waiting.length > 0 && this.fits(this.waiting[0].pixels)) {
        const next = this.waiting.shift()!
        next.resolve(this.admit(next.pixels))
      }
    }
  }
}
