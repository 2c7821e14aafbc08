// Runs tests/auth/cases_cardreader.py under real MicroPython (the WebAssembly port pinned in package.json,
// installed by `npm ci`), with agent/compat.py and agent/cardreader.py in its VFS. Success is ONLY the
// runner's `MPY-TESTS-OK <n>` line (the port exits 0 even after an uncaught exception).
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const pkg = join(root, "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");
if (!existsSync(pkg)) {
  console.error(`MicroPython package missing (${pkg}): run \`npm ci\` in ${root}`);
  process.exit(2);
}
const { loadMicroPython } = await import(pathToFileURL(pkg).href);
const lines = [];
let partial = "";
const out = (data) => {
  const text = partial + (typeof data === "string" ? data : new TextDecoder().decode(data));
  const parts = text.split("\n");
  partial = parts.pop();
  for (const l of parts) {
    lines.push(l);
    console.log(l);
  }
};
const mp = await loadMicroPython({ heapsize: 8 * 1024 * 1024, stdout: out, stderr: out, linebuffer: false });
mp.FS.mkdir("/agent");
mp.FS.writeFile("/agent/__init__.py", "");
for (const f of ["compat.py", "cardreader.py"]) {
  mp.FS.writeFile(`/agent/${f}`, readFileSync(join(root, "agent", f)));
}
mp.FS.mkdir("/cases");
mp.FS.writeFile("/cases/cases_cardreader.py", readFileSync(join(here, "cases_cardreader.py")));
mp.FS.writeFile("/cases/runner.py", readFileSync(join(root, "tests", "mpy", "runner.py")));
let crashed = null;
try {
  mp.runPython(
    ["import sys", "sys.path.insert(0, '/cases')", "sys.path.insert(0, '/')", "import runner",
     "runner.main(['cases_cardreader'])"].join("\n"),
  );
} catch (e) {
  crashed = e;
}
if (partial) out("\n");
if (crashed) {
  console.error(`MicroPython crashed: ${crashed.message ?? crashed}`);
  process.exit(1);
}
process.exit(lines.some((l) => /^MPY-TESTS-OK \d+$/.test(l)) ? 0 : 1);
