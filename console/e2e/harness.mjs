// The e2e harness: starts the real agentd binary (AGENTD_BIN) on a free loopback port with a temp
// data dir, two tenants' keys and the stand-in Claude (AGENTD_FAKE_CLAUDE), as tests/common does
// for the Rust tests; and opens Debian's Chromium through playwright-core. `startMock` starts the
// scripted model server (tests/fixtures/mock-model) for profiles running the genuine Claude Code.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const KEY_A = "tenant-a-console-key";
export const KEY_B = "tenant-b-console-key";
export const SHOTS = path.resolve(import.meta.dirname, "../test-results");
export const ROOT = path.resolve(import.meta.dirname, "../..");

/** The first line of `child`'s stdout matching `re`, or an error when it exits before. */
function banner(child, re, what) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (l) => {
      const m = l.match(re);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`${what} exited (${code}) before listening`)));
  });
}

/** The scripted model server on a free loopback port; it exits when its stdin closes. */
export async function startMock() {
  const child = spawn("python3", [path.join(ROOT, "tests/fixtures/mock-model"), "--port", "0"], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const addr = await banner(child, /^mock-model listening on (\S+)/, "mock-model");
  return {
    base: `http://${addr}`,
    async stop() {
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A `[agents.<name>]` profile running the genuine Claude Code (scripts/install-agents) against
 * the mock at `base`; its provider key puts it behind agentd's gateway, which meters its calls. */
export function genuineClaude(name, base) {
  const cli = path.join(ROOT, ".cache/agents/node_modules/.bin/claude");
  return [
    `[agents.${name}]`,
    `kind = "claude"`,
    `command = ${JSON.stringify(cli)}`,
    `[agents.${name}.env]`,
    `ANTHROPIC_BASE_URL = ${JSON.stringify(base)}`,
    `ANTHROPIC_API_KEY = "sk-ant-console-mock-key"`,
    `CLAUDE_CODE_MAX_RETRIES = "0"`,
    `ENABLE_TOOL_SEARCH = "false"`,
    "",
  ].join("\n");
}

/** agentd on a free loopback port; `config` (TOML) is passed with `--config` when given. */
export async function startServer({ config } = {}) {
  const tmp = mkdtempSync(path.join(tmpdir(), "agentd-console-"));
  const args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", path.join(tmp, "data")];
  if (config) {
    writeFileSync(path.join(tmp, "agentd.toml"), config);
    args.push("--config", path.join(tmp, "agentd.toml"));
  }
  const child = spawn(
    process.env.AGENTD_BIN,
    args,
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
  const addr = await banner(child, /^agentd listening on (\S+)/, "agentd");
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

/** Creates a session through the form, with `files` ({name, content}), and opens its page. */
export async function createSession(page, labels, files = []) {
  await page.getByLabel("Labels").fill(labels);
  if (files.length) {
    await page.getByLabel("Files").setInputFiles(files.map((f) => ({ name: f.name, mimeType: "text/plain", buffer: Buffer.from(f.content) })));
  }
  await page.getByRole("button", { name: "Create session" }).click();
  await page.getByRole("heading", { name: /^Session / }).waitFor();
  return decodeURIComponent(new URL(page.url()).hash.replace("#/sessions/", ""));
}

export async function submit(page, prompt) {
  await page.getByPlaceholder("Prompt").fill(prompt);
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.getByRole("heading", { name: /^Job / }).waitFor();
  return decodeURIComponent(new URL(page.url()).hash.replace("#/jobs/", ""));
}

export const stateOf = (page) => page.getByTestId("job-state");
export const count = async (page) => Number(await page.getByTestId("event-count").textContent());
export const lastSeq = async (page) => Number(await page.getByTestId("last-seq").textContent());

export async function waitFinal(page, state, timeout = 60_000) {
  await page.getByTestId("job-state").filter({ hasText: state }).waitFor({ timeout });
  await page.getByTestId("stream-state").filter({ hasText: "complete" }).waitFor({ timeout });
}
