// Builds the console into dist/ (what the gateway's browser port serves): esbuild bundles
// src/main.ts with the generated client (../typescript/src), @connectrpc/connect-web and
// hls.js into one minified app.js; index.html and app.css are copied. Idempotent, about 1 s.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
mkdirSync(join(here, "dist"), { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.ts")],
  outfile: join(here, "dist", "app.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  // One copy of the runtime for the client and the transport (the client's own imports would
  // otherwise resolve in ../typescript/node_modules): every such import resolves from here.
  plugins: [
    {
      name: "one-runtime",
      setup(b) {
        b.onResolve({ filter: /^@(connectrpc\/connect|bufbuild\/protobuf)(\/.*)?$/ }, (args) => {
          if (args.pluginData === "here") return undefined;
          return b.resolve(args.path, { resolveDir: here, kind: args.kind, pluginData: "here" });
        });
      },
    },
  ],
  logLevel: "warning",
});
for (const name of ["index.html", "app.css"]) {
  copyFileSync(join(here, "src", name), join(here, "dist", name));
}
