"""Smoke test of the benchmark harness (the package benchmarks/bench) with tiny sizes:
every section's code path, no timings asserted."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the harness is a package beside the library, not installed with it

import benchmarks.bench as bench  # noqa: E402
from benchmarks.bench import memory, threads, timing, workflow  # noqa: E402


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(timing, "MIN_SAMPLE_S", 0.0)
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def tiny_settings(**kw) -> bench.Settings:
    base = dict(
        sizes=["mini"],
        large_size="mini",
        large_batch=2,
        batch=2,
        repeats=1,
        large_repeats=1,
        calib_batch=1,
        calib_channels=16,
        calib_size=8,
        budget=3,
        backward_budget=2,
        unroll_k=2,
        pgd_steps=1,
        train_pgd_steps=1,
        early_states=[1],
        memory_steps=[2],
        memory_size="mini",
        threads=1,
    )
    return bench.Settings(**{**base, **kw})


def test_in_process_sections_run_and_report(capsys):
    s = tiny_settings()
    report = bench.run(s, ["calibration", "large", "f_cost", "training", "evaluation", "early_stop"], echo=print)
    assert report["calibration"]["gflops"] > 0
    rows = report["large"]["rows"]
    assert set(rows) == {"conv_reference", "f", "forward", "forward_exact_input_grad"}
    assert rows["forward_exact_input_grad"]["gflop"] > rows["forward"]["gflop"] > rows["f"]["gflop"] > 0
    # 1 (f(z0)) + 3 solver steps + f(z*) + the backward's Jacobian graph
    assert report["large"]["f_applications_forward_grad"] == 1 + 3 + 1 + 1
    assert report["f_cost"]["sizes"]["mini"]["gflop_per_image"] > 0
    assert set(report["training"]["sizes"]["mini"]) == {"standard", "pgd", "fgsm"}
    assert report["training"]["step"] == "deqrobust.training.Trainer.step" and report["training"]["pgd_steps"] == 1
    assert all(v["images_per_s"] > 0 for v in report["evaluation"]["sizes"]["mini"].values())
    early = report["early_stop"]["sizes"]["mini"]
    assert early["rows"]["1"]["bound"] == pytest.approx((1 + 2 + 1) / (3 + 2 + 1))
    # applications of f in the forward: f(z0) + n steps + (K + 1); the full solve has N = 3 steps
    assert early["rows"]["1"]["f_calls_forward"] == 1 + 1 + 3 and early["f_calls_forward_final"] == 1 + 3 + 3
    text = capsys.readouterr().out
    assert "calibration" in text and "Trainer.step" in text
    json.dumps(report)  # serialisable


def test_memory_probe_measures_a_peak_in_process():
    result = memory.memory_probe(
        {
            "size": "mini",
            "batch": 2,
            "spec": {"name": "exact"},
            "state": None,
            "budget": 2,
            "backward_budget": 2,
            "threads": 1,
        }
    )
    assert result["peak_mb"] is None or result["peak_mb"] > 0


def test_memory_section_runs_the_probe_in_a_subprocess_of_the_package(monkeypatch):
    s = tiny_settings()
    monkeypatch.setattr(memory, "memory_configs", lambda s: [("exact", {"name": "exact"}, None, 2)])
    out = memory.memory(s)
    assert len(out["rows"]) == 1 and "error" not in out["rows"][0], out


def test_threading_probe_in_process():
    out = threads.threading_probe(
        {
            "large_size": "mini",
            "large_batch": 1,
            "size": "mini",
            "batch": 1,
            "budget": 2,
            "backward_budget": 2,
            "repeats": 1,
            "threads": 1,
        }
    )
    assert out["large_f"] > 0 and out["small_forward_grad"] > 0


SNAKEMAKE_LOG = """\
Building DAG of jobs...
[Wed Nov 25 07:40:08 2026]
localrule data:
    output: results/smoke/data/cifar10-split.json
    jobid: 2
    reason: Missing output files
[Wed Nov 25 07:40:12 2026]
Finished jobid: 2 (Rule: data)
1 of 3 steps (33%) done

[Wed Nov 25 07:40:12 2026]
localrule train:
    input: results/smoke/data/cifar10-split.json
    output: results/smoke/models/deq-std/checkpoint.pt
    jobid: 4
    wildcards: model=deq-std

[Wed Nov 25 07:40:12 2026]
localrule train:
    jobid: 3
    wildcards: model=deq-adv
[Wed Nov 25 07:40:40 2026]
Finished jobid: 4 (Rule: train)
[Wed Nov 25 07:41:31 2026]
Finished jobid: 3 (Rule: train)
"""


def test_workflow_times_from_a_snakemake_log_and_from_benchmark_files(tmp_path):
    log_dir = tmp_path / "run" / ".snakemake" / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "2026-11-25T074005.snakemake.log").write_text(SNAKEMAKE_LOG)
    out = workflow.workflow_times(tmp_path / "run")
    assert out["rules"]["data"]["total_s"] == 4
    assert out["rules"]["train"] == {"jobs": 2, "finished": 2, "total_s": 28 + 79, "median_s": 53.5, "max_s": 79}
    assert "no benchmark" in out["note"]

    bench_dir = tmp_path / "benchmarks"
    (bench_dir / "train").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench_dir / "train" / "deq-std.tsv").write_text(header + "12.5\t0:00:12\t900.1\t1\t1\t1\t0\t0\t50\t11\n")
    (bench_dir / "train" / "deq-adv.tsv").write_text(header + "20.5\t0:00:20\t1000.0\t1\t1\t1\t0\t0\t50\t19\n")
    out = workflow.workflow_times(bench_dir)
    assert out["source"] == "benchmark files" and out["rules"]["train"]["total_s"] == 33.0


def train_log(start: str, end: str, finished: bool = True) -> str:
    """A Snakemake log of one train job started at ``start``; at ``end`` it finishes, or
    (``finished=False``) another job's line stamps the log and the invocation stops."""
    last = "Finished jobid: 7 (Rule: train)" if finished else "Finished jobid: 9 (Rule: data)"
    return (
        f"[Wed Nov 25 {start} 2026]\nlocalrule train:\n    jobid: 7\n    wildcards: model=deq-std\n"
        f"[Wed Nov 25 {end} 2026]\n{last}\n"
    )


def test_a_stopped_and_resumed_job_counts_both_runs_and_the_invocations_sum(tmp_path):
    (tmp_path / "2026-11-25T080000.snakemake.log").write_text(train_log("08:00:00", "08:00:50", finished=False))
    (tmp_path / "2026-11-25T090000.snakemake.log").write_text(train_log("09:00:00", "09:00:30"))
    out = workflow.workflow_times(tmp_path)
    assert out["rules"]["train"]["total_s"] == 50 + 30  # ran 50 s (to the stop), then 30 s
    assert out["jobs"][0]["runs"] == 2
    assert out["wall_s"] == 50 + 30
    # a job finished twice is a rerun: the last run counts alone
    (tmp_path / "2026-11-25T100000.snakemake.log").write_text(train_log("10:00:00", "10:00:10"))
    assert workflow.workflow_times(tmp_path)["rules"]["train"]["total_s"] == 10


def test_jobs_section_times_a_profiles_work_units_against_the_convolutions(capsys):
    s = tiny_settings(profile_config=str(ROOT / "config" / "smoke.yaml"))
    report = bench.run(s, ["jobs"], echo=print)["jobs"]
    rows = report["rows"]
    trained = [k for k in rows if k.startswith("train ")]
    cells = [k for k in rows if k.startswith("cell ")]
    assert len(trained) == 3 and len(cells) == 1  # smoke: deq-std, deq-adv, one baseline; a DEQ's cell
    for k in trained + cells:
        assert rows[k]["gflop_per_image"] > 0 and rows[k]["images_per_s"] > 0
        assert rows[rows[k]["model_conv"]]["gflop"] > 0 and rows[k]["fraction_of_model_conv"] > 0
    # an adversarial step attacks first: more convolution work per image than a standard one
    assert rows["train deq-adv"]["gflop_per_image"] > rows["train deq-std"]["gflop_per_image"]
    assert 0 < report["ops"]["groups"]["convolution"] < 1 and report["ops"]["top"]
    assert "against the convolutions" in capsys.readouterr().out


def test_command_line_writes_json_and_prints_the_table(tmp_path, capsys):
    log_dir = tmp_path / ".snakemake" / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "a.snakemake.log").write_text(SNAKEMAKE_LOG)
    out = tmp_path / "bench.json"
    assert (
        bench.main(["--sections", "workflow", "--workflow-times", str(tmp_path), "--out", str(out), "--threads", "1"])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["format"] == "deqrobust-bench/1" and "train" in report["workflow"]["rules"]
    assert "workflow wall times" in capsys.readouterr().out


def test_unknown_section_is_named(capsys):
    with pytest.raises(ValueError, match="unknown bench section 'nope'.*calibration"):
        bench.run(tiny_settings(), ["nope"])
    with pytest.raises(SystemExit):
        bench.main(["--sections", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_gpu_check_reduced_form_runs_every_part_on_the_cpu(tmp_path, capsys):
    """The gpu check as CI runs it (``--sections gpu --gpu-form reduced``): every part's code path
    at tiny sizes, the CUDA-only ones reported as skipped with their reason, the JSON written as
    the parts end. Its full form is the same code at DEQ-Large's sizes on a GPU."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: run the full form (docs/performance.md)")
    out = tmp_path / "gpu.json"
    assert bench.main(["--sections", "gpu", "--gpu-form", "reduced", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["format"] == "deqrobust-bench/1"
    parts = report["gpu"]["parts"]
    assert list(parts) == ["tests", "parity", "throughput", "evaluation", "projection", "smoke"]
    tests = parts["tests"]  # tests/test_cuda.py: collected, each skipped without CUDA
    assert tests["status"] == "skipped" and tests["skipped"] == len(tests["cases"]) >= 5 and not tests["failed"]
    assert all("CUDA" in c["reason"] or "GPUs" in c["reason"] for c in tests["cases"])
    parity = parts["parity"]  # the comparison against a second CPU copy: bit-identical
    assert parity["status"] == "skipped" and parity["agree"] and parity["gradient_rel_diff"] == 0.0
    rows = parts["throughput"]["rows"]
    fp32 = rows["deq-pgd fp32"]
    assert fp32["status"] == "measured" and fp32["images_per_s"] > 0 and fp32["tflops"] > 0
    assert fp32["peak_memory_gib"] is None  # CUDA's allocator only
    bf16 = rows["deq-pgd bf16"]  # the Trainer's own refusal is the reason
    assert bf16["status"] == "skipped" and "training.amp=true needs CUDA" in bf16["reason"]
    assert rows["deq-pgd tf32"]["status"] == "skipped"
    # a PGD-AT step attacks first: more convolution work than a standard step
    assert fp32["gflop_per_step"] > rows["deq-std fp32"]["gflop_per_step"] > 0
    cells = parts["evaluation"]["rows"]
    assert {(c["estimator"], c["attack"]) for c in cells.values()} == {
        ("exact", "pgd"),
        ("solver_autograd", "pgd"),
        ("exact", "apgd-ce"),
    }
    projection = parts["projection"]  # the arithmetic over the paper profile's plan
    hours = projection["precisions"]["fp32"]["hours_per_rule"]
    assert set(hours) == {"train", "evaluate", "select_exit", "analyze", "trajectory"}
    assert all(v > 0 for v in hours.values()) and projection["cells"] > 100
    smoke = parts["smoke"]  # a dry run of the smoke workflow with the check's device
    assert smoke["dry_run"] and smoke["returncode"] == 0 and smoke["jobs"] > 20, smoke
    assert "device=cpu" in smoke["command"]
    assert report["gpu"]["status"] == "passed"
    text = capsys.readouterr().out
    assert "gpu check (reduced form" in text and "projected hours" in text


def test_host_section_counts_kernels_and_synchronisations_per_solver_step():
    h = bench.run(tiny_settings(), ["host"])["host"]
    # the forward: f(z0), 3 Broyden steps, f(z*) and the head: more kernels than 5 applications of f
    assert h["forward"]["top_level_ops"] > 5 * h["f"]["top_level_ops"] > 0
    assert h["f"]["syncs"] == 0  # f alone never reads the device
    assert h["syncs_per_forward_step"] >= 1  # the solver loop's stop decisions do
    assert h["attack_step"]["syncs"] > h["forward"]["syncs"]
    assert h["host_us_per_op"] > 0 and h["gflop_per_f_batch96"] > 0
