// Shared by the Node drivers that run agent code under real MicroPython (tests/mpy/run.mjs,
// bench/mpy_ram_run.mjs): the pinned WebAssembly port (`npm ci` installs it) and line-wise output capture.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// The port's loadMicroPython, or exit 2 with what to run when the package is missing.
export async function loadPort(root) {
  const pkg = join(root, "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs");
  if (!existsSync(pkg)) {
    console.error(`MicroPython package missing (${pkg}): run \`npm ci\` in ${root}`);
    process.exit(2);
  }
  return (await import(pathToFileURL(pkg).href)).loadMicroPython;
}

// The port hands stdout over in arbitrary pieces: `out` echoes and collects whole lines, `flush()` ends a last
// partial line, `lines` holds every line seen.
export function lineSink() {
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
  const flush = () => {
    if (partial) out("\n");
  };
  return { lines, out, flush };
}
