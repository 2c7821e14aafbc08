// Runs the agent core's test cases under real MicroPython (WebAssembly port, npm package
// @micropython/micropython-webassembly-pyscript, pinned in package.json; install with `npm ci`).
//
// Copies agent/*.py and the shared case modules into the MicroPython VFS and runs tests/mpy/runner.py.
// The port exits 0 even after an uncaught Python exception, so success is ONLY the exact line
// `MPY-TESTS-OK <n>` printed by the runner; anything else exits 1.
//
// Usage: node tests/mpy/run.mjs [--case PATH ...] [test_name ...]
//   --case PATH  a case module to run instead of the agent core's (e.g. tests/auth/cases_cardreader.py); repeatable
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { lineSink, loadPort } from "./host.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
// Default case modules, shared with CPython pytest (tests/agent/test_core.py, test_journal.py,
// test_clock_reset.py, test_txjournal.py and test_reservation.py import the same ones).
const DEFAULT_CASES = [
  "cases_core.py",
  "cases_phase2.py",
  "cases_journal.py",
  "cases_clock_reset.py",
  "cases_txjournal.py",
  "cases_reservation.py",
].map((f) => join(root, "tests", "agent", f));
// Agent files that only run on CPython (the websocket port, the nfcpy reader backend).
const CPYTHON_ONLY = new Set(["port_cpython.py", "nfc_reader.py"]);

const argv = process.argv.slice(2);
const cases = [];
const only = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--case") cases.push(resolve(root, argv[++i]));
  else only.push(argv[i]);
}

const loadMicroPython = await loadPort(root);
const { lines, out, flush } = lineSink();
const mp = await loadMicroPython({ heapsize: 16 * 1024 * 1024, stdout: out, stderr: out, linebuffer: false });

mp.FS.mkdir("/agent");
for (const f of readdirSync(join(root, "agent"))) {
  if (f.endsWith(".py") && !CPYTHON_ONLY.has(f)) {
    mp.FS.writeFile(`/agent/${f}`, readFileSync(join(root, "agent", f)));
  }
}
mp.FS.mkdir("/cases");
const modules = [];
for (const p of cases.length ? cases : DEFAULT_CASES) {
  if (!existsSync(p)) {
    console.error(`case module missing: ${p}`);
    process.exit(2);
  }
  const name = basename(p, ".py");
  mp.FS.writeFile(`/cases/${name}.py`, readFileSync(p));
  modules.push(name);
}
mp.FS.writeFile("/cases/agentfakes.py", readFileSync(join(root, "tests", "agent", "agentfakes.py")));
mp.FS.writeFile("/cases/runner.py", readFileSync(join(here, "runner.py")));

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
flush();
if (crashed) {
  console.error(`MicroPython crashed: ${crashed.message ?? crashed}`);
  process.exit(1);
}
const ok = lines.some((l) => /^MPY-TESTS-OK \d+$/.test(l));
process.exit(ok ? 0 : 1);
