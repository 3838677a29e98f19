// End-to-end tests of the web console: real agentd, real Chromium, the stand-in agent. Each test
// drives the page as a person would (labels, roles, keys) and checks what the page shows against
// what the server holds.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import { after, before, describe, test } from "node:test";
import { KEY_A, KEY_B, SHOTS, count, createSession, lastSeq, login, openBrowser, startServer, stateOf, submit, waitFinal } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe("console", () => {
  test("the first load stays within the JS budget and passes the CSP", async () => {
    const html = await (await fetch(server.url)).text();
    const scripts = [...html.matchAll(/src="(\/assets\/[^"]+\.js)"/g)].map((m) => m[1]);
    assert.ok(scripts.length > 0);
    let gz = 0;
    for (const s of scripts) gz += gzipSync(Buffer.from(await (await fetch(new URL(s, server.url))).arrayBuffer())).length;
    assert.ok(gz <= 300 * 1024, `first-load JS ${gz} B gzipped is over 300 KB`);
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    await page.screenshot({ path: `${SHOTS}/sessions-empty.png` });
    assert.deepEqual(problems, [], "no script errors and no CSP violations");
    await context.close();
  });

  test("a wrong key is refused with a readable error", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(server.url);
    await page.getByLabel("API key").fill("not-a-key");
    await page.getByRole("button", { name: "Open console" }).click();
    await page.getByRole("alert").filter({ hasText: "refused that key" }).waitFor();
    await page.getByLabel("API key").waitFor();
    await context.close();
  });

  test("create a session with a file, run a job and watch it live, unfold a tool call", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    const sessionId = await createSession(page, "team=console, case=live", [{ name: "notes.txt", content: "hello from the browser" }]);
    await page.locator(".facts dd").filter({ hasText: "team=console" }).filter({ hasText: "case=live" }).waitFor();
    await page.getByLabel(/^Files in/).getByText("notes.txt", { exact: true }).waitFor();
    const jobId = await submit(page, "sleep 2 ; write out.txt written by the agent ; bash cat notes.txt ; lines 20");
    // Live: the first event shows while the agent still sleeps.
    await page.locator(".ev.k-text").filter({ hasText: "sleeping 2s" }).waitFor();
    assert.match(await stateOf(page).textContent(), /running|queued/);
    await waitFinal(page, "succeeded");
    assert.equal(await count(page), await lastSeq(page), "every seq from 1 arrived once");
    await page.screenshot({ path: `${SHOTS}/job-finished.png` });
    // Keyboard: focus the timeline, go to the tool call, its input and result unfold below.
    const bashRow = page.locator(".ev.k-toolCall").filter({ hasText: "Bash" });
    await bashRow.click();
    const detail = page.getByLabel("Event detail");
    await detail.getByText('"command": "cat notes.txt"').waitFor();
    await detail.getByText("hello from the browser").waitFor();
    await page.keyboard.press("ArrowDown");
    await detail.getByText("result").first().waitFor();
    await page.screenshot({ path: `${SHOTS}/job-tool-call.png` });
    // The session lists the job and the file it wrote.
    await page.getByRole("link", { name: sessionId }).click();
    await page.getByRole("link", { name: jobId }).waitFor();
    await page.getByLabel(/^Files in/).getByText("out.txt", { exact: true }).waitFor();
    await page.screenshot({ path: `${SHOTS}/session.png` });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a running job is cancelled from its page", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=cancel");
    await submit(page, "sleep 60");
    await page.locator(".ev.k-text").filter({ hasText: "sleeping 60s" }).waitFor();
    await page.getByRole("button", { name: "Cancel" }).click();
    await waitFinal(page, "cancelled");
    await page.locator(".ev.k-finished").filter({ hasText: "cancelled" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Cancel" }).count(), 0);
    await context.close();
  });

  test("files: browse, download with exact bytes, upload in pieces into a directory", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    const content = "line one\nline two: ünïcödé\n".repeat(5000);
    const sessionId = await createSession(page, "case=files", [{ name: "big.txt", content }]);
    await submit(page, "bash mkdir -p sub && cp big.txt sub/copy.txt");
    await waitFinal(page, "succeeded");
    await page.getByRole("link", { name: sessionId }).click();
    await page.getByRole("button", { name: "sub/" }).click();
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download sub/copy.txt" }).click()]);
    assert.equal(download.suggestedFilename(), "copy.txt");
    assert.equal(await readFile(await download.path(), "utf8"), content);
    // 1.3 MB of arbitrary bytes: three UploadFileChunk pieces, committed as one file.
    const bytes = Buffer.alloc(1_300_000);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919) % 251;
    await page.getByLabel("Upload here").setInputFiles({ name: "up.bin", mimeType: "application/octet-stream", buffer: bytes });
    const [back] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download sub/up.bin" }).click()]);
    assert.ok(Buffer.compare(await readFile(await back.path()), bytes) === 0, "uploaded bytes come back unchanged");
    await page.screenshot({ path: `${SHOTS}/files.png` });
    await context.close();
  });

  test("a reload mid-job replays from the store and resumes the stream without gaps", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=reload");
    const jobId = await submit(page, "lines 30 ; sleep 3 ; lines 30");
    await page.locator(".ev.k-text").filter({ hasText: "sleeping 3s" }).waitFor();
    const before = await lastSeq(page);
    await page.reload();
    // Still logged in (session storage), on the same job, with what it had before the reload.
    await page.getByRole("heading", { name: `Job ${jobId}` }).waitFor();
    await page.waitForFunction((n) => Number(document.querySelector("[data-testid=last-seq]")?.textContent) >= n, before);
    await waitFinal(page, "succeeded");
    const n = await count(page);
    assert.equal(n, await lastSeq(page), "no seq missing or repeated");
    assert.ok(n > 60, `${n} events`);
    assert.equal(await page.locator(".status .error").count(), 0, "no gap reported");
    await context.close();
  });

  test("another tenant sees none of it", async () => {
    const a = await login(browser, server.url, KEY_A);
    const sessionId = await createSession(a.page, "case=tenancy", [{ name: "secret.txt", content: "tenant a only" }]);
    const jobId = await submit(a.page, "bash echo private");
    await waitFinal(a.page, "succeeded");
    await a.context.close();

    const b = await login(browser, server.url, KEY_B);
    await b.page.getByText(/No sessions yet|Session/).first().waitFor();
    assert.equal(await b.page.getByText(sessionId).count(), 0, "A's session is not listed for B");
    await b.page.goto(`${server.url}#/sessions/${sessionId}`);
    await b.page.getByRole("alert").filter({ hasText: "NotFound" }).first().waitFor();
    await b.page.goto(`${server.url}#/jobs/${jobId}`);
    await b.page.getByRole("alert").filter({ hasText: /NotFound.*JOB_NOT_FOUND/ }).waitFor();
    assert.equal(await b.page.getByTestId("event-count").textContent(), "0");
    await b.page.screenshot({ path: `${SHOTS}/other-tenant.png` });
    await b.context.close();
  });

  test("server info shows the version, the agents and the sandbox", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await page.getByRole("link", { name: "Server" }).click();
    await page.getByTestId("server-version").waitFor();
    assert.match(await page.getByTestId("server-version").textContent(), /\d+\.\d+/);
    await page.getByRole("cell", { name: "claude", exact: true }).first().waitFor();
    await page.getByText(/Landlock ABI/).waitFor();
    await page.screenshot({ path: `${SHOTS}/server.png` });
    await context.close();
  });

  test("a 100,000-event job: first screen from a virtualised list, smooth scrolling", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=big");
    const jobId = await submit(page, "lines 100000");
    await waitFinal(page, "succeeded");
    // A fresh load of the finished job: the whole log comes from the store.
    await page.goto(`${server.url}#/jobs/${jobId}`);
    // Right after the first screen (in the page, so no round trip delays it), jump far ahead of
    // the backfill, which reads forward from seq 1: the rows shown there must load first.
    await page.addInitScript(() => {
      const count = () => Number(document.querySelector("[data-testid=event-count]").textContent);
      const poll = () => {
        if (!performance.getEntriesByName("agentd:first-events").length) return requestAnimationFrame(poll);
        const box = document.querySelector(".timeline");
        const atJump = count();
        box.scrollTop = 90_000 * 26;
        const shown = () => (box.querySelector('.ev[data-seq="90005"]') ? (window.agentdJump = { atJump, shown: count() }) : requestAnimationFrame(shown));
        requestAnimationFrame(shown);
      };
      requestAnimationFrame(poll);
    });
    await page.reload();
    await page.locator(".ev").first().waitFor();
    const jump = await (await page.waitForFunction(() => window.agentdJump, null, { timeout: 60_000 })).jsonValue();
    assert.ok(jump.atJump < 10_000, `${jump.atJump} events were in at the first screen (only the tail should be)`);
    assert.ok(jump.shown < 80_000, `the rows at seq 90,000 showed once ${jump.shown} events were in`);
    await page.getByTestId("stream-state").filter({ hasText: "complete" }).waitFor({ timeout: 120_000 });
    // Where the first screen's time went, from the page's marks (relative to the navigation):
    // script loaded (DOMContentLoaded), the job's row read, the first events fetched and decoded,
    // the first screen painted; and the whole log in.
    const at = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const since = (name) => (performance.getEntriesByName(`agentd:${name}`)[0]?.startTime ?? NaN) - nav.startTime;
      const streams = performance.getEntriesByType("resource").filter((r) => r.name.endsWith("/StreamJobEvents"));
      return {
        script: nav.domContentLoadedEventEnd,
        job: since("job-loaded"),
        batch: since("first-batch"),
        screen: since("first-events"),
        complete: since("replay-complete"),
        firstStreamBytes: streams[0]?.encodedBodySize ?? NaN,
      };
    });
    const firstScreen = at.screen;
    // The first screen waits for the tail only, never for the whole log (55 MB in one stream).
    assert.ok(at.firstStreamBytes < 1_000_000, `the first read fetched ${at.firstStreamBytes} B`);
    assert.ok(at.screen < at.complete, "the first screen is painted before the rest of the log is in");
    const n = await count(page);
    assert.equal(n, await lastSeq(page));
    assert.ok(n >= 100_000, `${n} events`);
    // Virtualised: a screenful of rows in the DOM, not a hundred thousand.
    const rows = await page.locator(".ev").count();
    assert.ok(rows > 10 && rows < 200, `${rows} rows in the DOM`);
    // Scroll through it and read the performance timeline: frames and long tasks.
    const scroll = await page.evaluate(async () => {
      const long = [];
      const obs = new PerformanceObserver((l) => long.push(...l.getEntries().map((e) => e.duration)));
      obs.observe({ type: "longtask", buffered: false });
      const box = document.querySelector(".timeline");
      const frames = [];
      let last = performance.now();
      for (let i = 0; i < 120; i++) {
        box.scrollTop = (box.scrollHeight * i) / 120;
        await new Promise((r) => requestAnimationFrame(r));
        const now = performance.now();
        frames.push(now - last);
        last = now;
      }
      obs.disconnect();
      frames.sort((a, b) => a - b);
      return { p95: frames[Math.floor(frames.length * 0.95)], longTasks: long.length, maxLong: Math.max(0, ...long) };
    });
    // Keyboard to the end: the last rows render there.
    await page.locator(".timeline").focus();
    await page.keyboard.press("End");
    await page.locator(".ev").filter({ hasText: "line 100000" }).waitFor();
    await page.screenshot({ path: `${SHOTS}/job-100k.png` });
    // The numbers are reported, not asserted: this machine's timings are too noisy to gate on
    // (AGENTD_CONSOLE_PERF_STRICT=1 asserts the budgets: first screen ≤ 1 s, no long
    // task while scrolling).
    const ms = (v) => `${v.toFixed(0)} ms`;
    console.log(`100k events: first screen ${ms(firstScreen)} (script ${ms(at.script)}, job row ${ms(at.job)}, tail fetched and decoded ${ms(at.batch)}, ${at.firstStreamBytes} B); whole log ${ms(at.complete)}; a jump to seq 90,000 showed with ${jump.shown} events in (${jump.atJump} at the jump); scroll p95 frame ${scroll.p95.toFixed(1)} ms, ${scroll.longTasks} long tasks (max ${scroll.maxLong.toFixed(0)} ms)`);
    if (process.env.AGENTD_CONSOLE_PERF_STRICT === "1") {
      assert.ok(firstScreen <= 1000, `first screen after ${firstScreen} ms`);
      assert.equal(scroll.longTasks, 0);
    }
    await context.close();
  });
});
