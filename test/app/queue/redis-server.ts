/**
 * A private Redis for one test or benchmark: Debian's `redis-server` on a free port, its data (AOF on,
 * fsync at every write) in a folder of its own, so it can be killed and started again on the same data.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import { createServer, Socket } from 'node:net'

/** Whether `redis-server` is on PATH. */
export const hasRedis = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

export class RedisServer {
  private child: ChildProcess | undefined
  private log = ''

  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`
  }

  /** Starts a server with its data in `dir` (created). */
  static async start(dir: string, port?: number): Promise<RedisServer> {
    mkdirSync(dir, { recursive: true })
    const server = new RedisServer(port ?? (await freePort()), dir)
    await server.restart()
    return server
  }

  /** Starts the server again on the same port and data folder. */
  async restart(): Promise<void> {
    if (this.child) throw new Error('redis-server is already running')
    this.log = ''
    const child = spawn(
      'redis-server',
      [
        '--port', String(this.port),
        '--bind', '127.0.0.1',
        '--dir', this.dir,
        '--appendonly', 'yes',
        '--appendfsync', 'always',
        '--save', '',
        '--protected-mode', 'no',
        '--loglevel', 'warning',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    child.stdout!.on('data', (chunk: Buffer) => (this.log += chunk.toString()))
    child.stderr!.on('data', (chunk: Buffer) => (this.log += chunk.toString()))
    this.child = child
    const deadline = Date.now() + 10_000
    while (!(await ping(this.port))) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${this.log}`)
      if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${this.port}: ${this.log}`)
      await new Promise((r) => setTimeout(r, 50))
    }
  }

  /** Stops the server (SIGKILL by default: a crash; AOF with fsync at every write keeps every write). */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child
    if (!child) return
    this.child = undefined
    if (child.exitCode !== null || child.signalCode !== null) return
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve())
      child.kill(signal)
    })
  }
}

/** Whether a Redis answers PING on `port`. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket()
    let answer = ''
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => done(false))
    socket.once('error', () => done(false))
    socket.on('data', (chunk) => {
      answer += chunk.toString()
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'))
    })
    socket.connect(port, '127.0.0.1', () => socket.write('PING\r\n'))
  })
}
