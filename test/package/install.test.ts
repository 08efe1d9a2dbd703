/**
 * The package installs and works as a library and a CLI (issue 15, item 6): `npm pack`, then the README's
 * install command in an empty project (the npm registry only, for the dependencies; ONNX Runtime's CUDA
 * download skipped as the README says), then the README's TypeScript example and `npx evflow caption`
 * there. Also: one copy of rxjs (a peer dependency), onnxruntime-node at the tested version, the sample
 * shard shipped, and a clear exit 6 when ONNX Runtime's native binding is missing.
 *
 * Skipped, with a notice, where the npm registry cannot be reached (CI reaches it).
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import ts from 'typescript'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'

import { ROOT } from '../helpers/cli.js'
import { duckQuery } from '../helpers/duckdb.js'
import { readmeBlocks, shellWords } from '../helpers/readme.js'
import { tempDir } from '../helpers/util.js'

const npm = (args: readonly string[], cwd: string, timeout = 240_000) =>
  spawnSync('npm', [...args], { cwd, encoding: 'utf8', timeout, env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_loglevel: 'error', npm_config_fund: 'false', npm_config_audit: 'false', npm_config_update_notifier: 'false' } })

const REGISTRY = npm(['view', 'rxjs@7', 'version', '--json'], ROOT, 30_000).status === 0
if (!REGISTRY) console.warn('NOTICE: test/package/install: the npm registry cannot be reached: SKIPPING the packed-package install test')

/** The README's install snippet: `ONNXRUNTIME_NODE_INSTALL=skip npm install ./evflow-<version>.tgz`, then `npx evflow caption ...`. */
function installSnippet(): { install: string[]; caption: string[] } {
  const block = readmeBlocks('sh').find((b) => b.includes('npm install ./evflow-'))!
  const lines = block.split('\n').filter((l) => l.trim() !== '')
  const install = shellWords(lines.find((l) => l.includes('npm install'))!)
  const caption = shellWords(lines.find((l) => l.startsWith('npx evflow caption'))!)
  return { install, caption }
}

describe('the sample shard shipped with the package', () => {
  it('is the first 64 rows of fixtures/scenes/test.parquet, byte for byte (the scenes the bundled model knows)', async () => {
    const [sample, test] = ['sample/scenes.parquet', 'scenes/test.parquet'].map((f) => join(ROOT, 'fixtures', f))
    const rows = await duckQuery(
      `SELECT count(*)::int AS n, count(*) FILTER (t.id IS NOT NULL AND s.image = t.image AND s.caption = t.caption AND s.scene::VARCHAR = t.scene::VARCHAR)::int AS same
       FROM read_parquet('${sample}') s LEFT JOIN (SELECT * FROM read_parquet('${test}') LIMIT 64) t USING (id)`,
    )
    expect(rows).toEqual([{ n: 64, same: 64 }])
  })
})

describe.skipIf(!REGISTRY)('the packed package, installed in an empty project', () => {
  let dir: string
  let cleanup: () => void
  let project: string
  let tarball: string
  const installed = (...parts: string[]) => join(project, 'node_modules', ...parts)

  beforeAll(() => {
    ;({ dir, cleanup } = tempDir('evflow-install-'))
    expect(existsSync(join(ROOT, 'dist', 'app', 'cli', 'main.js')), 'npm run build first').toBe(true)
    const packed = npm(['pack', '--pack-destination', dir, '--ignore-scripts', '--json'], ROOT, 120_000)
    expect(packed.status, packed.stderr).toBe(0)
    tarball = join(dir, (JSON.parse(packed.stdout) as { filename: string }[])[0].filename)
    project = join(dir, 'project')
    mkdirSync(project)
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'evflow-install-test', private: true, type: 'module' }, null, 2))
    const { install } = installSnippet()
    // the README's command, with the tarball this test packed
    expect(install.slice(0, 3)).toEqual(['ONNXRUNTIME_NODE_INSTALL=skip', 'npm', 'install'])
    expect(install[3]).toBe(`./${tarball.split('/').at(-1)}`)
    const result = npm(['install', tarball, '--prefer-offline'], project, 280_000)
    expect(result.status, result.stderr).toBe(0)
  }, 420_000)
  afterAll(() => cleanup())

  it('ships the built code, the model, the sample shard and the README; not the sources, tests or tools', () => {
    const files = readdirSync(installed('evflow'))
    expect(files.sort()).toEqual(['README.md', 'dist', 'docs', 'fixtures', 'package.json'].sort())
    expect(readdirSync(installed('evflow', 'dist')).sort()).toEqual(['app', 'operators', 'pipelines', 'scenes', 'src'])
    expect(existsSync(installed('evflow', 'fixtures', 'models', 'evlm-tiny', 'domain.json'))).toBe(true)
    expect(existsSync(installed('evflow', 'fixtures', 'sample', 'scenes.parquet'))).toBe(true)
  })

  it('has one rxjs, shared with the project (a peer dependency), and onnxruntime-node at the tested version', () => {
    expect(existsSync(installed('rxjs', 'package.json'))).toBe(true)
    expect(existsSync(installed('evflow', 'node_modules', 'rxjs'))).toBe(false)
    const ls = npm(['ls', 'rxjs', '--all', '--json'], project, 60_000)
    const versions = new Set<string>()
    const walk = (deps: Record<string, { version: string; dependencies?: Record<string, unknown> }> = {}) => {
      for (const [name, d] of Object.entries(deps)) {
        if (name === 'rxjs') versions.add(d.version)
        walk(d.dependencies as never)
      }
    }
    walk((JSON.parse(ls.stdout) as { dependencies: never }).dependencies)
    expect([...versions]).toHaveLength(1)
    const ort = JSON.parse(readFileSync(installed('onnxruntime-node', 'package.json'), 'utf8')) as { version: string }
    const range = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies['onnxruntime-node']
    expect(range).toMatch(/^~\d+\.\d+\.\d+$/)
    expect(ort.version.split('.').slice(0, 2)).toEqual(range.slice(1).split('.').slice(0, 2))
  })

  it('runs the README\'s TypeScript example (type-checked against the installed types)', async () => {
    const [source] = readmeBlocks('ts')
    writeFileSync(join(project, 'example.ts'), source)
    const program = ts.createProgram([join(project, 'example.ts')], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: [],
      typeRoots: [join(ROOT, 'node_modules', '@types')],
    })
    expect(ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))).toEqual([])
    writeFileSync(join(project, 'example.mjs'), ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText)
    const result = spawnSync(process.execPath, ['example.mjs'], { cwd: project, encoding: 'utf8', timeout: 180_000 })
    expect(result.stderr).toBe('')
    expect(result.stdout.trim()).toBe('committed scenes')
    const rows = await duckQuery(`SELECT count(*)::int AS n, count(caption)::int AS ok, count(finish_reason)::int AS f FROM read_parquet('${join(project, 'out', 'readme-example')}/*.parquet')`)
    expect(rows).toEqual([{ n: 64, ok: 64, f: 64 }])
  })

  it('runs the README\'s `npx evflow caption` on the shipped sample', () => {
    const { caption } = installSnippet()
    expect(caption.slice(0, 3)).toEqual(['npx', 'evflow', 'caption'])
    const result = spawnSync('npx', ['--no-install', ...caption.slice(1), '--limit', '8'], { cwd: project, encoding: 'utf8', timeout: 180_000, env: { ...process.env, npm_config_loglevel: 'error' } })
    expect(result.status, result.stderr).toBe(0)
    expect(result.stdout).toMatch(/^rows: 8 in, 8 ok, 0 error/m)
    expect(result.stderr).toMatch(/^evflow: note: the model evlm-tiny was trained only on synthetic data/m)
  })

  it('says clearly, with exit 6, when ONNX Runtime\'s native binding is missing', () => {
    const binding = installed('onnxruntime-node', 'bin', 'napi-v6', process.platform, process.arch, 'onnxruntime_binding.node')
    expect(existsSync(binding)).toBe(true)
    renameSync(binding, `${binding}.moved`)
    try {
      const result = spawnSync('npx', ['--no-install', 'evflow', 'caption', 'node_modules/evflow/fixtures/sample/scenes.parquet', '-o', 'out/no-ort', '--limit', '2'], {
        cwd: project,
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, npm_config_loglevel: 'error' },
      })
      expect(result.status, result.stderr).toBe(6)
      expect(result.stderr).toMatch(/^evflow: InferenceError: .*: cannot create a session: ONNX Runtime cannot load its native binding \(.*\): onnxruntime-node is missing or was installed for another platform; reinstall it/m)
    } finally {
      renameSync(`${binding}.moved`, binding)
    }
  })
})
