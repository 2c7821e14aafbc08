// Runs the agent core's test cases under real MicroPython (WebAssembly port, npm package
// @micropython/micropython-webassembly-pyscript, pinned in package.json; install with `npm ci`).
//
// Copies agent/*.py and the shared case modules into the MicroPython VFS and runs tests/mpy/runner.py.
// The port exits 0 even after an uncaught Python exception, so success is ONLY the exact line
// `MPY-TESTS-OK <n>` printed by the runner; anything else exits 1.
//
// Usage: node tests/mpy/run.mjs [test_name ...]
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const pkg = join(root, "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");
if (!existsSync(pkg)) {
  console.error(`MicroPython package missing (${pkg}): run \`npm ci\` in ${root}`);
  process.exit(2);
}
// Case modules shared with CPython pytest (tests/agent/test_core.py imports the same ones).
const CASE_MODULES = ["cases_core", "cases_phase2"];
// Agent files that are not part of the portable core (CPython port, hardware drivers of other owners).
const NOT_CORE = new Set(["port_cpython.py", "cardreader.py", "nfc_reader.py"]);

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
const mp = await loadMicroPython({ heapsize: 16 * 1024 * 1024, stdout: out, stderr: out, linebuffer: false });

mp.FS.mkdir("/agent");
for (const f of readdirSync(join(root, "agent"))) {
  if (f.endsWith(".py") && !NOT_CORE.has(f)) {
    mp.FS.writeFile(`/agent/${f}`, readFileSync(join(root, "agent", f)));
  }
}
mp.FS.mkdir("/cases");
const modules = [];
for (const m of CASE_MODULES) {
  const p = join(root, "tests", "agent", `${m}.py`);
  if (existsSync(p)) {
    mp.FS.writeFile(`/cases/${m}.py`, readFileSync(p));
    modules.push(m);
  }
}
mp.FS.writeFile("/cases/agentfakes.py", readFileSync(join(root, "tests", "agent", "agentfakes.py")));
mp.FS.writeFile("/cases/runner.py", readFileSync(join(here, "runner.py")));

const only = process.argv.slice(2);
let crashed = null;
try {
  mp.runPython(
    [
      "import sys",
      "sys.path.insert(0, '/cases')",
      "sys.path.insert(0, '/')",
      "import runner",
      `runner.main(${JSON.stringify(modules)}, ${only.length ? JSON.stringify(only) : "None"})`,
    ].join("\n"),
  );
} catch (e) {
  crashed = e;
}
if (partial) out("\n");
if (crashed) {
  console.error(`MicroPython crashed: ${crashed.message ?? crashed}`);
  process.exit(1);
}
const ok = lines.some((l) => /^MPY-TESTS-OK \d+$/.test(l));
process.exit(ok ? 0 : 1);
