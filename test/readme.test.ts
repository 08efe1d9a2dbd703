/** The README's examples are executed, so they cannot rot. */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import ts from 'typescript'
import { describe, expect, it } from 'vitest'

import { duckQuery } from './helpers/duckdb.js'
import { ROOT, runCli } from './helpers/cli.js'

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
const blocks = (lang: string) => [...readme.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1])

describe('README', () => {
  it('the main command prints the summary the README shows', () => {
    const shown = blocks('console')[0]
    const command = /\$ npm ci && npm start\s+# (evflow .*)$/m.exec(shown)![1].split(' ').slice(1)
    const out = join(ROOT, 'out', 'readme-main')
    rmSync(out, { recursive: true, force: true })
    const result = runCli([...command.slice(0, -1), out])
    expect(result.code).toBe(0)
    const firstTwo = (text: string) => text.split('\n').filter((l) => l.startsWith('scan:') || l.startsWith('rows:')).map((l) => l.replace(/ · .*$/, ''))
    expect(firstTwo(result.stdout)).toEqual(firstTwo(shown))
    expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts.start).toContain(command.join(' '))
  })

  it('the TypeScript example runs and writes the shards it describes', async () => {
    const [source] = blocks('ts')
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
    const dir = join(ROOT, 'out', 'readme-ts')
    mkdirSync(dir, { recursive: true })
    const file = join(dir, 'example.mjs')
    writeFileSync(file, js)
    rmSync(join(ROOT, 'out', 'readme-example'), { recursive: true, force: true })
    const result = spawnSync(process.execPath, [file], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 })
    expect(result.stderr).toBe('')
    expect(result.stdout.trim().split('\n').sort()).toEqual(['committed part-00000', 'committed part-00001', 'committed part-00002'])
    const rows = await duckQuery(`SELECT count(*)::int AS n, count(width)::int AS ok FROM read_parquet('${join(ROOT, 'out', 'readme-example')}/*.parquet')`)
    expect(rows).toEqual([{ n: 124, ok: 111 }])
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
