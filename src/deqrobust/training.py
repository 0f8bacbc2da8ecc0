"""Training: standard, PGD-AT or FGSM-AT, dev-split model selection, exact resume.

Every random draw comes from something a resume restores: data order and augmentation
from (seed, epoch), attack starts, Jacobian-regularised iterations and
their budget jitter from (seed, stream, iteration) (deqrobust.seeds), dropout masks and Hutchinson probes from the
global torch RNG whose state is saved in ``resume.pt``. A run killed at any moment and
restarted therefore ends with the same metrics and weights as an uninterrupted run.
``checkpoint.pt`` is written once, when the training has finished, from the best weights
kept in ``resume.pt``: a model folder that holds ``resume.pt`` is unfinished, and every
consumer (``load_checkpoint``) refuses its checkpoint.
At every selection point the current weights are also kept as a snapshot
(``snapshots/iter-<iteration>.pt``), and the finished training lists them with their MD5 in
``snapshots.json``: the training-dynamics analysis (deqrobust.trajectory) reads them. Snapshots
are not outputs a workflow manager deletes before a resumed job, so a resume keeps them.
Model selection uses the dev split only; the test set is scored once, for the summary.

Under ``torchrun`` the loop runs data-parallel (``deqrobust.distributed`` explains how:
explicit gradient averaging, sharded global batches, rank 0 alone evaluates and writes).
``training.amp`` runs the training forward and loss under bfloat16 autocast (CUDA only).
An adversarially trained DEQ pretrains on clean images and is attacked from the first
iteration after pretraining, as the authors' code (``training.adv_during_pretraining: true``
attacks the pretraining network too).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deqrobust import data, distributed, provenance, seeds
from deqrobust.atomic import torch_load, torch_save, unreadable, write_json, write_text
from deqrobust.attacks.pgd import pgd
from deqrobust.checkpoint import RESUME, SNAPSHOTS_FORMAT, load_checkpoint, save_checkpoint
from deqrobust.data import md5_of
from deqrobust.deq_logits import DEQLogits
from deqrobust.device import resolve_device
from deqrobust.errors import ConfigError
from deqrobust.estimators import build_estimator, model_estimator
from deqrobust.instances import identity, instance_config, model_spec
from deqrobust.models import build_model
from deqrobust.protocol import is_deq
from deqrobust.slices import settings, train_slice
from deqrobust.solvers import solvers_of

RESUME_FORMAT = "deqrobust-resume/1"
SNAPSHOT_DIR, SNAPSHOT_MANIFEST = "snapshots", "snapshots.json"
# Every finished training of a model folder stays in finished/<key>/ (hard links, no extra disk),
# keyed by its train slice and the training code: Snakemake removes a job's outputs before it
# reruns it, so a rerun that does not finish (Ctrl-C after a config change) would otherwise lose
# the finished model; with the old config back, the rerun restores it instead of training.
FINISHED = "finished"
FINISHED_FILES = ("checkpoint.pt", "metrics.csv", "summary.json", SNAPSHOT_MANIFEST)
OTHER_RESUME = "resume-other-config.pt"  # resume.pt of an interrupted run of another config, set aside
COLUMNS = (
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "dev_loss",
    "dev_clean_acc",
    "dev_robust_acc",
    "dev_solver_steps",
    "dev_rel_residual",
)


class Trainer:
    """One model of a config, trained into ``out``; ``run()`` resumes from ``out/resume.pt`` if present."""

    def __init__(self, cfg: dict, name: str, out: str | Path):
        cfg = instance_config(cfg, name)  # a seed instance trains with its own seed
        self.cfg, self.out = cfg, Path(out)
        self.spec = model_spec(cfg, name)
        self.tc = self.spec["training_config"]
        self.solver, self.backward_solver = solvers_of(cfg)
        self.dist, self.device = distributed.setup(self.tc["distributed_backend"], resolve_device(cfg))
        self.amp = self.tc["amp"]
        if self.amp and self.device.type != "cuda":
            raise ConfigError(
                f"training.amp=true needs CUDA (this run is on {self.device}); "
                "mixed precision is not supported on the CPU, set training.amp=false"
            )
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        self.model = build_model(self.spec).to(self.device)
        if self.dist.active:
            distributed.broadcast_state(self.model)
        self.deq = is_deq(self.model)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.tc["lr"], weight_decay=self.tc["weight_decay"]
        )
        self.x_dev, self.y_dev = data.load_split(cfg, "dev")
        n_dev = self.tc["select"]["dev_examples"]
        if n_dev is not None:
            self.x_dev, self.y_dev = self.x_dev[:n_dev], self.y_dev[:n_dev]
        self.n_train = len(data.split_uint8(cfg, "train")[1])
        self.per_epoch = data.num_batches(self.n_train, self.tc["batch_size"])
        self.total = math.ceil(round(self.tc["epochs"] * self.per_epoch, 6))
        self.eval_every = max(1, round(self.tc["select"]["every_epochs"] * self.per_epoch))
        self.fingerprint = settings(train_slice(cfg, name))  # what resume.pt must match: the train rule's slice
        self.state = {
            "iteration": 0,
            "metrics": [],
            "best": None,
            "loss_sum": 0.0,
            "loss_count": 0,
            "wall_seconds": 0.0,
            "train_seconds": 0.0,
            "snapshots": [],
        }
        self.best_weights: dict | None = None

    # ---- the model under the estimators of training -------------------------------------
    def net(self, pretraining: bool = False, budget: int | None = None, jac_probes: int = 0) -> nn.Module:
        """The module trained or attacked: the DEQ under its training estimator (or the
        pretraining unroll: f applied pretrain_unroll times from z = 0), a baseline as is."""
        if not self.deq:
            return self.model
        solver = self.solver if budget is None else self.solver.with_budget(budget)
        if pretraining:
            est = build_estimator({"name": "intermediate", "lam": 1.0, "k": self.tc["pretrain_unroll"] - 1})
            return DEQLogits(self.model, est, state=0, solver=solver)
        return DEQLogits(
            self.model,
            model_estimator(self.spec, self.tc),
            solver=solver,
            backward_solver=self.backward_solver,
            jac_probes=jac_probes,
        )

    def lr(self, iteration: int) -> float:
        """Cosine decay per iteration from lr to lr_min over the whole run."""
        lo, hi = self.tc["lr_min"], self.tc["lr"]
        return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * iteration / self.total))

    def adversarial(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """PGD-AT or FGSM-AT inputs, made in eval mode (FGSM-RS is one PGD step of fgsm_step from a random start)."""
        adv = self.tc["adv"]
        net.eval()
        if self.spec["training"] == "pgd":
            x_adv = pgd(net, x, y, adv["eps_255"] / 255, adv["step_255"] / 255, adv["steps"], generator=gen)
        else:
            x_adv = pgd(net, x, y, adv["eps_255"] / 255, adv["fgsm_step_255"] / 255, 1, generator=gen)
        return x_adv.detach()

    def step(self, iteration: int, x: torch.Tensor, y: torch.Tensor) -> float:
        gen = seeds.generator(self.cfg["seed"], seeds.TRAIN_ATTACK, iteration, device=self.device)
        pretraining = self.deq and iteration < self.tc["pretrain_iters"]
        jac = self.tc["jac_reg"]
        regularise = (
            self.deq
            and not pretraining
            and iteration / self.per_epoch < jac["stop_epoch"]
            and jac["weight"] > 0
            and torch.rand((), generator=gen, device=self.device).item() < jac["freq"]
        )
        budget = None
        if regularise:
            low, high = jac["budget_jitter"]
            jitter = int(torch.randint(low, high + 1, (), generator=gen, device=self.device))
            budget = max(1, self.solver.budget + jitter)
        if self.spec["training"] != "standard" and (not pretraining or self.tc["adv_during_pretraining"]):
            x = self.adversarial(self.net(pretraining), x, y, gen)
        net = self.net(pretraining, budget, jac["probes"] if regularise else 0)
        net.train()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
            loss = F.cross_entropy(net(x), y)
            total = loss + jac["weight"] * net.stats["jac_loss"] if regularise else loss
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if not self.dist.active:
            self.optimizer.step()
            return loss.item()
        # data parallel: average the shard gradients (= gradient of the global-batch mean),
        # then keep BatchNorm running statistics equal to rank 0's
        (mean_loss,) = distributed.average_gradients(self.model, self.dist.world_size, loss)
        self.optimizer.step()
        distributed.broadcast_state(self.model, buffers_only=True)
        return mean_loss

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, iteration: int, attack: bool = True) -> dict:
        """Loss, clean and PGD accuracy, and (DEQs) mean solver steps and final residual."""
        net = self.net()
        net.eval()
        gen = seeds.generator(self.cfg["seed"], seeds.DEV_EVAL, iteration, device=self.device)
        adv = self.tc["adv"]
        sums = {"loss": 0.0, "clean": 0, "robust": 0, "steps": 0.0, "residual": 0.0}
        for xb, yb in data.batches(x, y, self.tc["eval_batch_size"]):
            xb, yb = xb.to(self.device), yb.to(self.device)
            with torch.no_grad():
                logits = net(xb)
            sums["loss"] += F.cross_entropy(logits, yb, reduction="sum").item()
            sums["clean"] += (logits.argmax(1) == yb).sum().item()
            if self.deq:
                result = net.stats["result"]
                sums["steps"] += result.steps.float().sum().item()
                sums["residual"] += result.final_rel.sum().item()
            if attack:
                x_adv = pgd(
                    net,
                    xb,
                    yb,
                    adv["eps_255"] / 255,
                    adv["step_255"] / 255,
                    self.tc["select"]["pgd_steps"],
                    generator=gen,
                )
                with torch.no_grad():
                    sums["robust"] += (net(x_adv).argmax(1) == yb).sum().item()
        n = len(y)
        return {
            "loss": sums["loss"] / n,
            "clean_acc": sums["clean"] / n,
            "robust_acc": sums["robust"] / n if attack else None,
            "solver_steps": sums["steps"] / n if self.deq else None,
            "rel_residual": sums["residual"] / n if self.deq else None,
        }

    # ---- outputs and resume ----------------------------------------------------------------
    def write_metrics(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.state["metrics"]:
            writer.writerow({k: "" if row[k] is None else repr(row[k]) for k in COLUMNS})
        write_text(self.out / "metrics.csv", buf.getvalue())

    def record(self, iteration: int) -> None:
        """Dev evaluation at ``iteration``: a metrics row, and the best weights if they improved, kept
        for ``resume.pt`` and the final checkpoint (rank 0 only; the other ranks of a data-parallel
        run wait for it)."""
        st = self.state
        if not self.dist.is_main:
            st["loss_sum"], st["loss_count"] = 0.0, 0
            self.dist.barrier()
            return
        row = {
            "epoch": iteration / self.per_epoch,
            "iteration": iteration,
            "lr": self.lr(iteration),
            "train_loss": st["loss_sum"] / max(st["loss_count"], 1),
            **{f"dev_{k}": v for k, v in self.evaluate(self.x_dev, self.y_dev, iteration).items()},
        }
        st["metrics"].append(row)
        st["loss_sum"], st["loss_count"] = 0.0, 0
        self.write_metrics()
        score = row["dev_clean_acc"] if self.spec["training"] == "standard" else row["dev_robust_acc"]
        if st["best"] is None or score > st["best"]["score"]:
            st["best"] = {"score": score, "row": row}
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.snapshot(iteration, row)
        tqdm.write(
            f"epoch {row['epoch']:.2f}: train loss {row['train_loss']:.4f}, dev clean {row['dev_clean_acc']:.3f}, "
            f"dev PGD-{self.tc['select']['pgd_steps']} {row['dev_robust_acc']:.3f}"
        )
        self.dist.barrier()

    def snapshot(self, iteration: int, row: dict) -> None:
        """Keep the current weights of this selection point (rank 0)."""
        name = f"iter-{iteration:07d}.pt"
        save_checkpoint(self.out / SNAPSHOT_DIR / name, self.model, self.spec, row["epoch"], row, self.cfg["profile"])
        kept = [s for s in self.state["snapshots"] if s["iteration"] != iteration]  # a resume may redo one
        self.state["snapshots"] = [*kept, {"iteration": iteration, "epoch": row["epoch"], "file": name}]

    def write_snapshots(self) -> None:
        """``snapshots.json``: every selection point's weights, in order, with their MD5 (a file
        left by an earlier run is overwritten or not listed). ``pretrain_iters``: the
        iterations of unrolled pretraining (DEQs), so readers can skip snapshots made during it."""
        entries = [
            {**s, "md5": md5_of(self.out / SNAPSHOT_DIR / s["file"])}
            for s in sorted(self.state["snapshots"], key=lambda s: s["iteration"])
        ]
        write_json(
            self.out / SNAPSHOT_MANIFEST,
            {
                "format": SNAPSHOTS_FORMAT,
                "model": self.spec["name"],
                "profile": self.cfg["profile"],
                "folder": SNAPSHOT_DIR,
                "iterations_per_epoch": self.per_epoch,
                "pretrain_iters": self.tc["pretrain_iters"] if self.deq else 0,
                "snapshots": entries,
            },
        )

    def write_checkpoint(self) -> None:
        row = self.state["best"]["row"]
        save_checkpoint(
            self.out / "checkpoint.pt", self.best_weights, self.spec, row["epoch"], row, self.cfg["profile"]
        )

    def save_resume(self) -> None:
        """Rank 0 writes ``resume.pt`` (with every rank's RNG states in a data-parallel run)."""
        np_state = np.random.get_state()
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        }
        ranks = self.dist.gather_objects(rng) if self.dist.active else None
        if self.dist.is_main:
            saved = {
                "format": RESUME_FORMAT,
                "fingerprint": self.fingerprint,
                "state": self.state,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best_weights": self.best_weights,
                "rng": rng,
            }
            if ranks is not None:
                saved["rng_ranks"] = ranks
            torch_save(saved, self.out / RESUME)
        self.dist.barrier()

    def load_resume(self) -> None:
        """Continue from ``resume.pt``; ``metrics.csv`` is rewritten from it, because a workflow
        manager may delete the outputs of an interrupted job before rerunning it."""
        path = self.out / RESUME
        try:
            saved = torch_load(path)
        except Exception as err:  # damaged by a full disk, a failed copy, ...: the run cannot continue from it
            raise ConfigError(
                f"{path} cannot be read: {unreadable(path, err)}. It holds the unfinished training "
                f"of {self.spec['name']!r} and nothing else: delete it to restart this training from "
                "scratch (finished models and cells are other files and stay intact)"
            ) from err
        if (
            not isinstance(saved, dict)
            or saved.get("format") != RESUME_FORMAT
            or saved.get("fingerprint") != self.fingerprint
        ):
            raise ConfigError(
                f"{path} was written by a run with another config or model; "
                "delete it (or the whole folder) to start over"
            )
        self.state = {"snapshots": [], **saved["state"]}  # resume state written before snapshots existed
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.best_weights = saved["best_weights"]
        if self.state["metrics"] and self.dist.is_main:
            self.write_metrics()
        rng = saved["rng"]
        if len(saved.get("rng_ranks") or ()) == self.dist.world_size:
            rng = saved["rng_ranks"][self.dist.rank]  # same world size: each rank continues its own streams
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))

    def summarise(self) -> dict:
        """Test clean accuracy of the selected checkpoint (read back from disk) and run statistics."""
        self.model, meta = load_checkpoint(
            self.out / "checkpoint.pt", self.device, expect_arch=self.spec, partial_ok=True
        )  # resume.pt goes once the summary is written
        x_test, y_test = data.load_split(self.cfg, "test")
        test = self.evaluate(x_test, y_test, self.total, attack=False)
        st = self.state
        images = self.total * self.tc["batch_size"]
        summary = {
            "model": self.spec["name"],
            **identity(self.cfg, self.spec["name"]),
            "profile": self.cfg["profile"],
            "spec": meta["spec"],
            "best_epoch": meta["epoch"],
            "dev": st["best"]["row"],
            "selected_by": "dev_clean_acc" if self.spec["training"] == "standard" else "dev_robust_acc",
            "test_clean_acc": test["clean_acc"],
            "test_examples": len(y_test),
            "iterations": self.total,
            "epochs": self.total / self.per_epoch,
            "wall_seconds": st["wall_seconds"],
            "train_images_per_second": images / max(st["train_seconds"], 1e-9),
            "machine": provenance.machine(),  # the last stretch's, after a resume on another machine
        }
        write_json(self.out / "summary.json", summary)
        return summary

    # ---- finished trainings kept ----------------------------------------------------------
    def finished_store(self) -> Path:
        """finished/<key>: the key hashes this training's slice and the code of `deqrobust train`."""
        from deqrobust.codeprint import command_fingerprint

        key = hashlib.sha256((self.fingerprint + command_fingerprint("train")).encode()).hexdigest()[:16]
        return self.out / FINISHED / key

    def keep_finished(self) -> None:
        """Hard-link the finished outputs and snapshots into finished_store (complete or absent:
        assembled beside it, then renamed)."""
        store = self.finished_store()
        if store.is_dir():
            shutil.rmtree(store)
        partial = store.with_name(store.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / SNAPSHOT_DIR).mkdir(parents=True)
        for name in FINISHED_FILES:
            _link(self.out / name, partial / name)
        for entry in self.state["snapshots"]:
            _link(self.out / SNAPSHOT_DIR / entry["file"], partial / SNAPSHOT_DIR / entry["file"])
        partial.rename(store)

    def resume_is_mine(self) -> bool:
        """Whether ``resume.pt`` exists and is an unfinished run of this very training."""
        try:
            saved = torch_load(self.out / RESUME)
        except Exception:  # absent or unreadable: load_resume names a damaged one when it is used
            return (self.out / RESUME).is_file()
        return isinstance(saved, dict) and saved.get("fingerprint") == self.fingerprint

    def restore_finished(self) -> dict | None:
        """The summary of this very training, put back from finished_store, or None when there is none."""
        store = self.finished_store()
        if not all((store / name).is_file() for name in FINISHED_FILES):
            return None
        manifest = json.loads((store / SNAPSHOT_MANIFEST).read_text())
        (self.out / SNAPSHOT_DIR).mkdir(exist_ok=True)
        for entry in manifest["snapshots"]:
            _link(store / SNAPSHOT_DIR / entry["file"], self.out / SNAPSHOT_DIR / entry["file"])
        for name in FINISHED_FILES:  # checkpoint.pt, the completion mark of the folder, last but one
            _link(store / name, self.out / name)
        return json.loads((self.out / "summary.json").read_text())

    def run(self) -> dict | None:
        """Train to the end; the summary (None on the ranks > 0 of a data-parallel run). A training
        finished before in this folder with the same slice and code is restored, not redone."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main and not self.dist.active and not self.resume_is_mine():
            restored = self.restore_finished()
            if restored is not None:
                if (self.out / RESUME).is_file():  # an interrupted training of another config: kept aside
                    os.replace(self.out / RESUME, self.out / OTHER_RESUME)
                tqdm.write(f"{self.spec['name']}: restored the finished training from {self.finished_store()}")
                return restored
        if (self.out / RESUME).is_file():
            self.load_resume()
        self.dist.barrier()  # every rank has read resume.pt before rank 0 may rewrite it
        st = self.state
        started = time.perf_counter()
        bar = tqdm(
            total=self.total,
            initial=st["iteration"],
            desc=f"train {self.spec['name']}",
            unit="it",
            disable=not self.dist.is_main,
        )
        while st["iteration"] < self.total:
            epoch, start = divmod(st["iteration"], self.per_epoch)
            for x, y in data.train_loader(
                self.cfg, self.tc["batch_size"], self.cfg["seed"], epoch, start, self.dist.rank, self.dist.world_size
            ):
                tick = time.perf_counter()
                st["loss_sum"] += self.step(st["iteration"], x.to(self.device), y.to(self.device))
                st["loss_count"] += 1
                st["iteration"] += 1
                st["train_seconds"] += time.perf_counter() - tick
                it = st["iteration"]
                bar.update()
                bar.set_postfix(epoch=f"{it / self.per_epoch:.2f}", loss=f"{st['loss_sum'] / st['loss_count']:.3f}")
                evaluate = it % self.eval_every == 0 or it == self.total
                if evaluate:
                    self.record(it)
                if evaluate or it % self.tc["checkpoint_every_iters"] == 0 or it % self.per_epoch == 0:
                    st["wall_seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save_resume()
                if it == self.total:
                    break
        bar.close()
        st["wall_seconds"] += time.perf_counter() - started
        summary = None
        if self.dist.is_main:
            self.write_checkpoint()  # the selected model, now that the training has finished
            self.write_snapshots()
            summary = self.summarise()
            self.keep_finished()
            (self.out / RESUME).unlink(missing_ok=True)
        self.dist.barrier()
        return summary


def _link(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (replacing it atomically; a copy where links fail)."""
    temporary = target.with_name(f".{target.name}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)


def train(cfg: dict, name: str, out: str | Path) -> dict | None:
    """Train one model; under torchrun every rank calls this, rank 0 returns the summary."""
    try:
        return Trainer(cfg, name, out).run()
    finally:
        distributed.shutdown()
