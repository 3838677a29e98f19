// Test harness: starts the real `agentd` binary on port 0 with a temp data dir and the scripted
// stand-in Claude, and a TCP proxy that can cut every connection to simulate a dropped network.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const KEY_A = "sdk-test-key-a";
export const KEY_B = "sdk-test-key-b";

/**
 * Starts agentd; `keys: false` starts it like the README's start command (loopback, no keys);
 * `config` is the text of a `--config` file.
 */
export async function startServer({ keys = true, config = undefined } = {}) {
  const bin = process.env.AGENTD_BIN ?? path.join(REPO, "target/debug/agentd");
  if (!existsSync(bin)) throw new Error(`agentd binary not found at ${bin}: run cargo build`);
  const tmp = mkdtempSync(path.join(os.tmpdir(), "agentd-ts-"));
  const env = {
    ...process.env,
    AGENTD_CLAUDE_BIN: path.join(REPO, "tests/fixtures/fake-claude"),
    AGENTD_KILL_GRACE_SECONDS: "2",
    AGENTD_SHUTDOWN_GRACE_SECONDS: "2",
    AGENTD_LOG: process.env.AGENTD_LOG ?? "warn",
  };
  delete env.AGENTD_API_KEYS;
  if (keys) env.AGENTD_API_KEYS = `a:${KEY_A},b:${KEY_B}`;
  delete env.AGENTD_URL;
  delete env.AGENTD_API_KEY;
  const args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", path.join(tmp, "data")];
  if (config !== undefined) {
    writeFileSync(path.join(tmp, "agentd.toml"), config);
    args.push("--config", path.join(tmp, "agentd.toml"));
  }
  const child = spawn(bin, args, {
    env,
    stdio: ["ignore", "pipe", "ignore"],
  });
  const lines = readline.createInterface({ input: child.stdout });
  const address = await new Promise((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`agentd exited with ${code} before listening`)));
    lines.on("line", (l) => {
      if (l.startsWith("agentd listening on ")) resolve(l.slice("agentd listening on ".length).trim());
    });
  });
  return {
    address,
    url: `http://${address}`,
    async stop() {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/** A TCP proxy in front of the server; dropAll() cuts every open connection at once. */
export async function startProxy(upstream) {
  const [host, port] = [upstream.slice(0, upstream.lastIndexOf(":")), Number(upstream.slice(upstream.lastIndexOf(":") + 1))];
  const sockets = new Set();
  let connections = 0;
  const server = net.createServer((client) => {
    connections += 1;
    const up = net.connect(port, host);
    for (const s of [client, up]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    }
    client.pipe(up);
    up.pipe(client);
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get connections() {
      return connections;
    },
    dropAll() {
      for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
      sockets.clear();
    },
    async close() {
      this.dropAll();
      await new Promise((r) => server.close(r));
    },
  };
}
