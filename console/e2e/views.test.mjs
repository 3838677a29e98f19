// End-to-end tests of the console's views of what landed after it: answering a permission
// request, sending input and interrupting (the genuine Claude Code against the scripted model
// server, behind agentd's gateway, which also fills the usage ledger), a finished job's changes
// and diff, presets, the usage chart, webhooks; and another tenant's key seeing none of it.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { KEY_A, KEY_B, SHOTS, createSession, genuineClaude, login, openBrowser, startMock, startServer, waitFinal } from "./harness.mjs";

// The genuine CLI starts slowly on a loaded machine.
const GENUINE = 180_000;

let mock;
let server;
let browser;
let asked; // tenant A's job that asked for a permission (for the tenancy test)

before(async () => {
  mock = await startMock();
  const config = [
    genuineClaude("genuine", mock.base),
    '[prices."mock-model"]',
    "input_per_mtok = 1000.0",
    "output_per_mtok = 5000.0",
    "[presets.greet]",
    'description = "Greets someone in a file"',
    'prompt_template = "write greeting.txt hello {{ who }}"',
    "",
  ].join("\n");
  server = await startServer({ config });
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await mock?.stop();
});

/** Fills the session page's submit form and opens the job. */
async function submitWith(page, { prompt = "", agent, permissions, preset, variables = {} }) {
  if (preset) await page.getByRole("combobox", { name: "Preset", exact: true }).selectOption(preset);
  if (agent) await page.getByRole("combobox", { name: "Agent", exact: true }).selectOption(agent);
  if (permissions) await page.getByLabel("Permissions").fill(permissions);
  for (const [name, value] of Object.entries(variables)) await page.getByRole("textbox", { name, exact: true }).fill(value);
  if (prompt) await page.getByPlaceholder("Prompt").fill(prompt);
  await page.getByRole("button", { name: "Submit", exact: true }).click();
  await page.getByRole("heading", { name: /^Job / }).waitFor();
  return decodeURIComponent(new URL(page.url()).hash.replace("#/jobs/", ""));
}

const changeRow = (page, kind, path) =>
  page.getByLabel("Changed files").getByRole("row").filter({ hasText: kind }).filter({ hasText: path });

describe("console views", () => {
  test("a permission request answered in the browser lets the tool run", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=ask");
    asked = await submitWith(page, { agent: "genuine", permissions: "ask", prompt: "write asked.txt allowed in the browser" });
    const ask = page.getByRole("group", { name: "Permission request Write" });
    await ask.waitFor({ timeout: GENUINE });
    await ask.getByText("asked.txt").first().waitFor();
    // Nothing ran yet: the job waits for the answer.
    await page.locator(".ev.k-permissionRequest").first().waitFor();
    assert.equal(await page.locator(".ev.k-permissionResolved").count(), 0);
    assert.equal(await page.locator(".ev.k-toolResult").count(), 0, "no tool result before the answer");
    await page.screenshot({ path: `${SHOTS}/job-permission.png` });
    await ask.getByRole("button", { name: "Allow" }).click();
    await waitFinal(page, "succeeded", GENUINE);
    await page.locator(".ev.k-permissionResolved").filter({ hasText: "by caller" }).waitFor();
    assert.equal(await page.getByRole("group", { name: /Permission request/ }).count(), 0, "the request is no longer open");
    // The tool ran: its file is the job's change, with the text the model asked for.
    await changeRow(page, "added", "asked.txt").waitFor();
    await page.getByLabel("Diff").getByText("+allowed in the browser").waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("input reaches a running agent and Interrupt ends its turn", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=input");
    await submitWith(page, { agent: "genuine", permissions: "ask", prompt: "delay 60 remember kiwi" });
    await page.locator(".ev.k-init").waitFor({ timeout: GENUINE });
    await page.getByLabel("Message to the agent").fill("recall");
    await page.getByRole("button", { name: "Send", exact: true }).click();
    await page.locator(".ev.k-input").filter({ hasText: "recall" }).waitFor({ timeout: GENUINE });
    assert.equal(await page.getByLabel("Message to the agent").inputValue(), "", "the sent message is cleared");
    await page.getByRole("button", { name: "Interrupt" }).click();
    await waitFinal(page, "cancelled", GENUINE);
    await page.locator(".facts dd").getByText("INTERRUPTED", { exact: true }).waitFor();
    await page.screenshot({ path: `${SHOTS}/job-interrupted.png` });
    await context.close();
  });

  test("a finished job's changes: the changed files and their diff", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=diff", [{ name: "notes.txt", content: "one\n" }]);
    await submitWith(page, { prompt: "bash echo two >> notes.txt ; write fresh.txt a new file" });
    await waitFinal(page, "succeeded");
    await changeRow(page, "modified", "notes.txt").waitFor();
    await changeRow(page, "added", "fresh.txt").waitFor();
    const diff = page.getByLabel("Diff");
    await diff.getByText("+two", { exact: true }).waitFor();
    await diff.getByText("+a new file", { exact: true }).waitFor();
    assert.equal(await diff.locator(".d-del").count(), 0, "nothing was removed");
    assert.ok((await diff.locator(".d-add").count()) >= 2);
    // Download the file as the job left it.
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download notes.txt" }).click()]);
    assert.equal(await readFile(await download.path(), "utf8"), "one\ntwo\n");
    await page.screenshot({ path: `${SHOTS}/job-changes.png`, fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a job that changed many files shows them a page at a time", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    await createSession(page, "case=many");
    await submitWith(page, { prompt: "bash mkdir many && seq -f 'many/f%04g' 1 620 | xargs touch" });
    await waitFinal(page, "succeeded");
    const rows = page.getByLabel("Changed files").getByRole("row");
    await changeRow(page, "added", "many/f0500").waitFor();
    assert.equal(await rows.count(), 500, "the first page");
    await page.getByRole("button", { name: "Show more changes" }).click();
    await changeRow(page, "added", "many/f0620").waitFor();
    assert.equal(await rows.count(), 620, "both pages, none twice");
    assert.equal(await page.getByRole("button", { name: "Show more changes" }).count(), 0, "nothing more to show");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("presets: listed, and a job submitted with one and its variable", async () => {
    const { page, context } = await login(browser, server.url, KEY_A);
    await page.getByRole("link", { name: "Presets" }).click();
    await page.getByLabel("Presets").getByRole("cell", { name: "greet (operator)" }).waitFor();
    await page.getByText("write greeting.txt hello {{ who }}").waitFor();
    await page.screenshot({ path: `${SHOTS}/presets.png` });
    await page.getByRole("link", { name: "Sessions" }).click();
    await createSession(page, "case=preset");
    await submitWith(page, { preset: "greet", variables: { who: "browser" } });
    await waitFinal(page, "succeeded");
    await page.locator(".facts dd.clip").filter({ hasText: "write greeting.txt hello browser" }).waitFor();
    await page.getByLabel("Diff").getByText("+hello browser", { exact: true }).waitFor();
    await context.close();
  });

  test("the usage chart shows today's metered calls", async () => {
    const { page, context, problems } = await login(browser, server.url, KEY_A);
    await page.getByRole("link", { name: "Usage" }).click();
    const today = new Date().toISOString().slice(0, 10);
    const bar = page.getByTestId("usage-chart").locator(`rect[data-day="${today}"]`);
    await bar.waitFor();
    assert.ok(Number(await bar.getAttribute("data-value")) > 0, "today's bar has tokens");
    assert.ok(Number(await bar.getAttribute("height")) > 0, "and is drawn");
    assert.equal(await page.getByTestId("usage-chart").locator("rect.bar").count(), 30, "one bar per day of the range");
    await page.getByLabel("Usage by Model").getByRole("cell", { name: "mock-model" }).waitFor();
    await page.getByLabel("Usage by Agent").getByRole("cell", { name: "genuine" }).waitFor();
    await page.getByLabel("Show").selectOption("cost");
    assert.ok(Number(await bar.getAttribute("data-value")) > 0, "priced calls cost something");
    await page.screenshot({ path: `${SHOTS}/usage.png` });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("another tenant's key sees none of it", async () => {
    assert.ok(asked, "the permission test ran first");
    const { page, context } = await login(browser, server.url, KEY_B);
    await page.getByRole("link", { name: "Usage" }).click();
    await page.getByText("No model calls in this range.").waitFor();
    const values = await page.getByTestId("usage-chart").locator("rect.bar").evaluateAll((rs) => rs.map((r) => Number(r.dataset.value)));
    assert.equal(values.length, 30);
    assert.ok(values.every((v) => v === 0), "B's chart is empty");
    assert.equal(await page.getByLabel("Usage by Model").count(), 0);
    await page.goto(`${server.url}#/jobs/${asked}`);
    await page.getByRole("alert").filter({ hasText: /NotFound.*JOB_NOT_FOUND/ }).waitFor();
    assert.equal(await page.getByLabel("Control").count(), 0, "no controls for A's job");
    assert.equal(await page.getByLabel("Changes").count(), 0, "no changes of A's job");
    await page.getByRole("link", { name: "Webhooks" }).click();
    await page.getByText("No webhooks.").waitFor();
    await page.screenshot({ path: `${SHOTS}/other-tenant-usage.png` });
    await context.close();
  });
});
