#!/usr/bin/env bash
# Carry a stopped run of the cpu profile to another machine (runs/README.md).
#   runs/carry.sh pack WORKTREE              -> runs/cpu-state.tar.gz, runs/cpu-state.json
#   runs/carry.sh unpack WORKTREE ARCHIVE    (WORKTREE: a worktree at the recorded commit, set up)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=${1:?pack or unpack}
tree=$(cd "${2:?worktree}" && pwd)
state="$here/cpu-state.tar.gz" record="$here/cpu-state.json"
data=(data/cifar-10-batches-py data/cifar10-split.json)
settings=(--workflow-profile workflow/profiles/default --configfile config/cpu.yaml)

case "$mode" in
pack)
    cd "$tree"
    if pgrep -f "snakemake.*config/cpu.yaml" >/dev/null; then
        echo "carry.sh: the run is still going; stop it first" >&2
        exit 2
    fi
    tar -czf "$state" results/cpu .snakemake/metadata .snakemake/log
    python3 - "$record" "$tree" "${data[@]}" <<'PY'
import json, os, subprocess, sys
out, tree, *data = sys.argv[1:]
commit = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
times = {p: os.stat(os.path.join(tree, p)).st_mtime for p in data}
archive = json.load(open(os.path.join(tree, "data/cifar10-split.json"))).get("archive_md5")
json.dump({"commit": commit, "archive_md5": archive, "data_mtimes": times}, open(out, "w"), indent=1)
PY
    ls -l "$state" "$record"
    ;;
unpack)
    archive=$(cd "$(dirname "${3:?archive}")" && pwd)/$(basename "$3")
    cd "$tree"
    want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['commit'])" "$record")
    [ "$(git rev-parse HEAD)" = "$want" ] || { echo "carry.sh: $tree is not at the run's commit $want" >&2; exit 2; }
    . .venv/bin/activate
    snakemake "${settings[@]}" --config "data={archive: $archive, allow_md5_mismatch: true}" --until data
    python3 - "$record" "$tree" <<'PY'
import json, os, sys
record, tree = sys.argv[1:]
record = json.load(open(record))
made = json.load(open(os.path.join(tree, "data/cifar10-split.json"))).get("archive_md5")
if made != record["archive_md5"]:
    sys.exit(f"carry.sh: the data came from archive MD5 {made}, the run's from {record['archive_md5']}")
for path, mtime in record["data_mtimes"].items():
    for root, dirs, files in os.walk(os.path.join(tree, path)):
        for name in files:
            os.utime(os.path.join(root, name), (mtime, mtime))
    os.utime(os.path.join(tree, path), (mtime, mtime))
PY
    tar -xzf "$state"
    snakemake --unlock "${settings[@]}" --config "data={archive: $archive, allow_md5_mismatch: true}"
    echo "restored; run: snakemake ${settings[*]} --config 'data={archive: $archive, allow_md5_mismatch: true}'"
    ;;
*)
    echo "usage: carry.sh pack WORKTREE | unpack WORKTREE ARCHIVE" >&2
    exit 2
    ;;
esac
