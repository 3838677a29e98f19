// The console's shell: the key prompt, the hash router (#/, #/sessions/ID, #/jobs/ID, #/usage,
// #/presets, #/webhooks, #/server) and the header. Hash routes keep reloads on the one page the server always has.
import { render } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { connect, forgetKey, saveKey, savedKey, type Api } from "./api";
import { Sessions, SessionView } from "./sessions";
import { JobView } from "./job";
import { ServerView } from "./server";
import { UsageView } from "./usage";
import { PresetsView } from "./presets";
import { WebhooksView } from "./webhooks";
import "./style.css";

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return hash.replace(/^#/, "") || "/";
}

function Login({ onKey }: { onKey: (k: string) => void }) {
  const [key, setKey] = useState("");
  return (
    <form
      class="login"
      onSubmit={(e) => {
        e.preventDefault();
        if (key.trim()) onKey(key.trim());
      }}
    >
      <h1>agentd</h1>
      <label>
        API key
        <input type="password" name="api-key" autoFocus autocomplete="off" value={key} onInput={(e) => setKey(e.currentTarget.value)} />
      </label>
      <button type="submit">Open console</button>
      <p class="hint">Kept in this tab's session storage only.</p>
    </form>
  );
}

function route(api: Api, path: string, onAuthError: () => void) {
  const [, kind, id] = path.split("/");
  if (kind === "sessions" && id) return <SessionView key={id} api={api} id={decodeURIComponent(id)} onAuthError={onAuthError} />;
  if (kind === "jobs" && id) return <JobView key={id} api={api} id={decodeURIComponent(id)} onAuthError={onAuthError} />;
  if (kind === "server") return <ServerView api={api} onAuthError={onAuthError} />;
  if (kind === "usage") return <UsageView api={api} onAuthError={onAuthError} />;
  if (kind === "presets") return <PresetsView api={api} onAuthError={onAuthError} />;
  if (kind === "webhooks") return <WebhooksView api={api} onAuthError={onAuthError} />;
  return <Sessions api={api} onAuthError={onAuthError} />;
}

function App() {
  const [key, setKey] = useState(savedKey());
  const [rejected, setRejected] = useState(false);
  const api = useMemo(() => (key ? connect(key) : null), [key]);
  const path = useHash();
  if (!api) {
    return (
      <main>
        {rejected && <p class="error" role="alert">The server refused that key.</p>}
        <Login
          onKey={(k) => {
            saveKey(k);
            setRejected(false);
            setKey(k);
          }}
        />
      </main>
    );
  }
  const logout = () => {
    forgetKey();
    setKey("");
  };
  return (
    <>
      <header>
        <a href="#/" class="brand">agentd</a>
        <nav>
          <a href="#/">Sessions</a>
          <a href="#/usage">Usage</a>
          <a href="#/presets">Presets</a>
          <a href="#/webhooks">Webhooks</a>
          <a href="#/server">Server</a>
        </nav>
        <button class="quiet" onClick={logout}>Log out</button>
      </header>
      <main>{route(api, path, () => (setRejected(true), logout()))}</main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
