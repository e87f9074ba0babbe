"""Runs code blocks one after the other in this process, as a reader would
paste them: each in a fresh namespace, in the current directory.

    python tests/readme_runner.py BLOCKS.json RESULTS.json

BLOCKS.json holds [{"name", "code", "check"}]: `check` (or null) runs after
the block in its namespace. RESULTS.json gets {name: {"seconds",
"cpu_seconds" (all threads), "error"}},
rewritten after every block, so a crash still leaves the blocks before it;
"error" is the traceback, or null.
"""

import json
import os
import sys
import time
import traceback


def main(blocks_path, results_path):
    with open(blocks_path) as file:
        blocks = json.load(file)
    results = {}
    for block in blocks:
        started, cpu_started = time.perf_counter(), time.process_time()
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(block["code"], block["name"], "exec"), namespace)
            if block["check"]:
                exec(compile(block["check"], block["name"] + " (check)", "exec"), namespace)
            error = None
        except BaseException:  # A block may even call sys.exit: report it.
            error = traceback.format_exc()
        result = {"seconds": round(time.perf_counter() - started, 2),
                  "cpu_seconds": round(time.process_time() - cpu_started, 2), "error": error}
        results[block["name"]] = result
        print(f"{block['name']}: {result['seconds']} s ({result['cpu_seconds']} s CPU)",
              "ok" if error is None else "FAILED", flush=True)
        with open(results_path + ".tmp", "w") as file:
            json.dump(results, file)
        os.replace(results_path + ".tmp", results_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
