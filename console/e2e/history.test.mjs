// End-to-end test of rewind and fork in the console: the stand-in Claude (its conversation files
// and `turn N` replies are real, so a resumed conversation shows which point it came from) runs
// jobs that write files; the browser forks from the first job and rewinds to before the second,
// through SessionService/ForkSession and RewindSession over gRPC-Web, with the keyboard where a
// person would use it. What the page shows is checked against the files' bytes (downloads).
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { KEY_A, SHOTS, createSession, login, openBrowser, startServer, submit, waitFinal } from "./harness.mjs";

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

const openSession = async (page, id) => {
  await page.goto(`${server.url}#/sessions/${encodeURIComponent(id)}`);
  await page.getByRole("heading", { name: `Session ${id}` }).waitFor();
};

const jobRow = (page, jobId) => page.getByLabel("Jobs").locator(`tr[data-job="${jobId}"]`);

/** The names listed in the session's file browser (its root directory). */
async function fileNames(page) {
  const table = page.getByLabel("Files in /");
  await table.waitFor();
  // The list reloads after a rewind: wait until no request is in flight.
  await page.waitForLoadState("networkidle");
  return (await table.locator("td span.mono").allTextContents()).sort();
}

/** The bytes of `path` as the session's file browser downloads them. */
async function downloaded(page, path) {
  const [d] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: `Download ${path}` }).click()]);
  return readFile(await d.path(), "utf8");
}

/** The last plain reply of a finished job's timeline (`turn N: …` counts the conversation). */
async function lastTurn(page) {
  const texts = await page.locator(".ev.k-text .text").allTextContents();
  return texts.filter((t) => t.startsWith("turn ")).pop();
}

describe("console rewind and fork", () => {
  test("fork from job 1 leaves the parent as it is; rewind to before job 2 takes its files and conversation back", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    const parent = await createSession(page, "case=history");
    const job1 = await submit(page, "write a.txt from job 1");
    await waitFinal(page, "succeeded");
    await openSession(page, parent);
    const job2 = await submit(page, "write a.txt from job 2 ; write b.txt only job 2");
    await waitFinal(page, "succeeded");
    assert.equal(await lastTurn(page), "turn 2: done", "job 2 continued job 1's conversation");

    // Fork from job 1 (after it), with labels and a TTL: a new session with job 1's files.
    await openSession(page, parent);
    assert.deepEqual(await fileNames(page), ["a.txt", "b.txt"]);
    await jobRow(page, job1).getByRole("button", { name: `Fork from job ${job1}` }).click();
    const fork = page.getByRole("dialog", { name: "Fork session" });
    await fork.waitFor();
    assert.ok(await fork.getByRole("radio", { name: /After this job/ }).isChecked(), "after the job by default");
    await fork.getByLabel("Labels (optional)").fill("forked=yes");
    await fork.getByLabel("TTL (s, optional)").fill("900");
    await page.screenshot({ path: `${SHOTS}/fork-dialog.png` });
    await fork.getByRole("button", { name: "Fork", exact: true }).click();
    await page.waitForFunction((p) => location.hash.startsWith("#/sessions/") && !location.hash.endsWith(p), encodeURIComponent(parent));
    const child = decodeURIComponent(new URL(page.url()).hash.replace("#/sessions/", ""));
    assert.notEqual(child, parent);
    await page.getByRole("heading", { name: `Session ${child}` }).waitFor();
    await page.locator(".facts dd").filter({ hasText: "forked=yes" }).waitFor();
    await page.locator(".facts dd").filter({ hasText: "TTL 900 s" }).waitFor();
    assert.deepEqual(await fileNames(page), ["a.txt"], "the fork has job 1's files only");
    assert.equal(await downloaded(page, "a.txt"), "from job 1");
    await page.screenshot({ path: `${SHOTS}/forked-session.png`, fullPage: true });
    // Its conversation is a fork of job 1's: the next reply is the conversation's second turn.
    await submit(page, "what now");
    await waitFinal(page, "succeeded");
    assert.equal(await lastTurn(page), "turn 2: what now");

    // The parent is unchanged: job 2's files, both jobs current.
    await openSession(page, parent);
    assert.deepEqual(await fileNames(page), ["a.txt", "b.txt"]);
    assert.equal(await downloaded(page, "a.txt"), "from job 2");
    assert.equal(await page.locator("tr.rewound").count(), 0);

    // A rewind while a job of the session runs is refused, readably, and changes nothing.
    const job3 = await submit(page, "sleep 60");
    await page.locator(".ev.k-text").filter({ hasText: "sleeping 60s" }).waitFor();
    await openSession(page, parent);
    await jobRow(page, job2).getByRole("button", { name: `Rewind to job ${job2}` }).click();
    const rewind = page.getByRole("dialog", { name: "Rewind session" });
    await rewind.getByRole("radio", { name: /Before this job/ }).check();
    await rewind.getByRole("button", { name: "Rewind", exact: true }).click();
    const refusal = rewind.getByRole("alert");
    await refusal.filter({ hasText: "FailedPrecondition (SESSION_BUSY)" }).waitFor();
    await refusal.getByText(`has job ${job3} running`).waitFor();
    await refusal.getByText("Wait for it to finish, or cancel it").waitFor();
    await page.screenshot({ path: `${SHOTS}/rewind-busy.png` });
    await page.keyboard.press("Escape");
    await rewind.waitFor({ state: "hidden" });
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("aria-label")), `Rewind to job ${job2}`, "focus back on the button that opened it");
    assert.equal(await page.locator("tr.rewound").count(), 0, "the refused rewind marked nothing");
    await page.goto(`${server.url}#/jobs/${job3}`);
    await page.getByRole("button", { name: "Cancel" }).click();
    await waitFinal(page, "cancelled");

    // Rewind to before job 2, from the keyboard: the button, the choice and the confirmation.
    await openSession(page, parent);
    await jobRow(page, job2).getByRole("button", { name: `Rewind to job ${job2}` }).focus();
    await page.keyboard.press("Enter");
    await rewind.waitFor();
    assert.ok(await rewind.evaluate((d) => d.contains(document.activeElement)), "focus moved into the dialog");
    await rewind.getByRole("radio", { name: /Before this job/ }).focus();
    await page.keyboard.press("Space");
    assert.ok(await rewind.getByRole("radio", { name: /Before this job/ }).isChecked());
    await page.screenshot({ path: `${SHOTS}/rewind-dialog.png` });
    await rewind.getByRole("button", { name: "Rewind", exact: true }).focus();
    await page.keyboard.press("Enter");
    await rewind.waitFor({ state: "hidden" });
    await page.getByRole("status").filter({ hasText: `Rewound to before job ${job2}: 2 jobs marked rewound past` }).waitFor();
    // Jobs 2 and 3 are marked; job 1 is not.
    await jobRow(page, job2).getByText("rewound past").waitFor();
    await jobRow(page, job3).getByText("rewound past").waitFor();
    assert.equal(await jobRow(page, job1).getByText("rewound past").count(), 0);
    assert.deepEqual(await fileNames(page), ["a.txt"], "the file browser shows job 1's state");
    assert.equal(await downloaded(page, "a.txt"), "from job 1");
    await page.screenshot({ path: `${SHOTS}/rewound-session.png`, fullPage: true });
    await page.emulateMedia({ colorScheme: "dark" });
    await page.screenshot({ path: `${SHOTS}/rewound-session-dark.png`, fullPage: true });
    await page.emulateMedia({ colorScheme: "light" });

    // Job 2's own page says it was rewound past.
    await page.getByRole("link", { name: job2 }).click();
    await page.locator(".facts dd").filter({ hasText: "rewound past" }).waitFor();
    await page.screenshot({ path: `${SHOTS}/job-rewound-past.png` });

    // The next job continues job 1's conversation (its second turn), not job 2's third.
    await openSession(page, parent);
    await submit(page, "where are we");
    await waitFinal(page, "succeeded");
    assert.equal(await lastTurn(page), "turn 2: where are we");

    // The fork never saw any of it.
    await openSession(page, child);
    assert.deepEqual(await fileNames(page), ["a.txt"]);
    assert.equal(await page.locator("tr.rewound").count(), 0);
    assert.deepEqual(problems, []);
    await context.close();
  });
});
