#!/usr/bin/env bash
# Fetch the wheels the GPU check needs on a lent GPU machine (Python 3.12, manylinux x86_64, no
# registry there) into .whl/ at the repository root: benchmarks/gpu-wheels.txt, one name==version
# a line. A package with no wheel of its own (pure Python sdist only) is built into one here.
# Then carry .whl/ with the call (docs/performance.md, "The GPU check").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
    platforms+=(--platform "$p")
done
grep -v '^#' benchmarks/gpu-wheels.txt | while read -r spec; do
    [ -n "$spec" ] || continue
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$spec" 2>/dev/null; then
        python3 -m pip wheel -q --no-deps -w .whl "$spec"   # pure Python: a wheel built here works there
    fi
done
# pyautoattack's wheel carries a 44 MB example model (examples/model_test.pt): not code, and the
# check never loads it; dropped so that .whl/ fits the 64 MiB a call may carry.
python3 - .whl/pyautoattack-*.whl <<'PY'
import sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i.filename)) for i in src.infolist() if "/examples/" not in i.filename]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
    for info, data in items:
        if info.filename.endswith("RECORD"):
            data = b"".join(line + b"\n" for line in data.splitlines() if b"/examples/" not in line)
        dst.writestr(info, data)
PY
du -sh .whl
