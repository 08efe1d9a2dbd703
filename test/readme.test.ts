/**
 * The README's examples are executed, so they cannot rot: every command of its console blocks (`$ ...`,
 * run from the repository root as a fresh clone would, after `npm ci` and the build that `npm test` did),
 * with the output lines it shows, and the TypeScript example (run, and type-checked against the package).
 * The install snippet (`npm install` of the packed tarball) is run by test/package/install.test.ts.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { duckQuery } from './helpers/duckdb.js'
import { ROOT, runCli } from './helpers/cli.js'
import { HAVE_MODEL, MODEL_DIR } from './helpers/model.js'
import { README, consoleCommands, readmeBlocks, shellWords as words } from './helpers/readme.js'
import { tempDir } from './helpers/util.js'
import { hasRedis, RedisServer } from './app/queue/redis-server.js'

const readme = README
const blocks = (lang: string) => readmeBlocks(lang)

if (!HAVE_MODEL) console.warn(`NOTICE: test/readme: no bundled model at ${MODEL_DIR}: SKIPPING the README's model commands`)
if (!hasRedis) console.warn("NOTICE: test/readme: redis-server not installed: SKIPPING the README's distributed-mode commands")

/** A shown line with what varies from run to run (rows/s and seconds) left out. */
const steady = (line: string) => line.replace(/ · [\d.]+ rows\/s in [\d.]+ s$/, '')

describe('README', () => {
  let dir: string
  let cleanup: () => void
  let redis: RedisServer | undefined
  beforeAll(async () => {
    ;({ dir, cleanup } = tempDir('evflow-readme-'))
    if (hasRedis) redis = await RedisServer.start(join(dir, 'redis'))
  })
  afterAll(async () => {
    await redis?.stop('SIGTERM')
    cleanup()
  })

  it('shows commands in its console blocks: each is npm start or npx evflow', () => {
    const commands = consoleCommands()
    expect(commands.length).toBeGreaterThan(8)
    for (const { command } of commands) expect(command).toMatch(/^(npm ci && npm start|npx evflow) /)
    // bare `evflow` is never used before the README says how it gets on the PATH
    const firstBare = readme.search(/^\$ evflow /m)
    expect(firstBare).toBe(-1)
  })

  it.skipIf(!HAVE_MODEL)('every console command works as written on a fresh clone, printing the lines it shows', { timeout: 600_000 }, () => {
    const start = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts.start as string
    for (const { command, output } of consoleCommands()) {
      let args = words(command)
      if (args.join(' ').startsWith('npm ci && npm start')) {
        // `npm ci` and the build are what this test run already did; `npm start` then runs this command
        const [, run] = /^npm run build --silent && node dist\/app\/cli\/main\.js (.*)$/.exec(start)!
        expect(command).toContain(`evflow ${run}`)
        args = ['npx', 'evflow', ...run.split(' ')]
      }
      expect(args.slice(0, 2)).toEqual(['npx', 'evflow'])
      if (args.some((a) => a.startsWith('redis://')) && !redis) continue
      const rewritten = args.slice(2).map((a) => a.replace(/^out\//, `${dir}/`).replace('redis://127.0.0.1:6379', redis?.url ?? ''))
      const result = runCli(rewritten, { timeoutMs: 300_000 })
      expect(result.code, `${command}\n${result.stderr}`).toBe(0)
      const printed = `${result.stderr}\n${result.stdout}`.split('\n').map(steady)
      for (const line of output) expect(printed, `${command}: ${line}`).toContain(steady(line).replace(/^output: out\//, `output: ${dir}/`).replace(/summary: out\//, `summary: ${dir}/`))
    }
  })

  it.skipIf(!HAVE_MODEL)('the TypeScript example runs and writes the shard it describes, with the confidence columns', async () => {
    const [source] = blocks('ts')
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
    const out = join(ROOT, 'out', 'readme-ts')
    mkdirSync(out, { recursive: true })
    const file = join(out, 'example.mjs')
    writeFileSync(file, js)
    rmSync(join(ROOT, 'out', 'readme-example'), { recursive: true, force: true })
    const result = spawnSync(process.execPath, [file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
    expect(result.stderr).toBe('')
    expect(result.stdout.trim().split('\n')).toEqual(['committed scenes'])
    const rows = await duckQuery(
      `SELECT count(*)::int AS n, count(caption)::int AS ok, count(*) FILTER (finish_reason = 'stop')::int AS stopped, max(mean_logprob) <= 0 AS sure
       FROM read_parquet('${join(ROOT, 'out', 'readme-example')}/*.parquet')`,
    )
    expect(rows).toEqual([{ n: 64, ok: 64, stopped: 64, sure: true }])
  })

  it('the TypeScript example type-checks against the package', () => {
    const [source] = blocks('ts')
    mkdirSync(join(ROOT, 'out', 'readme-ts'), { recursive: true })
    const file = join(ROOT, 'out', 'readme-ts', 'example-check.ts')
    writeFileSync(file, source)
    const program = ts.createProgram([file], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ['node'],
    })
    const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))
    expect(diagnostics).toEqual([])
  })
})
