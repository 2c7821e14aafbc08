"""Minimal test runner for MicroPython (no pytest there): runs every test_* function of the given modules.

Prints one PASS/FAIL line per test and, at the very end, either `MPY-TESTS-OK <n>` or
`MPY-TESTS-FAILED <failed>/<n>`. The Node harness (run.mjs) trusts only the OK line: the WebAssembly port
exits 0 even after an uncaught exception.
"""

import sys


def _print_exc(e):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e)  # MicroPython
    else:
        import traceback

        traceback.print_exception(e)


def main(modules, only=None):
    total = 0
    failed = []
    for name in modules:
        mod = __import__(name)
        names = sorted([n for n in dir(mod) if n.startswith("test_")])
        for n in names:
            fn = getattr(mod, n)
            if not callable(fn) or (only is not None and n not in only):
                continue
            total += 1
            try:
                fn()
            except Exception as e:  # report every failure, keep going
                failed.append(name + "." + n)
                print("FAIL " + name + "." + n + ": " + repr(e))
                _print_exc(e)
            else:
                print("PASS " + name + "." + n)
    if failed or total == 0:
        print("MPY-TESTS-FAILED " + str(len(failed)) + "/" + str(total))
        return False
    print("MPY-TESTS-OK " + str(total))
    return True
