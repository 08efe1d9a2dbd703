/** The README's examples are executed, so they cannot rot. */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

import { duckQuery } from './helpers/duckdb.js'
import { ROOT, runCli } from './helpers/cli.js'

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
const blocks = (lang: string) => [...readme.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1])

const MODEL = join(ROOT, 'fixtures', 'models', 'evlm-tiny', 'manifest.json')
const HAVE_MODEL = existsSync(MODEL)
if (!HAVE_MODEL) console.warn(`NOTICE: test/readme: no bundled model at ${MODEL}: SKIPPING the README's model commands`)

describe('README', () => {
  it.skipIf(!HAVE_MODEL)('the main command prints the summary the README shows, and eval scores it', async () => {
    const shown = blocks('console')[0]
    const command = /\$ npm ci && npm start\s+# (evflow .*)$/m.exec(shown)![1].split(' ').slice(1)
    const pipeline = command[0]
    const out = join(ROOT, 'out', 'readme-main')
    rmSync(out, { recursive: true, force: true })
    const result = runCli([...command.slice(0, -1), out], { timeoutMs: 300_000 })
    expect(result.code, result.stderr).toBe(0)
    const firstTwo = (text: string) => text.split('\n').filter((l) => l.startsWith(`${pipeline}:`) || l.startsWith('rows:')).map((l) => l.replace(/ · .*$/, ''))
    const [mainPart, evalPart] = shown.split(/^\$ evflow eval.*$/m)
    expect(firstTwo(result.stdout)).toEqual(firstTwo(mainPart))
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts.start).toContain(command.join(' '))
    const evalLine = /\$ (evflow eval .*?)\s+#/m.exec(shown)![1].split(' ').slice(1)
    const scored = runCli([...evalLine.map((a) => (a === 'out/caption' ? out : a))])
    expect(scored.code, scored.stderr).toBe(0)
    for (const line of evalPart.trim().split('\n')) expect(scored.stdout).toContain(line)
  })

  it.skipIf(!HAVE_MODEL)('the TypeScript example runs and writes the shard it describes', async () => {
    const [source] = blocks('ts')
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
    const dir = join(ROOT, 'out', 'readme-ts')
    mkdirSync(dir, { recursive: true })
    const file = join(dir, 'example.mjs')
    writeFileSync(file, js)
    rmSync(join(ROOT, 'out', 'readme-example'), { recursive: true, force: true })
    const result = spawnSync(process.execPath, [file], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 })
    expect(result.stderr).toBe('')
    expect(result.stdout.trim().split('\n')).toEqual(['committed test.rows-0-64'])
    const rows = await duckQuery(`SELECT count(*)::int AS n, count(caption)::int AS ok FROM read_parquet('${join(ROOT, 'out', 'readme-example')}/*.parquet')`)
    expect(rows).toEqual([{ n: 64, ok: 64 }])
  })

  it('the TypeScript example type-checks against the package', () => {
    const [source] = blocks('ts')
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
