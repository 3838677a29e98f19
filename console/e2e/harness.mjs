// The e2e harness: starts the real agentd binary (AGENTD_BIN) on a free loopback port with a temp
// data dir, two tenants' keys and the stand-in Claude (AGENTD_FAKE_CLAUDE), as tests/common does
// for the Rust tests; and opens Debian's Chromium through playwright-core.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const KEY_A = "tenant-a-console-key";
export const KEY_B = "tenant-b-console-key";
export const SHOTS = path.resolve(import.meta.dirname, "../test-results");

export async function startServer() {
  const tmp = mkdtempSync(path.join(tmpdir(), "agentd-console-"));
  const child = spawn(
    process.env.AGENTD_BIN,
    ["serve", "--listen", "127.0.0.1:0", "--data-dir", path.join(tmp, "data")],
    {
      env: {
        ...process.env,
        AGENTD_API_KEYS: `a:${KEY_A},b:${KEY_B}`,
        AGENTD_CLAUDE_BIN: process.env.AGENTD_FAKE_CLAUDE,
        AGENTD_KILL_GRACE_SECONDS: "2",
        AGENTD_SHUTDOWN_GRACE_SECONDS: "2",
        AGENTD_LOG: "warn",
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const addr = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (l) => {
      const m = l.match(/^agentd listening on (\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`agentd exited (${code}) before listening`)));
  });
  return {
    url: `http://${addr}/`,
    async stop() {
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGTERM");
      await exited;
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

export async function openBrowser() {
  mkdirSync(SHOTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.AGENTD_CHROMIUM ?? "/usr/bin/chromium",
    // Root (as the test machines run) cannot use Chromium's own sandbox.
    args: ["--no-sandbox"],
  });
}

/** A fresh tab (own session storage) logged in with `key` on the sessions view. */
export async function login(browser, url, key) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !/status of 4\d\d/.test(m.text()) && problems.push(m.text()));
  await page.goto(url);
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Open console" }).click();
  await page.getByRole("heading", { name: "Sessions" }).waitFor();
  return { page, context, problems };
}
