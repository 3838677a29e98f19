// Loading a value from the API with its error, and re-loading on demand.
import { useCallback, useEffect, useState } from "preact/hooks";
import { isUnauthenticated } from "./api";

export function useLoad<T>(load: () => Promise<T>, deps: unknown[], onAuthError: () => void) {
  const [value, setValue] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (v) => live && (setValue(v), setError(undefined)),
      (e) => {
        if (!live) return;
        if (isUnauthenticated(e)) onAuthError();
        setError(e);
      },
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { value, error, reload };
}
