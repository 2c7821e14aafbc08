// One run of the agent RAM workload (bench/mpy_ram_workload.py) under real MicroPython (WebAssembly port,
// @micropython/micropython-webassembly-pyscript pinned in package.json), for bench/bench_agent_ram.py.
//
// Usage: node bench/mpy_ram_run.mjs --heap BYTES --params JSON [--mpy-dir DIR] [--import-only]
//   --heap       the GC heap the port starts with (loadMicroPython heapsize). The port adds heap areas when an
//                allocation does not fit (MICROPY_GC_SPLIT_HEAP_AUTO; it collects only between calls from
//                JavaScript): the result says whether that happened (`heap_grew`).
//   --mpy-dir    agent modules precompiled by mpy-cross (*.mpy) instead of the sources: no compiler at import
//   --import-only  stop after importing the agent core (the import's own heap need)
// The workload runs as one call from JavaScript per step (mpy_ram_workload.step()), so the port can collect
// garbage between steps: see mpy_ram_workload.py.
// Prints the MicroPython output: `RAM-MEMINFO start|end` each followed by micropython.mem_info() (the GC heap's
// size before the imports and after the run), and `RAM-RESULT <json>` (exit 1 without it).
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { lineSink, loadPort } from "../tests/mpy/host.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
// Agent files that only run on CPython, and the card reader (not imported by the core).
const SKIP = new Set(["port_cpython.py", "nfc_reader.py", "cardreader.py"]);

const argv = process.argv.slice(2);
let heap = 1024 * 1024;
let params = "{}";
let mpyDir = null;
let importOnly = false;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--heap") heap = parseInt(argv[++i], 10);
  else if (argv[i] === "--params") params = argv[++i];
  else if (argv[i] === "--mpy-dir") mpyDir = resolve(argv[++i]);
  else if (argv[i] === "--import-only") importOnly = true;
  else {
    console.error(`unknown argument ${argv[i]}`);
    process.exit(2);
  }
}
JSON.parse(params); // fail early on bad JSON

const loadMicroPython = await loadPort(root);
const { lines, out, flush } = lineSink();
const mp = await loadMicroPython({ heapsize: heap, stdout: out, stderr: out, linebuffer: false });

mp.FS.mkdir("/agent");
for (const f of readdirSync(join(root, "agent"))) {
  if (!f.endsWith(".py") || SKIP.has(f)) continue;
  const mod = f.slice(0, -3);
  // precompiled: the core's modules (hal.py, imported by the harness's fake HAL, stays a source)
  if (mpyDir !== null && existsSync(join(mpyDir, `${mod}.mpy`))) {
    mp.FS.writeFile(`/agent/${mod}.mpy`, readFileSync(join(mpyDir, `${mod}.mpy`)));
  } else {
    mp.FS.writeFile(`/agent/${f}`, readFileSync(join(root, "agent", f)));
  }
}
mp.FS.mkdir("/bench");
mp.FS.writeFile("/bench/agentfakes.py", readFileSync(join(root, "tests", "agent", "agentfakes.py")));
mp.FS.writeFile("/bench/mpy_ram_workload.py", readFileSync(join(here, "mpy_ram_workload.py")));

// The agent core's modules in dependency order, each imported by its own call from JavaScript: this port
// collects garbage only between such calls (see mpy_ram_workload.py), as a device could between modules.
const MODULES = [
  "agent.compat",
  "agent.ocppj",
  "agent.connector",
  "agent.configkeys",
  "agent.journal",
  "agent.localauth",
  "agent.txqueue",
  "agent.smartcharging",
  "agent.reservation",
  "agent.core",
];

let crashed = null;
try {
  mp.runPython("import micropython\nprint('RAM-MEMINFO start')\nmicropython.mem_info()");
  mp.runPython("import gc, sys\nsys.path.insert(0, '/bench')\nsys.path.insert(0, '/')\n_imp = []\n_t0 = gc.mem_free() + gc.mem_alloc()\ngc.collect()");
  for (const m of MODULES) {
    mp.runPython(`_imp.append(gc.mem_alloc())\nimport ${m}\ngc.collect()`);
  }
  mp.runPython("_imp.append(gc.mem_alloc())\ngc.collect()");
  if (importOnly) {
    mp.runPython(
      "import json\nprint('RAM-RESULT ' + json.dumps({'imports': _imp, 'heap_grew': gc.mem_free() + gc.mem_alloc() != _t0}))",
    );
  } else {
    mp.runPython(
      `import json, mpy_ram_workload as _w\n_w.setup(json.loads(${JSON.stringify(params)}), _imp)`,
    );
    const step = mp.globals.get("_w").step;
    while (step()) {
      // one workload step per call: the collection it asked for runs when it returns
    }
    mp.runPython("_w.finish()");
  }
  mp.runPython("print('RAM-MEMINFO end')\nmicropython.mem_info()");
} catch (e) {
  crashed = e;
}
flush();
if (crashed) {
  console.log(`RAM-CRASH ${JSON.stringify(String(crashed.message ?? crashed))}`);
}
process.exit(lines.some((l) => l.startsWith("RAM-RESULT ")) ? 0 : 1);
