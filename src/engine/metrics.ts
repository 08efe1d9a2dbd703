/**
 * Per-operator counters of a run: records in and out, error rows, batches, busy time and queue depth.
 * One {@link RunMetrics} per run, handed to operators through their `metrics` option (no global state).
 */

export interface StageSnapshot {
  readonly stage: string
  readonly recordsIn: number
  readonly recordsOut: number
  readonly errors: number
  readonly batches: number
  /** Milliseconds spent working, summed over concurrent tasks. */
  readonly busyMs: number
  /** Records inside the stage now (accepted, not yet emitted). */
  readonly queueDepth: number
  readonly maxQueueDepth: number
  readonly extra: Readonly<Record<string, number>>
}

export class StageMetrics {
  recordsIn = 0
  recordsOut = 0
  errors = 0
  batches = 0
  busyMs = 0
  maxQueueDepth = 0
  readonly extra: Record<string, number> = {}

  constructor(readonly stage: string) {}

  get queueDepth(): number {
    return this.recordsIn - this.recordsOut
  }

  in(count = 1): void {
    this.recordsIn += count
    if (this.queueDepth > this.maxQueueDepth) this.maxQueueDepth = this.queueDepth
  }

  out(count = 1): void {
    this.recordsOut += count
  }

  busy(ms: number): void {
    this.busyMs += ms
  }

  add(counter: string, value = 1): void {
    this.extra[counter] = (this.extra[counter] ?? 0) + value
  }

  snapshot(): StageSnapshot {
    return {
      stage: this.stage,
      recordsIn: this.recordsIn,
      recordsOut: this.recordsOut,
      errors: this.errors,
      batches: this.batches,
      busyMs: Math.round(this.busyMs * 10) / 10,
      queueDepth: this.queueDepth,
      maxQueueDepth: this.maxQueueDepth,
      extra: { ...this.extra },
    }
  }
}

export class RunMetrics {
  private readonly stages = new Map<string, StageMetrics>()
  readonly startedAt = Date.now()

  /** The metrics of `name`, created on first use. */
  stage(name: string): StageMetrics {
    let stage = this.stages.get(name)
    if (!stage) {
      stage = new StageMetrics(name)
      this.stages.set(name, stage)
    }
    return stage
  }

  snapshot(): StageSnapshot[] {
    return [...this.stages.values()].map((s) => s.snapshot())
  }
}
