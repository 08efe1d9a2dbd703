/**
 * Headless Chromium for the report tests: Debian's `chromium` driven by playwright-core (never a downloaded
 * browser), a fresh profile per launch, and the network cut off: every request other than the report file
 * itself is aborted and recorded, so a test can assert that none was attempted.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { chromium, type BrowserContext, type Page } from 'playwright-core'

export const CHROMIUM = '/usr/bin/chromium'
export const hasChromium = existsSync(CHROMIUM)

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']

export interface OpenedReport {
  readonly page: Page
  readonly context: BrowserContext
  /** Console messages of type `error`, and uncaught page errors. */
  readonly errors: string[]
  /** Requests that were not the report file (all aborted). */
  readonly blocked: string[]
  /** Requests that failed, other than the blocked ones. */
  readonly failed: string[]
  close(): Promise<void>
}

/** Opens `file` in a fresh headless Chromium with the network cut off. */
export async function openReport(file: string, viewport = { width: 1280, height: 900 }): Promise<OpenedReport> {
  const profile = mkdtempSync(join(tmpdir(), 'evflow-chromium-'))
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport, offline: true })
  const url = pathToFileURL(file).href
  const errors: string[] = []
  const blocked: string[] = []
  const failed: string[] = []
  await context.route('**/*', (route) => {
    const requested = route.request().url()
    if (requested === url) return route.continue()
    blocked.push(requested)
    return route.abort()
  })
  const page = context.pages()[0] ?? (await context.newPage())
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text())
  })
  page.on('pageerror', (error) => errors.push(error.message))
  page.on('requestfailed', (request) => {
    if (!blocked.includes(request.url())) failed.push(`${request.url()}: ${request.failure()?.errorText ?? ''}`)
  })
  await page.goto(url, { waitUntil: 'load' })
  return {
    page,
    context,
    errors,
    blocked,
    failed,
    close: async () => {
      await context.close()
      rmSync(profile, { recursive: true, force: true })
    },
  }
}
