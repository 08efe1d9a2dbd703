/**
 * Decoding in a child process that can be killed. Used for the formats whose decoder cannot be stopped from
 * outside once it runs (SVG: librsvg renders the whole document in one call, so neither sharp's `timeout`
 * nor a JavaScript timer frees the libuv thread it holds). One request at a time; a request that runs past
 * its time limit kills the child (SIGKILL) and the next request starts a fresh one. An idle child does not
 * keep the process alive.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

import { ImageDecodeError } from '../errors.js'
import type { ChildReply, ChildRequest } from './decode-child.js'
import type { PipelineOptions } from './pipeline.js'

/** The compiled child script (tests run the TypeScript sources, so they use the build's copy). */
function childFile(): string {
  const here = fileURLToPath(import.meta.url)
  const compiled = here.endsWith('.ts') ? here.replace(/\/src\/image\/child-decoder\.ts$/, '/dist/src/image/decode-child.js') : here.replace(/child-decoder\.js$/, 'decode-child.js')
  if (!existsSync(compiled)) throw new Error(`${compiled} is missing (run npm run build)`)
  return compiled
}

interface Pending {
  readonly request: ChildRequest
  readonly timeoutMs: number
  resolve(pixels: Uint8Array): void
  reject(error: unknown): void
}

export class ChildDecoder {
  private child: ChildProcess | undefined
  private readonly queue: Pending[] = []
  private running: (Pending & { timer?: NodeJS.Timeout }) | undefined
  private nextId = 0
  /** Children killed for running past their time limit. */
  kills = 0

  /** Renders `bytes` in the child; rejects with `ImageDecodeError('timeout')` after `timeoutMs` (0: no limit). */
  decode(bytes: Uint8Array, options: PipelineOptions, timeoutMs: number): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      this.queue.push({ request: { id: this.nextId++, bytes, options }, timeoutMs, resolve, reject })
      this.pump()
    })
  }

  /** Kills the child (pending requests fail). */
  close(): void {
    const child = this.child
    this.child = undefined
    child?.kill('SIGKILL')
    const failed = [...(this.running ? [this.running] : []), ...this.queue.splice(0)]
    this.running = undefined
    for (const p of failed) p.reject(new Error('the decoder child process was closed'))
  }

  private spawn(): ChildProcess {
    const child = fork(childFile(), [], { serialization: 'advanced', stdio: ['ignore', 'ignore', 'ignore', 'ipc'], execArgv: [] })
    child.on('message', (reply: ChildReply) => {
      const running = this.running
      if (!running || running.request.id !== reply.id) return
      clearTimeout(running.timer)
      this.running = undefined
      if ('error' in reply) running.reject(new Error(reply.error))
      else running.resolve(reply.pixels)
      this.pump()
    })
    // A send to a child that just died surfaces here; the exit handler fails the request.
    child.on('error', () => {})
    child.on('exit', () => {
      if (this.child !== child) return
      this.child = undefined
      const running = this.running
      if (running) {
        clearTimeout(running.timer)
        this.running = undefined
        running.reject(new Error('the decoder child process exited'))
      }
      this.pump()
    })
    return child
  }

  private pump(): void {
    if (this.running) return
    const next = this.queue.shift()
    if (!next) {
      // Idle: let the process exit while the child waits.
      this.child?.unref()
      ;(this.child?.channel as { unref?: () => void } | undefined)?.unref?.()
      return
    }
    this.child ??= this.spawn()
    const child = this.child
    child.ref()
    ;(child.channel as { ref?: () => void } | undefined)?.ref?.()
    const running: Pending & { timer?: NodeJS.Timeout } = { ...next }
    this.running = running
    if (next.timeoutMs > 0) {
      running.timer = setTimeout(() => {
        if (this.running !== running) return
        this.running = undefined
        this.kills += 1
        this.child = undefined
        child.kill('SIGKILL')
        running.reject(new ImageDecodeError('timeout', `decoding did not finish within ${next.timeoutMs} ms (the decoder was stopped)`))
        this.pump()
      }, next.timeoutMs)
    }
    child.send(next.request)
  }
}
