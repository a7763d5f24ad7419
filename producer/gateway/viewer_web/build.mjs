// Builds the viewer into dist/ (out of git): the page's bundle (ESM), the DICOM decode worker the image loader
// starts beside it, the codecs' WebAssembly files at the paths the decoders ask for, the page and its style sheet.
// Run by ops/setup.sh (`npm ci && npm run build`); nothing here fetches anything.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
const require = createRequire(import.meta.url);
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

// Emscripten's codec wrappers and a few CommonJS dependencies reach for Node built-ins on code paths a browser never
// takes (ENVIRONMENT_IS_NODE; vtk.js's XML builder asks `url` for domain names): they resolve to an empty module here.
// `events` is real (the npm polyfill): that XML builder extends EventEmitter when its module loads.
const nodeBuiltins = {
  name: "node-builtins-empty",
  setup(on) {
    on.onResolve({ filter: /^(fs|path|url|crypto|module|worker_threads)$/ }, (args) => ({
      path: args.path,
      namespace: "empty",
    }));
    on.onLoad({ filter: /.*/, namespace: "empty" }, () => ({ contents: "module.exports = {};" }));
  },
};
const common = {
  bundle: true,
  format: "esm",
  platform: "browser",
  minify: true,
  sourcemap: false,
  target: "es2022",
  logLevel: "warning",
  plugins: [nodeBuiltins],
};
await build({ ...common, entryPoints: [join(here, "src", "main.js")], outfile: join(out, "assets", "viewer.js") });
// dicom-image-loader starts `new Worker(new URL("./decodeImageFrameWorker.js", import.meta.url))`: the worker
// is bundled on its own and placed beside viewer.js, which that URL resolves against.
await build({
  ...common,
  entryPoints: [join(here, "node_modules/@cornerstonejs/dicom-image-loader/dist/esm/decodeImageFrameWorker.js")],
  outfile: join(out, "assets", "decodeImageFrameWorker.js"),
});
// The decoders load their WebAssembly with `new URL("@cornerstonejs/codec-x/decodewasm", import.meta.url)`:
// relative to the worker that is assets/@cornerstonejs/codec-x/decodewasm.
for (const [codec, name] of [
  ["codec-charls", "decodewasm"],
  ["codec-openjpeg", "decodewasm"],
  ["codec-libjxl", "decodewasm"],
  ["codec-libjpeg-turbo-8bit", "decodewasm"],
  ["codec-openjph", "wasm"],
]) {
  const target = join(out, "assets", "@cornerstonejs", codec);
  mkdirSync(target, { recursive: true });
  copyFileSync(require.resolve(`@cornerstonejs/${codec}/${name}`), join(target, name));
}
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src", "viewer.css"), join(out, "assets", "viewer.css"));
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const versions = Object.fromEntries(
  Object.entries(lock.packages)
    .filter(([path]) => /^node_modules\/@cornerstonejs\/(core|tools|dicom-image-loader)$/.test(path))
    .map(([path, info]) => [path.replace("node_modules/", ""), info.version]),
);
writeFileSync(join(out, "build.json"), JSON.stringify({ built: new Date().toISOString(), versions }, null, 1));
