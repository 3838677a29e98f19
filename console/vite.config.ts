// The console imports the generated TS client from clients/typescript/src/gen (one generated
// client for Node and the browser); those files' own imports must resolve to this project's copy
// of @bufbuild/protobuf, hence `dedupe`.
import { defineConfig } from "vite";

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  resolve: { dedupe: ["@bufbuild/protobuf", "@connectrpc/connect"] },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // The polyfill would be inlined into index.html, which the CSP (script-src 'self') forbids.
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  server: { fs: { allow: [".."] } },
});
