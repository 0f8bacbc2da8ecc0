"""``deqrobust import``: the authors' checkpoint files onto our MDEQ, checked against their numbers.

tests/fixtures/authors-mdeq-large.json was made by running the authors' code: their
MDEQ-LARGE state-dict keys (order, shapes), a recipe that regenerates every tensor from a
seed, two input images, and what their model computes with those weights in float64.
The parity test runs the product path (imported checkpoint, DEQLogits with the ``exact``
estimator) on each image alone, as the fixture was made.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import AUTHORS_FILES, write_authors_file

from deqrobust import cli
from deqrobust.atomic import torch_load
from deqrobust.authors import import_checkpoint, ours_from_theirs, theirs_from_ours, to_ours
from deqrobust.checkpoint import load_checkpoint
from deqrobust.data import md5_of
from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import Exact, Unroll, build_estimator, model_estimator
from deqrobust.models import build_model
from deqrobust.models.mdeq import MDEQ
from deqrobust.scoring import all_state_logits

# The fixture's "forward" and "input_gradient" settings (checked against its text below).
SOLVER = {"name": "broyden", "budget": 8, "tol": 1e-3}
BACKWARD_SOLVER = {"name": "broyden", "budget": 7, "tol": 1e-3}
TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def imported(tmp_path_factory, their_state) -> Path:
    folder = tmp_path_factory.mktemp("import")
    source = write_authors_file(folder, their_state, "final_state")
    out = folder / "checkpoint.pt"
    import_checkpoint(source, out, grad="exact", training="pgd", name="authors-large")
    source.unlink()
    return out


def float64_model(checkpoint: Path) -> MDEQ:
    """The imported model in float64 (load_checkpoint rebuilds in float32, the product's dtype)."""
    ckpt = torch_load(checkpoint)
    model = build_model(ckpt["spec"]).double().eval()
    model.load_state_dict(ckpt["state_dict"])
    return model


def test_fixture_settings_are_the_ones_used(authors):
    assert "Broyden, 8 steps, relative tolerance 1e-3" in authors["forward"]
    assert "each image run alone" in authors["forward"] and "h(f(z*))" in authors["forward"]
    assert "Broyden, 7 steps, relative tolerance 1e-3" in authors["input_gradient"]
    buffers = ("count", "running_mean", "running_var")
    assert sum(math.prod(t["shape"]) for t in authors["tensors"] if t["kind"] not in buffers) == authors["parameters"]


def test_every_tensor_of_theirs_maps_once_in_order(authors):
    theirs = [t["key"] for t in authors["tensors"]]
    ours = list(MDEQ("large").state_dict())
    assert [ours_from_theirs(key) for key in theirs] == ours
    assert [theirs_from_ours(key) for key in ours] == theirs


def test_logits_and_exact_input_gradients_match_the_authors(imported, authors):
    model = float64_model(imported)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    labels = torch.tensor([3, 8])
    expected_logits = torch.tensor(authors["expected"]["logits"], dtype=torch.float64)
    expected_grads = torch.tensor(authors["expected"]["input_gradient"], dtype=torch.float64)
    net = DEQLogits(model, build_estimator({"name": "exact"}), None, SOLVER, BACKWARD_SOLVER)
    for i in range(2):
        xi = x[i : i + 1].clone().requires_grad_()
        logits = net(xi)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels[i : i + 1]), xi)
        assert (logits[0] - expected_logits[i]).abs().max() < TOLERANCE
        assert (grad.flatten() - expected_grads[i]).abs().max() < TOLERANCE
        # The model's own output (the "final" defense) is the same map, without a graph.
        own = all_state_logits(model, x[i : i + 1], SOLVER, Exact())["final"]
        assert (own[0] - expected_logits[i]).abs().max() < TOLERANCE


def test_imported_checkpoint_loads_and_records_its_source(imported, their_state):
    model, meta = load_checkpoint(imported, "cpu", expect_arch={"arch": "mdeq", "size": "large"})
    spec = meta["spec"]
    assert {k: spec[k] for k in ("arch", "size", "training", "grad", "name")} == {
        "arch": "mdeq",
        "size": "large",
        "training": "pgd",
        "grad": "exact",
        "name": "authors-large",
    }
    assert spec["source"]["layout"] == "state_dict" and spec["source"]["prefix"] == ""
    assert spec["source"]["file"].endswith("final_state.pth.tar") and len(spec["source"]["md5"]) == 32
    assert math.isnan(meta["epoch"]) and meta["profile"] == "imported"
    # Every value arrives (float32 is the product's dtype; the checkpoint keeps theirs).
    for ours, value in model.state_dict().items():
        assert torch.equal(value, their_state[theirs_from_ours(ours)].to(value.dtype)), ours


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("layout", list(AUTHORS_FILES))
def test_each_file_layout_imports_to_the_same_checkpoint(tmp_path, imported, their_state, layout, prefix):
    source = write_authors_file(tmp_path, their_state, layout, prefix)
    out = tmp_path / "checkpoint.pt"
    spec = import_checkpoint(source, out, grad="unroll", training="standard")
    reference = torch_load(imported)["state_dict"]
    written = torch_load(out)
    assert list(written["state_dict"]) == list(reference)
    assert all(
        torch.equal(written["state_dict"][k], v) and written["state_dict"][k].dtype == v.dtype
        for k, v in reference.items()
    )
    assert written["spec"] == spec
    assert spec["source"] == {
        "file": str(source),
        "md5": md5_of(source),
        "layout": "checkpoint" if layout == "checkpoint" else "state_dict",
        "prefix": prefix,
        **(
            {"epoch": 220, "model": "mdeq", "perf": 0.5625, "train_global_steps": 114400}
            if layout == "checkpoint"
            else {}
        ),
    }
    assert written["epoch"] == 220.0 if layout == "checkpoint" else math.isnan(written["epoch"])
    # The gradient mode decides the model's own output.
    assert isinstance(model_estimator(spec, {"unroll": {"lam": 0.5, "k": 5}}), Unroll)
    source.unlink()  # 90 MB each: keep the kept temporary folders small
    out.unlink()


def test_missing_tensor_is_refused_by_name(their_state):
    state = dict(their_state)
    del state["fullstage.branches.2.blocks.0.gn1.bias"]
    with pytest.raises(ConfigError, match=r"missing tensor 'fullstage\.branches\.2\.blocks\.0\.gn1\.bias'"):
        to_ours(state)


def test_extra_tensor_is_refused_by_name(their_state):
    state = {**their_state, "fullstage.post_fuse_layers.0.gnorm.weight": torch.ones(32, dtype=torch.float64)}
    with pytest.raises(ConfigError, match=r"extra tensor 'fullstage\.post_fuse_layers\.0\.gnorm\.weight'"):
        to_ours(state)
    state = {**their_state, "fullstage_copy.branches.0.blocks.0.gn1.bias": torch.ones(160)}
    with pytest.raises(ConfigError, match=r"extra tensor 'fullstage_copy\.branches\.0\.blocks\.0\.gn1\.bias'"):
        to_ours(state)


def test_misshapen_tensor_is_refused_by_name(their_state):
    state = {**their_state, "incre_modules.1.0.conv2.weight": torch.zeros(28, 28, 5, 5, dtype=torch.float64)}
    with pytest.raises(
        ConfigError,
        match=r"tensor 'incre_modules\.1\.0\.conv2\.weight' has shape \[28, 28, 5, 5\]; "
        r"MDEQ-large needs \[28, 28, 3, 3\]",
    ):
        to_ours(state)
    state = {**their_state, "downsample.0.weight": torch.zeros(48, 3, 3, 3, dtype=torch.float64)}
    with pytest.raises(
        ConfigError,
        match=r"'downsample\.0\.weight' has shape \[48, 3, 3, 3\].*valid widths: 32 \(large\), "
        r"72 \(xl\)",
    ):
        to_ours(state)


def test_xl_is_told_from_large_by_the_tensors():
    """XL in their naming (our rules inverted: the fixture covers LARGE only) imports as XL."""
    ours = MDEQ("xl").state_dict()
    theirs = {theirs_from_ours(k): v for k, v in ours.items()}
    assert len(theirs) == len(ours) and [ours_from_theirs(k) for k in theirs] == list(ours)
    size, weights = to_ours(theirs)
    assert size == "xl" and all(weights[k] is v for k, v in ours.items())


class _Marker:
    """Unpickling it would create a file: the proof that nothing in the file runs."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pickled_object_is_refused_without_running_it(tmp_path, zipfile):
    marker = tmp_path / "marker"
    source = tmp_path / AUTHORS_FILES["checkpoint"]
    torch.save(
        {"epoch": 1, "state_dict": {"classifier.bias": torch.zeros(10)}, "perf": _Marker(marker)},
        source,
        _use_new_zipfile_serialization=zipfile,
    )
    with pytest.raises(
        ConfigError,
        match=r"it asks for (builtins|io)\.open, which loading without running code "
        r"from the file refuses\. Valid: checkpoint_<epoch>\.pth\.tar",
    ):
        import_checkpoint(source, tmp_path / "c.pt", "exact", "standard")
    assert not marker.exists() and not (tmp_path / "c.pt").exists()
    torch.load(source, weights_only=False)  # what unsafe loading would have done
    assert marker.exists()


def test_unreadable_and_wrong_content_are_refused(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ConfigError, match=r"cannot be imported: torch cannot read it"):
        import_checkpoint(junk, tmp_path / "c.pt", "exact", "standard")
    odd = tmp_path / "odd.pth.tar"
    torch.save({"epoch": 3, "weights": [1, 2]}, odd)
    with pytest.raises(ConfigError, match=r"entry 'epoch' is not a tensor but int"):
        import_checkpoint(odd, tmp_path / "c.pt", "exact", "standard")
    with pytest.raises(ConfigError, match=r"unknown gradient mode 'phantom'; valid: exact, unroll"):
        import_checkpoint(odd, tmp_path / "c.pt", "phantom", "standard")


def test_cli_imports_and_help_says_how_to_evaluate(tmp_path, their_state, capsys):
    source = write_authors_file(tmp_path, their_state, "model_best", "module.")
    out = tmp_path / "mine" / "checkpoint.pt"
    assert (
        cli.main(["import", str(source), "--grad", "unroll", "--training", "pgd", "--out", str(out), "--name", "mine"])
        == 0
    )
    assert "MDEQ-LARGE (pgd, grad unroll, name mine)" in capsys.readouterr().out
    assert torch_load(out)["spec"]["grad"] == "unroll"
    before = out.read_bytes()  # a second import over it is refused without --force
    assert cli.main(["import", str(source), "--grad", "exact", "--training", "pgd", "--out", str(out)]) == 2
    assert "already holds a checkpoint; give another --out, or add --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert cli.main(["import", str(source), "--grad", "exact", "--training", "pgd", "--out", str(out), "--force"]) == 0
    assert torch_load(out)["spec"]["grad"] == "exact"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["import", "--help"])
    text = capsys.readouterr().out
    assert "deqrobust evaluate" in text and "--grad {exact,unroll}" in text and "weights_only=True" in text
