/**
 * Regenerates the README's screenshot of `evflow report` (`docs/report-screenshot.png`):
 *   npm run screenshot
 * Captions the bundled test scenes (`npm start`'s command) into `out/report-screenshot/caption`, writes the
 * report with the scenes as reference, opens it in headless Chromium (Debian's `chromium`, driven by
 * playwright-core, network cut off) and saves the top of the page as a palette PNG under 200 KB. The
 * captions are deterministic; the timing figures in the summary are those of the machine that runs it.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { chromium } from 'playwright-core'
import sharp from 'sharp'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const CLI = join(ROOT, 'dist/app/cli/main.js')
const CHROMIUM = '/usr/bin/chromium'
const MAX_BYTES = 200 * 1024

function evflow(args: readonly string[]): void {
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8' })
  if (result.status !== 0) throw new Error(`evflow ${args.join(' ')} exited with ${result.status}: ${result.stderr}`)
  process.stdout.write(result.stdout)
}

export async function reportScreenshot(target = join(ROOT, 'docs', 'report-screenshot.png')): Promise<number> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install the Debian package chromium`)
  const work = join('out', 'report-screenshot')
  rmSync(join(ROOT, work), { recursive: true, force: true })
  mkdirSync(join(ROOT, work), { recursive: true })
  const out = join(work, 'caption')
  const page = join(ROOT, work, 'report.html')
  evflow(['caption', 'fixtures/scenes/test.parquet', '-o', out])
  evflow(['report', out, '-o', page, '--reference', 'fixtures/scenes/test.parquet', '--sample', '24'])

  const profile = mkdtempSync(join(tmpdir(), 'evflow-screenshot-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1100, height: 1100 },
    colorScheme: 'light',
    offline: true,
  })
  try {
    const url = pathToFileURL(page).href
    await context.route('**/*', (route) => (route.request().url() === url ? route.continue() : route.abort()))
    const tab = context.pages()[0] ?? (await context.newPage())
    await tab.goto(url, { waitUntil: 'load' })
    const png = await tab.screenshot({ type: 'png' })
    let image = await sharp(png).png({ palette: true, colours: 128, compressionLevel: 9 }).toBuffer()
    if (image.byteLength > MAX_BYTES) image = await sharp(png).resize({ width: 880 }).png({ palette: true, colours: 96, compressionLevel: 9 }).toBuffer()
    writeFileSync(target, image)
  } finally {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  }
  return statSync(target).size
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const bytes = await reportScreenshot(process.argv[2])
  process.stdout.write(`screenshot: ${process.argv[2] ?? 'docs/report-screenshot.png'} (${(bytes / 1024).toFixed(0)} KB)\n`)
}
