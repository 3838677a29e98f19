// The TypeScript SDK against the real server: every helper and every RPC.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, writeFileSync, chmodSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import {
  AgentdError,
  CHUNK_SIZE,
  ChangeKind,
  Code,
  ConnectError,
  ERROR_DOMAIN,
  JobState,
  createAgentdClient,
  errorReason,
  isAgentdError,
} from "../dist/index.js";
import { KEY_A, KEY_B, startProxy, startServer } from "./harness.mjs";

const tmpdir = () => mkdtempSync(path.join(os.tmpdir(), "agentd-ts-test-"));
const kindOf = (ev) => ev.kind.case;
const seqs = (events) => events.map((e) => Number(e.seq));
const range = (from, n) => Array.from({ length: n }, (_, i) => from + i);

async function collect(iterable) {
  const out = [];
  for await (const x of iterable) out.push(x);
  return out;
}

async function rejectsWith(promise, code, reason) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
    assert.ok(isAgentdError(err), `expected an AgentdError, got ${err}`);
    assert.equal(err.code, code, `code: ${Code[err.code]} (${err.message})`);
    if (reason !== undefined) assert.equal(err.reason, reason);
    return true;
  });
}

describe("@agentd/client", () => {
  let server;
  let client;
  before(async () => {
    server = await startServer();
    client = createAgentdClient({ baseUrl: server.url, apiKey: KEY_A });
  });
  after(async () => {
    client?.close();
    await server?.stop();
  });

  test("presets: create, run with variables, per tenant, delete (issue #20)", async () => {
    await client.createPreset("ts-greet", {
      promptTemplate: "say hi to {{who}}",
      overridable: ["model"],
      timeoutSeconds: 60,
    });
    assert.ok((await client.listPresets()).some((p) => p.name === "ts-greet" && !p.readOnly));
    const session = await client.createSession();
    const job = await client.run(session.sessionId, "", { preset: "ts-greet", variables: { who: "ts" } }).wait();
    assert.equal(job.prompt, "say hi to ts");
    assert.equal(job.result, "turn 1: say hi to ts");
    await rejectsWith(client.submit(session.sessionId, "", { preset: "ts-greet" }), Code.InvalidArgument, "MISSING_VARIABLE");
    await rejectsWith(
      client.submit(session.sessionId, "", { preset: "ts-greet", variables: { who: "x" }, agent: "claude" }),
      Code.InvalidArgument,
      "PRESET_OVERRIDE_DENIED",
    );
    const other = createAgentdClient({ baseUrl: server.url, apiKey: KEY_B });
    try {
      await rejectsWith(other.getPreset("ts-greet"), Code.NotFound, "PRESET_NOT_FOUND");
    } finally {
      other.close();
    }
    assert.equal((await client.updatePreset("ts-greet", { promptTemplate: "bye {{who}}" })).promptTemplate, "bye {{who}}");
    await client.deletePreset("ts-greet");
    await rejectsWith(client.getPreset("ts-greet"), Code.NotFound, "PRESET_NOT_FOUND");
  });

  test("uploadInPieces: unary pieces committed as one file, a bad digest commits nothing", async () => {
    const session = await client.createSession();
    const bytes = randomBytes(300_000);
    const sent = [];
    const info = await client.uploadInPieces(session.sessionId, "pieces/blob.bin", bytes, {
      pieceSize: 128 * 1024,
      onProgress: (n) => sent.push(n),
    });
    assert.deepEqual(sent, [131072, 262144, 300000], "three pieces, in order");
    assert.equal(info.path, "pieces/blob.bin");
    assert.equal(info.size, 300000n);
    assert.equal(info.sha256, createHash("sha256").update(bytes).digest("hex"));
    assert.ok(Buffer.from(await client.readFile(session.sessionId, "pieces/blob.bin")).equals(bytes));
    // A Blob goes the same way (the browser's File is one).
    const fromBlob = await client.uploadInPieces(session.sessionId, "pieces/small.txt", new Blob(["hello"]));
    assert.equal(fromBlob.size, 5n);
    // The server checks the declared digest before committing: nothing appears.
    await assert.rejects(
      client.uploadInPieces(session.sessionId, "pieces/bad.bin", bytes, { pieceSize: 128 * 1024, sha256: "0".repeat(64) }),
      (err) => isAgentdError(err),
    );
    const listed = await collect(client.listFiles(session.sessionId, "pieces"));
    assert.ok(listed.some((f) => f.path === "pieces/blob.bin"));
    assert.ok(!listed.some((f) => f.path.startsWith("pieces/bad")), "the refused upload left nothing");
  });

  test("seed flow: session, run, outputs, files, delete", async () => {
    const session = await client.createSession({
      files: { "README.md": "hello\n", "data/in.bin": new Uint8Array([0, 1]) },
      labels: { t: "seed" },
    });
    assert.match(session.sessionId, /^ses_/);
    assert.equal(session.fileCount, 2n);

    const run = client.run(session.sessionId, "write out.txt hello world");
    const events = await collect(run);
    assert.deepEqual(seqs(events), range(1, events.length));
    assert.equal(kindOf(events[0]), "started");
    assert.equal(kindOf(events.at(-1)), "finished");
    const calls = events.filter((e) => kindOf(e) === "toolCall").map((e) => e.kind.value.name);
    assert.deepEqual(calls, ["Write"]);
    assert.equal(run.job.state, JobState.SUCCEEDED);
    assert.equal(run.job.lastSeq, events.at(-1).seq);

    const outputs = await client.outputs(session.sessionId);
    assert.equal(outputs.jobId, run.job.jobId);
    assert.deepEqual(outputs.changes.map((c) => [c.path, c.kind]), [["out.txt", ChangeKind.ADDED]]);
    const dir = tmpdir();
    const written = await client.downloadOutputs(session.sessionId, path.join(dir, "out"));
    assert.deepEqual(written, [path.join(dir, "out", "out.txt")]);
    assert.equal(readFileSync(written[0], "utf8"), "hello world");

    const paths = (await collect(client.listFiles(session.sessionId, "", { includeSha256: true }))).map((f) => f.path);
    for (const p of ["README.md", "data/in.bin", "out.txt"]) assert.ok(paths.includes(p), p);
    assert.equal(Buffer.from(await client.readFile(session.sessionId, "README.md")).toString(), "hello\n");

    assert.equal((await client.getSession(session.sessionId)).jobCount, 1n);
    const listed = await collect(client.listSessions({ labelFilter: { t: "seed" } }));
    assert.ok(listed.some((s) => s.sessionId === session.sessionId));
    assert.deepEqual((await collect(client.listJobs(session.sessionId))).map((j) => j.jobId), [run.job.jobId]);
    assert.equal((await client.getJob(run.job.jobId)).result, run.job.result);

    assert.equal(await client.deleteFile(session.sessionId, "data", { recursive: true }), 1n);
    assert.equal(await client.deleteSession(session.sessionId), 0);
    await rejectsWith(client.getSession(session.sessionId), Code.NotFound, "SESSION_NOT_FOUND");
  });

  test("outputs gathers every page of a job that changed many files", async () => {
    const many = 10_050; // more than one page of GetJobOutputs holds (10,000)
    const session = await client.createSession({ files: {} });
    const run = client.run(session.sessionId, `bash mkdir many && seq -f 'many/f%05g' 1 ${many} | xargs touch`);
    await collect(run);
    assert.equal(run.job.state, JobState.SUCCEEDED);
    const outputs = await client.outputs(session.sessionId);
    assert.equal(outputs.jobId, run.job.jobId);
    assert.equal(outputs.nextPageToken, "");
    assert.deepEqual(
      outputs.changes.map((c) => c.path),
      range(1, many).map((i) => `many/f${String(i).padStart(5, "0")}`),
    );
  });

  test("server info", async () => {
    const info = await client.serverInfo();
    assert.ok(info.version);
    assert.equal(info.defaultAgent, "claude");
    assert.ok(info.agents.some((a) => a.name === "claude" && a.available));
    assert.ok(info.limits.maxConcurrentJobs > 0);
  });

  test("directory sessions and streamed uploads/downloads", async () => {
    const dir = tmpdir();
    const src = path.join(dir, "src");
    mkdirSync(path.join(src, "pkg"), { recursive: true });
    writeFileSync(path.join(src, "pkg", "main.py"), "print('hi')\n");
    writeFileSync(path.join(src, "run.sh"), "#!/bin/sh\necho ok\n");
    chmodSync(path.join(src, "run.sh"), 0o755);
    const big = randomBytes(3 * CHUNK_SIZE + 12345);
    writeFileSync(path.join(src, "big.bin"), big);
    const sha = createHash("sha256").update(big).digest("hex");

    const session = await client.createSession({ files: src });
    assert.equal(session.fileCount, 3n);
    const infos = new Map(
      (await collect(client.listFiles(session.sessionId, "", { includeSha256: true }))).map((f) => [f.path, f]),
    );
    assert.equal(infos.get("run.sh").mode & 0o777, 0o755);
    assert.equal(infos.get("big.bin").sha256, sha);

    const uploaded = await client.upload(session.sessionId, {
      "copy/big2.bin": path.join(src, "big.bin"),
      "note.txt": new TextEncoder().encode("n"),
    });
    assert.deepEqual(uploaded.map((u) => u.path), ["copy/big2.bin", "note.txt"]);
    assert.equal(uploaded[0].sha256, sha);
    const more = await client.uploadDir(session.sessionId, path.join(src, "pkg"), "again");
    assert.deepEqual(more.map((u) => u.path), ["again/main.py"]);

    const dest = path.join(dir, "dl", "big.bin");
    const info = await client.download(session.sessionId, "copy/big2.bin", dest, { includeSha256: true });
    assert.equal(info.size, BigInt(big.length));
    assert.equal(info.sha256, sha);
    assert.ok(readFileSync(dest).equals(big));
    const tail = path.join(dir, "tail.bin");
    await client.download(session.sessionId, "copy/big2.bin", tail, { offset: BigInt(big.length - 100) });
    assert.ok(readFileSync(tail).equals(big.subarray(big.length - 100)));
    await client.deleteSession(session.sessionId);
  });

  test("submit, wait, stream with afterSeq", async () => {
    const session = await client.createSession();
    const job = await client.submit(session.sessionId, "lines 5");
    const final = await client.wait(job.jobId);
    assert.equal(final.state, JobState.SUCCEEDED);
    const all = await collect(client.stream(job.jobId));
    assert.deepEqual(seqs(all), range(1, Number(final.lastSeq)));
    const tail = await collect(client.stream(job.jobId, { afterSeq: 3n }));
    assert.deepEqual(seqs(tail), seqs(all).slice(3));
    const texts = all.filter((e) => kindOf(e) === "text").map((e) => e.kind.value.text);
    assert.deepEqual(texts.slice(0, 5), range(1, 5).map((i) => `line ${i}`));
  });

  test("run reattaches after a forced disconnect: no gap, no duplicate", async () => {
    const proxy = await startProxy(server.address);
    const c = createAgentdClient({ baseUrl: proxy.url, apiKey: KEY_A });
    try {
      const session = await c.createSession();
      const run = c.run(session.sessionId, "lines 20 ; sleep 1.5 ; lines 20");
      const events = [];
      let dropped = false;
      for await (const ev of run) {
        events.push(ev);
        if (!dropped && kindOf(ev) === "text" && ev.kind.value.text === "sleeping 1.5s") {
          proxy.dropAll();
          dropped = true;
        }
      }
      assert.ok(dropped);
      assert.ok(proxy.connections >= 2, `connections: ${proxy.connections}`);
      assert.deepEqual(seqs(events), range(1, events.length));
      assert.equal(run.job.state, JobState.SUCCEEDED);
      assert.equal(Number(run.job.lastSeq), events.length);

      const job = await c.submit(session.sessionId, "lines 10 ; sleep 1.5 ; lines 10");
      const seen = [];
      for await (const ev of c.stream(job.jobId)) {
        seen.push(ev);
        if (seen.length === 3) proxy.dropAll();
      }
      assert.deepEqual(seqs(seen), range(1, Number((await c.getJob(job.jobId)).lastSeq)));
      assert.equal(kindOf(seen.at(-1)), "finished");
    } finally {
      c.close();
      await proxy.close();
    }
  });

  test("cancel", async () => {
    const session = await client.createSession();
    const run = client.run(session.sessionId, "sleep 30");
    const events = [];
    for await (const ev of run) {
      events.push(ev);
      if (kindOf(ev) === "text" && ev.kind.value.text.startsWith("sleeping")) {
        const cancelled = await run.cancel();
        assert.equal(cancelled.jobId, run.job.jobId);
      }
    }
    assert.equal(events.at(-1).kind.value.state, JobState.CANCELLED);
    assert.equal(run.job.state, JobState.CANCELLED);
    assert.equal((await client.wait(run.job.jobId)).state, JobState.CANCELLED);
  });

  test("a failed job is a result, not an error", async () => {
    const session = await client.createSession();
    const job = await client.run(session.sessionId, "fail 500 Internal Server Error").wait();
    assert.equal(job.state, JobState.FAILED);
    assert.match(job.errorMessage, /Internal Server Error/);
    await rejectsWith(client.outputs(session.sessionId), Code.NotFound, "NO_SUCCEEDED_JOB");
  });

  test("bad input surfaces as ConnectError with code and reason", async () => {
    const session = await client.createSession();
    await assert.rejects(client.submit(session.sessionId, ""), (err) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.InvalidArgument);
      assert.equal(err.reason, "MISSING_FIELD");
      assert.equal(err.domain, ERROR_DOMAIN);
      assert.equal(errorReason(err), "MISSING_FIELD");
      return true;
    });
    await rejectsWith(client.upload(session.sessionId, { "../escape.txt": new Uint8Array([1]) }), Code.InvalidArgument, "INVALID_PATH");
    await rejectsWith(client.readFile(session.sessionId, "missing.txt"), Code.NotFound, "FILE_NOT_FOUND");
    await rejectsWith(client.submit(session.sessionId, "hi", { env: { PATH: "/evil" } }), Code.InvalidArgument, "FORBIDDEN_ENV");
    await rejectsWith(collect(client.stream("job_00000000000000000000000000")), Code.NotFound);
    // The raw generated clients map errors the same way.
    await rejectsWith(client.jobs.getJob({ jobId: "job_00000000000000000000000000" }), Code.NotFound);
  });

  test("archives round-trip; watchFiles sees a job's writes in order", async () => {
    const session = await client.createSession({ files: { "a.txt": "alpha", "lib/b.py": "print(1)\n" } });
    const dir = tmpdir();
    for (const [format, name] of [["tar.gz", "ws.tar.gz"], ["zip", "ws.zip"], ["tar", "ws.tar"]]) {
      const dest = path.join(dir, name);
      const size = await client.downloadArchive(session.sessionId, dest, { format });
      assert.equal(size, readFileSync(dest).length);
      const copy = await client.createSession();
      const done = await client.uploadArchive(copy.sessionId, dest, { format, dest: "in" });
      assert.equal(done.files, 2n);
      assert.equal(Buffer.from(await client.readFile(copy.sessionId, "in/lib/b.py")).toString(), "print(1)\n");
    }
    const garbage = path.join(dir, "garbage.tar");
    writeFileSync(garbage, "not a tar archive ".repeat(64));
    await rejectsWith(client.uploadArchive(session.sessionId, garbage, { format: "tar" }),
      Code.InvalidArgument, "INVALID_ARCHIVE");

    const watched = await client.createSession();
    const ac = new AbortController();
    const seen = [];
    const watching = (async () => {
      try {
        for await (const e of client.watchFiles(watched.sessionId, { signal: ac.signal })) {
          seen.push(e.path);
          if (e.path === "b.txt") return;
        }
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    await client.wait((await client.submit(watched.sessionId, "write a.txt 1 ; sleep 0.2 ; write b.txt 2")).jobId);
    const timer = setTimeout(() => ac.abort(), 15000);
    await watching;
    clearTimeout(timer);
    assert.deepEqual(seen, ["a.txt", "b.txt"]);
  });

  test("diff, fork, rewind and a job's snapshot as an archive (issue #18)", async () => {
    const session = await client.createSession({ files: { "a.txt": "zero\n" } });
    const sid = session.sessionId;
    const run1 = client.run(sid, "bash echo one > a.txt ; first");
    const j1 = await run1.wait();
    assert.equal(await run1.diff(),
      "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-zero\n+one\n");
    const j2 = await client.run(sid, "bash echo two > a.txt ; second").wait();
    assert.equal(j2.result, "turn 2: second");

    const tar = path.join(tmpdir(), "j1.tar");
    await client.downloadArchive(sid, tar, { format: "tar", jobId: j1.jobId });
    const { stdout } = await promisify(execFile)("tar", ["-xOf", tar, "a.txt"]);
    assert.equal(stdout, "one\n");

    const fork = await client.forkSession(j1.jobId, { labels: { kind: "fork" } });
    assert.notEqual(fork.sessionId, sid);
    assert.equal(fork.labels.kind, "fork");
    assert.equal(Buffer.from(await client.readFile(fork.sessionId, "a.txt")).toString(), "one\n");
    assert.equal((await client.run(fork.sessionId, "in fork").wait()).result, "turn 2: in fork");
    assert.equal(Buffer.from(await client.readFile(sid, "a.txt")).toString(), "two\n");

    const rewound = await client.rewindSession(sid, j2.jobId, { before: true });
    assert.deepEqual(rewound.rewoundJobIds, [j2.jobId]);
    assert.equal(Buffer.from(await client.readFile(sid, "a.txt")).toString(), "one\n");
    assert.equal((await client.getJob(j2.jobId)).rewoundPast, true);
    assert.equal((await client.run(sid, "again").wait()).result, "turn 2: again");
    await rejectsWith(client.forkSession("job_nope"), Code.NotFound, "JOB_NOT_FOUND");
  });

  test("tenants are isolated", async () => {
    const session = await client.createSession();
    const other = createAgentdClient({ baseUrl: server.url, apiKey: KEY_B });
    try {
      await rejectsWith(other.getSession(session.sessionId), Code.NotFound, "SESSION_NOT_FOUND");
    } finally {
      other.close();
    }
  });

  test("auth failure", async () => {
    const bad = createAgentdClient({ baseUrl: server.url, apiKey: "wrong-key" });
    try {
      await rejectsWith(bad.createSession(), Code.Unauthenticated, "INVALID_CREDENTIALS");
    } finally {
      bad.close();
    }
    const none = createAgentdClient({ baseUrl: server.url, apiKey: "" }); // sends no key
    try {
      await rejectsWith(none.createSession(), Code.Unauthenticated, "MISSING_CREDENTIALS");
    } finally {
      none.close();
    }
  });

  test("configuration from AGENTD_URL / AGENTD_API_KEY", async () => {
    const saved = { url: process.env.AGENTD_URL, key: process.env.AGENTD_API_KEY };
    process.env.AGENTD_URL = server.address; // bare host:port means http
    process.env.AGENTD_API_KEY = KEY_A;
    const c = createAgentdClient();
    try {
      const s = await c.createSession({ ttlSeconds: 60 });
      assert.equal((await c.sessions.getSession({ sessionId: s.sessionId })).session.ttlSeconds, 60);
    } finally {
      c.close();
      if (saved.url === undefined) delete process.env.AGENTD_URL; else process.env.AGENTD_URL = saved.url;
      if (saved.key === undefined) delete process.env.AGENTD_API_KEY; else process.env.AGENTD_API_KEY = saved.key;
    }
  });

  test("example writes five stories into ./out (server without keys, as in the README)", async () => {
    const keyless = await startServer({ keys: false });
    const cwd = tmpdir();
    const example = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), "../examples/stories.mjs");
    const { stdout } = await promisify(execFile)(process.execPath, [example], {
      cwd,
      env: { ...process.env, AGENTD_URL: keyless.url, AGENTD_API_KEY: "" },
      timeout: 120_000,
    }).finally(() => keyless.stop());
    const dirs = readdirSync(path.join(cwd, "out")).sort();
    assert.deepEqual(dirs, range(0, 5).map((i) => `story-${i}`));
    for (const d of dirs) {
      assert.match(readFileSync(path.join(cwd, "out", d, "story.txt"), "utf8"), /^Once upon a time/);
    }
    assert.equal(stdout.split("finished: SUCCEEDED").length - 1, 5);
  });
});

describe("watch and wait (issue #19)", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test("watchJobs sees each change once and waitJob answers", async () => {
    const c = createAgentdClient({ baseUrl: server.url, apiKey: KEY_A });
    const session = await c.createSession({});
    const job = (await c.submit(session.sessionId, "hello")).jobId;
    const states = [];
    let last = 0n;
    for await (const ch of c.watchJobs({ sessionId: session.sessionId, afterCursor: 0n })) {
      assert.ok(ch.cursor > last);
      last = ch.cursor;
      assert.equal(ch.job.jobId, job);
      states.push(ch.job.state);
      if (ch.job.state >= JobState.SUCCEEDED) break;
    }
    assert.deepEqual(states, [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]);
    const done = await c.waitJob(job, { timeoutSeconds: 30 });
    assert.equal(done.timedOut, false);
    assert.equal(done.job.state, JobState.SUCCEEDED);
    const slow = (await c.submit(session.sessionId, "sleep 3")).jobId;
    const early = await c.waitJob(slow, { timeoutSeconds: 1 });
    assert.equal(early.timedOut, true);
    await rejectsWith(c.waitJob("job_nope", { timeoutSeconds: 1 }), Code.NotFound, "JOB_NOT_FOUND");
  });

  test("watchJobs with includeEvents: each job's events once, a capped change completed", async () => {
    const c = createAgentdClient({ baseUrl: server.url, apiKey: KEY_A });
    const session = await c.createSession({});
    // 1,500 lines: over the server's 1,000-event cap, so the helper completes that change.
    const jobs = [];
    for (const p of ["lines 1500", "lines 4 ; sleep 0.2 ; lines 2"]) jobs.push((await c.submit(session.sessionId, p)).jobId);
    const carried = new Map(jobs.map((j) => [j, []]));
    let finals = 0;
    for await (const ch of c.watchJobs({ sessionId: session.sessionId, afterCursor: 0n, includeEvents: true })) {
      assert.equal(ch.eventsTruncated, false);
      carried.get(ch.job.jobId).push(...ch.events);
      if (ch.job.state >= JobState.SUCCEEDED && ++finals === jobs.length) break;
    }
    for (const j of jobs) {
      const log = await collect(c.stream(j));
      assert.deepEqual(seqs(carried.get(j)), range(1, log.length));
      assert.deepEqual(carried.get(j), log);
    }
    assert.ok(carried.get(jobs[0]).length > 1500);
  });

  test("watchJobs resumes after dropped connections, each change once; wait() returns the final job", async () => {
    const proxy = await startProxy(server.address);
    const c = createAgentdClient({ baseUrl: proxy.url, apiKey: KEY_A });
    try {
      const session = await c.createSession({});
      const jobs = [];
      for (let i = 0; i < 3; i++) jobs.push((await c.submit(session.sessionId, `hello ${i}`)).jobId);
      const seen = [];
      for await (const ch of c.watchJobs({ sessionId: session.sessionId, afterCursor: 0n })) {
        seen.push([ch.cursor, ch.job.jobId, ch.job.state]);
        if (seen.length === 2 || seen.length === 5) proxy.dropAll();
        if (seen.length === 3 * jobs.length) break;
      }
      // At least one resume: the second drop may hit a connection whose changes all arrived
      // already (the iterator then ends before it needs another).
      assert.ok(proxy.connections >= 2, `connections: ${proxy.connections}`);
      for (let i = 1; i < seen.length; i++) assert.ok(seen[i][0] > seen[i - 1][0], "each change once, in order");
      for (const j of jobs) {
        const states = seen.filter((s) => s[1] === j).map((s) => s[2]);
        assert.deepEqual(states.slice(0, 2), [JobState.QUEUED, JobState.RUNNING]);
        assert.equal(states.length, 3);
        assert.ok(states[2] >= JobState.SUCCEEDED);
      }
      const slow = (await c.submit(session.sessionId, "sleep 1")).jobId;
      assert.equal((await c.wait(slow)).state, JobState.SUCCEEDED);
    } finally {
      c.close();
      await proxy.close();
    }
  });
});

describe("two-way control (issue #17)", () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test("onPermission allows and denies (sync and async callbacks); send and interrupt", async () => {
    const c = createAgentdClient({ baseUrl: server.url, apiKey: KEY_A });
    const session = await c.createSession({});
    const decide = (req) => (req.inputJson.includes('"allowed') ? true : "not that file");
    for (const [i, callback] of [decide, async (req) => decide(req)].entries()) {
      const asked = [];
      const run = c
        .run(session.sessionId, `write allowed-${i}.txt yes ; write other-${i}.txt no`, { permissionMode: "ask" })
        .onPermission((req) => {
          asked.push(req.tool);
          return callback(req);
        });
      const events = await collect(run);
      assert.equal(run.job.state, JobState.SUCCEEDED, run.job.errorMessage);
      assert.deepEqual(asked, ["Write", "Write"]);
      const resolved = events.filter((e) => kindOf(e) === "permissionResolved").map((e) => [e.kind.value.who, e.kind.value.allow]);
      assert.deepEqual(resolved, [["caller", true], ["caller", false]]);
      assert.equal(new TextDecoder().decode(await c.readFile(session.sessionId, `allowed-${i}.txt`)), "yes");
      await rejectsWith(c.readFile(session.sessionId, `other-${i}.txt`), Code.NotFound);
    }

    let run = c.run(session.sessionId, "sleep 3", { permissionMode: "ask" });
    for await (const ev of run) {
      if (kindOf(ev) === "text" && ev.kind.value.text.startsWith("sleeping")) await run.send("remember mango");
    }
    assert.equal(run.job.state, JobState.SUCCEEDED);
    assert.match(run.job.result, /remember mango/);

    run = c.run(session.sessionId, "sleep 60", { permissionMode: "ask" });
    for await (const ev of run) {
      if (kindOf(ev) === "text" && ev.kind.value.text.startsWith("sleeping")) await run.interrupt();
    }
    assert.equal(run.job.state, JobState.CANCELLED);
    assert.equal(run.job.reason, "INTERRUPTED");
    await rejectsWith(run.send("too late"), Code.FailedPrecondition, "JOB_FINISHED");
  });
});
