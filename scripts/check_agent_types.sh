#!/usr/bin/env bash
# Type-check the portable agent core against MicroPython's own stubs (not CPython's typeshed).
#
# micropython-stdlib-stubs is a custom typeshed (site-packages/stdlib + VERSIONS): mypy gets it with
# custom_typeshed_dir. micropython-unix-stubs (and the stdlib stubs' helper package _mpy_shed) install loose
# top-level modules into site-packages, which mypy does not search; they are linked into a temporary
# mypy_path directory, and errors inside those third-party stubs are ignored.
# port_cpython.py (CPython-only) and the card-reader drivers (other owner, CPython-only) are not checked here.
#
# Usage: scripts/check_agent_types.sh            (PYTHON=... to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -f "$SITE/stdlib/VERSIONS" ]; then
  echo "micropython-stdlib-stubs not installed in $SITE: pip install -e '.[dev]'" >&2
  exit 2
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$SITE" "$WORK" "$PWD/.mypy_cache/agent-micropython" <<'PYEOF'
import importlib.metadata as md
import os
import sys

site, work, cache = sys.argv[1:]
stubs = os.path.join(work, "stubs")
modules = set()
for dist in ("micropython-unix-stubs", "micropython-stdlib-stubs"):
    for f in md.distribution(dist).files or []:
        p = str(f)
        if not p.endswith(".pyi") or ".dist-info" in p or p.startswith("stdlib/") or p == "__builtins__.pyi":
            continue
        dst = os.path.join(stubs, p)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.path.join(site, p), dst)
        modules.add(p.split("/")[0].removesuffix(".pyi"))
with open(os.path.join(work, "mypy.ini"), "w") as ini:
    ini.write(
        "[mypy]\n"
        f"custom_typeshed_dir = {site}\n"
        f"mypy_path = {stubs}\n"
        f"cache_dir = {cache}\n"
        "check_untyped_defs = True\n"
        "disallow_incomplete_defs = True\n"
        "no_implicit_optional = True\n"
        "strict_equality = True\n"
        "warn_redundant_casts = True\n"
        "warn_unused_ignores = True\n"
        "\n"
        f"[mypy-{','.join(sorted(m + '.*' for m in modules) + sorted(modules))}]\n"
        "ignore_errors = True\n"
    )
PYEOF
FILES=()
for f in agent/*.py; do
  case "$(basename "$f")" in
    port_cpython.py | cardreader.py | nfc_reader.py) ;;
    *) FILES+=("$f") ;;
  esac
done
"$PY" -m mypy --config-file "$WORK/mypy.ini" "${FILES[@]}"
