// Parse each file named on the command line (one mermaid diagram each) with the real mermaid
// parser; mermaid needs a DOM, which jsdom gives. Prints ok/FAIL per file, exits 1 on any FAIL.
// Usage: node check.mjs INSTALL_DIR FILE...   (INSTALL_DIR holds node_modules: .tools/mermaid)
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [home, ...files] = process.argv.slice(2);
const require = createRequire(join(home, "package.json"));
const { JSDOM } = require("jsdom");
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const modules = join(home, "node_modules", "mermaid");
const entry = JSON.parse(readFileSync(join(modules, "package.json"), "utf8")).module;
const { default: mermaid } = await import(pathToFileURL(join(modules, entry)).href);
mermaid.initialize({ startOnLoad: false });
let failed = 0;
for (const path of files) {
  try {
    const result = await mermaid.parse(readFileSync(path, "utf8"));
    console.log(`ok ${path} ${result.diagramType}`);
  } catch (error) {
    failed++;
    const text = String(error.message || error).split("\n").slice(0, 6).join(" | ");
    console.log(`FAIL ${path}: ${text}`);
  }
}
process.exit(failed ? 1 : 0);
