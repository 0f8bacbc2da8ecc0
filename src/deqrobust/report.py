"""The reproduction report: each claim of the paper, the evidence that tests it, and a verdict.

Every verdict comes from a paired test fixed before any result was seen (``RULES``, and
docs/results.md "How a verdict is decided"), through ``deqrobust.stats``: a claim is *held*,
*did not hold*, *precondition absent* (measured), *underpowered* (the minimum detectable
effect at this n exceeds the smallest effect that matters) or *not tested* (the data the rule
needs are missing, and the reason says which). Comparisons of attacks or defenses read the
per-example outcomes (``results.merge_outcomes``), never two intervals or point estimates;
claim 1 reads per-sample residuals of the fixed-point analyses; claim 2's precondition their
gradient alignment; claim 3 the state chosen on the development split (``select-exit``).

A unit is one adversarially trained DEQ as trained with one seed (a model name carries its
seed when a profile has several). Within a unit, competing comparisons are Holm-adjusted
and any held one decides (``stats.combine(require="any")``); across units (seeds and models)
every unit must hold (``require="all"``, an intersection-union rule): the claims are about
adversarially trained DEQs, not one lucky run.

Claims 2-5 and the main table read the cells of the profile's solver setting only
(``results.profile_rows``). Cells a profile also runs under the authors' batch-coupled solver are
compared with the same cells per sample in the section "Batch coupling" (``coupling_pairs``,
``coupling_gaps``): paired tests as evidence of how much of an over-estimate the coupling makes,
no verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from deqrobust import aims, stats
from deqrobust.instances import model_spec
from deqrobust.queries import headline_metrics, main_columns, main_rows, state_order
from deqrobust.schema import read_yaml
from deqrobust.stats import (
    ALIGNED_COSINE,
    ALPHA,
    NOT_TESTED,
    SMALLEST_EFFECT,
    VERDICTS,
    Comparison,
    Precondition,
    Verdict,
)
from deqrobust.tabular import markdown_table
from deqrobust.tidy import (
    CLEAN,
    EARLY_EXIT,
    PSEUDO_ATTACKS,
    WORST_CASE,
    expand_ranges,
    outcome_array,
    profile_rows,
)
from deqrobust.vocab import BATCH, DEQ_ARCHS, ENSEMBLE, FINAL, MDEQ, SAMPLE, TRUE_GRADIENT, score_step

ADVERSARIAL = ("pgd", "fgsm")  # adversarial trainings; claims 1-4 are about DEQs trained so
PGD_AT = "pgd"  # claim 5 speaks of PGD-AT only
FINAL_STATE_TYPES = ("exact", "unroll")  # the ready-made final-state gradients of claims 2 and 3
SIZE_RATIO = 2.0  # claim 5: "similar size" = parameter counts within a factor of 2 (ours)
DIVERGED = float(np.finfo(float).max)  # rank of a non-finite residual: above every finite one
MIN_RUNS = 2  # claim 1 is decided across training runs when each side has this many (ours)


def _prose() -> dict:
    """templates/claims.yaml: the claims, the rules and the sections' tests, with this module's and
    deqrobust.stats' numbers filled in (the rule a report states is the one its code applies)."""
    numbers = {
        "alpha": f"{ALPHA:g}",
        "power": f"{stats.POWER:g}",
        "superiority_1": f"{0.5 + SMALLEST_EFFECT[1]:.2f}",
        "min_runs": MIN_RUNS,
        "final_state_types": ", ".join(FINAL_STATE_TYPES),
        "true_gradient": TRUE_GRADIENT,
        "aligned_cosine": f"{ALIGNED_COSINE:g}",
        "points": {claim: f"{100 * SMALLEST_EFFECT[claim]:g}" for claim in (2, 3, 4, 5)},
        "size_ratio": f"{SIZE_RATIO:g}",
        "confidence": f"{100 * (1 - ALPHA):g}",
    }

    def fill(node):
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        return TEMPLATES.from_string(node).render(numbers)

    return fill(read_yaml(resources.files("deqrobust").joinpath("templates/claims.yaml").read_text()))


# Templates (deqrobust/templates): the report's layout and prose live outside the code.
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("deqrobust", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
PROSE = _prose()
CLAIMS, SHORT, RULES = PROSE["claims"], PROSE["short"], PROSE["rules"]
COMMON, TREND_RULE, COUPLING_TEST = PROSE["common"], PROSE["trend_rule"], PROSE["coupling_test"]


@dataclass
class Finding:
    claim: int
    verdict: str  # one of stats.VERDICTS
    reason: str = ""
    result: Comparison | None = None  # the comparison that decided (verdict table row)
    evidence: list[str] = field(default_factory=list)  # Markdown lines


def not_tested(reason: str) -> Verdict:
    return Verdict(NOT_TESTED, reason)


def finish(claim: int, units: list[tuple[str, Verdict]], evidence: list[str], empty: str) -> Finding:
    """The claim's finding from its units (label, verdict), all of which must hold."""
    if not units:
        return Finding(claim, NOT_TESTED, empty, None, [*evidence, f"- {empty}"])
    joint = stats.combine([v for _, v in units], "all")
    lines = [*evidence, *(f"- {label}: **{v.kind}**: {v.reason}" for label, v in units)]
    return Finding(claim, joint.kind, joint.reason, joint.result, lines)


# ---------------------------------------------------------------- inputs
def load_exits(paths) -> dict[str, dict]:
    """Early-exit / development-selection records (``select-exit``) by model name."""
    records = [json.loads(Path(p).read_text()) for p in paths]
    return {r["model"]: r for r in records}


def load_machines(paths) -> dict[str, dict | None]:
    """The machine each model was trained on, by model name, from its training summary (None when
    the summary predates the record)."""
    summaries = [json.loads(Path(p).read_text()) for p in paths]
    return {s["model"]: s.get("machine") for s in summaries}


TABLE_KEY = [
    "model",
    "estimator",
    "attacked_state",
    "attack",
    "defense",
    "scored_state",
    "coupling",
    "batch_size",
    "correct",
    "n",
]


def check_runs(table: pd.DataFrame, outcomes: pd.DataFrame | None, records: dict[str, dict]) -> None:
    """The report's inputs come from one run, or ConfigError naming the odd one out: the table must be
    what the outcomes give (``tabulate``), and each analysis or development record (by file) must
    stamp the checkpoint its model's cells were made from."""
    from deqrobust.errors import ConfigError
    from deqrobust.tidy import tabulate

    if outcomes is None:
        return

    def keyed(frame: pd.DataFrame) -> set[tuple]:
        part = frame[TABLE_KEY].astype(object)
        return set(map(tuple, part.where(part.notna(), "").astype(str).to_numpy()))

    ours, theirs = keyed(table), keyed(tabulate(outcomes))
    if ours != theirs:
        odd = sorted(ours ^ theirs)[0]
        raise ConfigError(
            f"the table and the per-example outcomes come from different runs ({len(ours ^ theirs)} "
            f"rows differ, e.g. model {odd[0]}, {odd[1]}@{odd[2]} {odd[3]}, defense {odd[4]}): rebuild "
            "the table from the outcomes (snakemake -R merge, or deqrobust merge)"
        )
    stamps = outcomes.dropna(subset=["checkpoint_md5"]).groupby("model")["checkpoint_md5"].first().to_dict()
    for path, record in records.items():
        model, stamp = (
            record["model"]["name"] if isinstance(record["model"], dict) else record["model"],
            record.get("checkpoint_md5"),
        )
        if stamp is not None and model in stamps and stamp != stamps[model]:
            raise ConfigError(
                f"{path} was made from another checkpoint of {model!r} (MD5 {stamp}) than its "
                f"evaluation cells ({stamps[model]}): inputs of different runs; rerun the workflow "
                "(snakemake) to remake the stale one"
            )


def seed_of(record: dict):
    """The training seed of an analysis record (its model's, else the config's)."""
    return record["model"].get("seed", record.get("seed"))


def deployed_residuals(record: dict, kind: str = "clean") -> np.ndarray | None:
    """Per-sample forward relative residual of the iterate the deployed solver returns (None if not kept).

    The record's ``forward_residual`` when the analysis wrote it; else derived from the per-sample
    trace (tolerance 0, same iterates as the deployed solver up to where a sample meets the
    tolerance): the lowest residual over steps 1..k, k the first step meeting ``tol`` or the
    deployed budget. Non-finite residuals (diverging samples) become DIVERGED."""
    if "forward_residual" in record:
        values = record["forward_residual"].get(kind)
    else:
        trace = record.get("inputs", {}).get(kind, {}).get("per_sample", {}).get("rel_residual")
        if trace is None:
            return None
        budget, tol, values = record["deployed_budget"], record["tol"], []
        for row in trace:
            head = [np.inf if v is None else float(v) for v in row[:budget]]
            stop = next((i + 1 for i, v in enumerate(head) if v <= tol), len(head))
            values.append(min(head[:stop]))
    if values is None:
        return None
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.where(np.isfinite(arr), arr, DIVERGED)


def adversarial_deqs(outcomes: pd.DataFrame) -> list[str]:
    models = outcomes.drop_duplicates("model")
    return models.loc[models["arch"].isin(DEQ_ARCHS) & models["training"].isin(ADVERSARIAL), "model"].tolist()


def rows_of(outcomes: pd.DataFrame, model: str, **equal) -> pd.DataFrame:
    keep = outcomes["model"] == model
    for column, value in equal.items():
        keep &= outcomes[column].isin(value) if isinstance(value, (list, tuple)) else outcomes[column] == value
    return outcomes[keep]


def final_defense(outcomes: pd.DataFrame, model: str) -> pd.DataFrame:
    """Attacked cells of a model scored by the final-state defense."""
    part = rows_of(outcomes, model, defense=FINAL, scored_state=FINAL)
    return part[~part["attack"].isin(PSEUDO_ATTACKS)]


def vector(row) -> np.ndarray:
    return outcome_array(row["outcomes"])


def cell_name(row) -> str:
    return f"{row['estimator']}@{row['attacked_state']} {row['attack']}"


def holm_family(comparisons: list[Comparison]) -> list[Comparison]:
    return stats.holm_adjust(comparisons) if len(comparisons) > 1 else comparisons


# ---------------------------------------------------------------- claim 1
def claim1(analyses: list[dict]) -> Finding:
    """Per pair of training runs (an adversarially trained DEQ and the standard DEQ of its size and
    seed) the per-image test; across runs, where each side has at least MIN_RUNS, the test whose
    unit is the run (seed_level), which then decides."""
    pairs, evidence = [], []
    std = [a for a in analyses if a["model"]["training"] == "standard"]
    adversarial = [a for a in analyses if a["model"]["training"] in ADVERSARIAL]
    for adv in adversarial:
        name = adv["model"]["name"]
        same_size = [s for s in std if s["model"].get("size") == adv["model"].get("size")]
        same = [
            s for s in same_size if seed_of(s) == seed_of(adv)
        ] or same_size  # a standard DEQ of one seed serves every seed
        same_grad = [s for s in same if s["model"].get("grad") == adv["model"].get("grad")]
        if not same:
            pairs.append((name, not_tested(f"no standard DEQ of size {adv['model'].get('size')} was analysed")))
            continue
        partner = (same_grad or same)[0]
        label = f"{name} vs {partner['model']['name']} (seed {seed_of(adv)})"
        evidence += [f"- {line}" for a in (adv, partner) for line in convergence_lines(a)]
        x, y = deployed_residuals(adv), deployed_residuals(partner)
        if x is None or y is None:
            pairs.append(
                (
                    label,
                    not_tested("the analyses keep no per-sample residuals on clean inputs (rerun `deqrobust analyze`)"),
                )
            )
            continue
        pairs.append((label, stats.decide(stats.mann_whitney(x, y, "greater"), SMALLEST_EFFECT[1])))
    empty = "no adversarially trained DEQ was analysed" if analyses else "no fixed-point analysis was given"
    runs = seed_level(adversarial, std)
    if runs is None:
        return finish(1, pairs, evidence, empty)
    result, lines = runs
    verdict = stats.decide(result, SMALLEST_EFFECT[1])
    evidence += lines + [f"- per pair of runs, {label}: **{v.kind}**: {v.reason}" for label, v in pairs]
    return Finding(
        1,
        verdict.kind,
        f"across training runs: {verdict.reason}",
        result,
        [*evidence, f"- across training runs: **{verdict.kind}**: {verdict.reason}"],
    )


def seed_level(adversarial: list[dict], standard: list[dict]) -> tuple[Comparison, list[str]] | None:
    """Claim 1 with the training run as the unit: each run's median deployed residual on clean test
    images, adversarially trained against standard (the size of the first adversarial run), one-sided
    exact Mann-Whitney U; None with fewer than MIN_RUNS runs on a side. With k runs a side the smallest
    p is 1 / C(2k, k): 0.05 at 3 and 3 (held only if every adversarial run lies above every standard run)."""
    size = adversarial[0]["model"].get("size") if adversarial else None
    medians = {}
    for side, records in (("adversarial", adversarial), ("standard", standard)):
        found = [(a["model"]["name"], deployed_residuals(a)) for a in records if a["model"].get("size") == size]
        medians[side] = {name: float(np.median(values)) for name, values in found if values is not None}
    if min(len(m) for m in medians.values()) < MIN_RUNS:
        return None
    lines = [
        f"- median deployed residual per training run, {side}: "
        + ", ".join(f"{name} {_num(value)}" for name, value in runs.items())
        + f" (spread {_num(min(runs.values()))} to {_num(max(runs.values()))})"
        for side, runs in medians.items()
    ]
    result = stats.mann_whitney(list(medians["adversarial"].values()), list(medians["standard"].values()), "greater")
    return result, lines


def convergence_lines(a: dict) -> list[str]:
    """One line per input kind of an analysis: residual, steps, non-convergence, accuracy."""
    name = f"{a['model']['name']} ({a['model']['training']})"
    deployed = min(a["deployed_budget"], len(next(iter(a["inputs"].values()))["residual"]["median"]))
    return [
        f"{name}, {kind} inputs, n={s['n']}: median relative residual "
        f"{_num(s['residual']['median'][deployed - 1])} at the deployed budget (step {deployed}), "
        f"{_num(s['residual']['median'][-1])} at step {len(s['residual']['median'])}; mean steps to tol "
        f"{a['tol']:g} {_num(s['steps_to_tol']['mean_capped'])} (capped at the budget); never converged "
        f"{100 * s['share_never_converged']:.1f} %; accuracy of h(z*) {100 * s['accuracy_fixed_point']:.1f} %"
        for kind, s in a["inputs"].items()
    ]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


# ---------------------------------------------------------------- claim 2
TAIL = 0.1  # claim 2's precondition reads the 10th percentile of the cosines: the misaligned tail


def alignment_precondition(record: dict | None, estimator: str, estimator_type: str) -> Precondition | None:
    """Claim 2's precondition for one final-state estimator, from an analysis' alignment entries
    (by the estimator's config name, else its type): the 10th percentile of its cosines to the
    deployed model's true gradient, on the input kind where it is lower. None when not measured
    (an analysis made before the deployed reference was recorded: rerun `deqrobust analyze`)."""
    entries = [e for e in (record or {}).get("alignment", []) if str(e["state"]) == FINAL and "deployed" in e]
    mine = [e for e in entries if e["estimator"] == estimator] or [
        e for e in entries if e.get("estimator_type") == estimator_type
    ]
    if not mine:
        return None
    tails = {e["inputs"]: tail(e["deployed"]["cosine"]) for e in mine}
    kind = min(tails, key=tails.get)
    return Precondition(
        "final-state gradient misaligned with the deployed model's true gradient",
        f"10th percentile of the cosines of {estimator}@final to it ({kind} inputs)",
        tails[kind],
        ALIGNED_COSINE,
        present_below=True,
    )


def tail(cosines: list) -> float:
    """The TAIL quantile of per-image cosines (None, a non-finite value, left out)."""
    values = np.array([v for v in cosines if v is not None], dtype=float)
    return float(np.quantile(values, TAIL)) if values.size else float("nan")


def alignment_lines(record: dict | None, model: str, estimator: str) -> list[str]:
    """Evidence: the cosines of E@final to both references, median, 10th percentile and share below
    ALIGNED_COSINE, per input kind."""
    lines = []
    for e in (record or {}).get("alignment", []):
        if str(e["state"]) != FINAL or e["estimator"] != estimator:
            continue
        for reference, values in (
            ("the deployed model's", e.get("deployed", {}).get("cosine")),
            ("its own output's", e["cosine"]),
        ):
            if values is None:
                continue
            finite = np.array([v for v in values if v is not None], dtype=float)
            lines.append(
                f"- {model}: {estimator}@final against {reference} true gradient, {e['inputs']} inputs, "
                f"n={finite.size}: median cosine {_num(float(np.median(finite)))}, 10th percentile "
                f"{_num(tail(values))}, below {ALIGNED_COSINE:g}: {100 * float((finite < ALIGNED_COSINE).mean()):.0f} %"
            )
    return lines


def claim2(outcomes: pd.DataFrame, analyses: list[dict]) -> Finding:
    units, evidence = [], []
    records = {a["model"]["name"]: a for a in analyses}
    for model in adversarial_deqs(outcomes):
        cells = final_defense(outcomes, model)
        at_final = cells[cells["attacked_state"] == FINAL]
        truth = at_final[at_final["estimator_type"] == TRUE_GRADIENT].drop_duplicates("attack")
        ready = at_final[at_final["estimator_type"].isin(FINAL_STATE_TYPES) & at_final["attack"].isin(truth["attack"])]
        if ready.empty:
            units.append(
                (
                    model,
                    not_tested(
                        f"no attack was run both with the true gradient ({TRUE_GRADIENT}@final) and with a final-state "
                        f"estimator ({', '.join(FINAL_STATE_TYPES)}) on this model"
                    ),
                )
            )
            continue
        reference = truth.set_index("attack")
        pairs = list(ready.iterrows())
        family = holm_family(
            [
                stats.mcnemar(vector(r), vector(reference.loc[r["attack"]]), "greater", alpha=ALPHA / len(pairs))
                for _, r in pairs
            ]
        )
        verdicts, preconditions = [], {}
        for (_, r), result in zip(pairs, family):
            pre = preconditions.setdefault(
                r["estimator"], alignment_precondition(records.get(model), r["estimator"], r["estimator_type"])
            )
            verdict = stats.decide(result, SMALLEST_EFFECT[2], pre)
            verdicts.append(verdict)
            evidence.append(
                f"- {model}: {cell_name(r)} vs {reference.loc[r['attack'], 'estimator']}@final "
                f"{r['attack']}: {verdict.kind}: {result.summary()}"
            )
        for estimator, pre in preconditions.items():
            evidence.append(
                f"- {model}: precondition for {estimator}@final "
                + (
                    "not measured (no alignment with the deployed model's true gradient in the analysis)"
                    if pre is None
                    else f"{'present' if pre.present else 'absent'}: {pre.describe()}"
                )
            )
            evidence += alignment_lines(records.get(model), model, estimator)
        units.append((model, stats.combine(verdicts, "any")))
    return finish(2, units, evidence, "no adversarially trained DEQ was evaluated")


# ---------------------------------------------------------------- claim 3
def claim3(outcomes: pd.DataFrame, exits: dict[str, dict]) -> Finding:
    units, evidence = [], []
    for model in adversarial_deqs(outcomes):
        record = exits.get(model)
        if record is None:
            units.append((model, not_tested("no development-selection record (select-exit) for this model")))
            continue
        n_star, estimator = record.get("strongest_attack_state"), record.get("estimator")
        if n_star is None or estimator is None:
            units.append(
                (
                    model,
                    not_tested(
                        "its development-selection record has no strongest_attack_state (made before the intermediate "
                        "state was chosen on the development split); rerun `deqrobust select-exit`"
                    ),
                )
            )
            continue
        cells = final_defense(outcomes, model)
        inter = cells[(cells["attacked_state"] == str(n_star)) & (cells["estimator"] == estimator)]
        finals = cells[(cells["attacked_state"] == FINAL) & cells["estimator_type"].isin(FINAL_STATE_TYPES)]
        attacks = sorted(set(inter["attack"]) & set(finals["attack"]))
        label = f"{model} ({estimator}@{n_star}, n* chosen on {record.get('num_examples', '?')} development images)"
        if not attacks:
            units.append(
                (
                    label,
                    not_tested(
                        f"no attack was run both with {estimator} at state {n_star} and with a "
                        f"final-state estimator ({', '.join(FINAL_STATE_TYPES)})"
                    ),
                )
            )
            continue
        binding = []
        for attack in attacks:
            a = inter[inter["attack"] == attack].iloc[0]
            tests = []
            for _, e in finals[finals["attack"] == attack].iterrows():
                result = stats.mcnemar(vector(a), vector(e), "less", alpha=ALPHA / len(attacks))
                tests.append(result)
                evidence.append(f"- {model}: {cell_name(a)} vs {cell_name(e)}: {result.summary()}")
            binding.append(max(tests, key=lambda r: (r.p_value, r.mde)))  # intersection-union: the weakest
        family = holm_family(binding)
        verdicts = [stats.decide(r, SMALLEST_EFFECT[3]) for r in family]
        evidence += [
            f"- {model}, {attack} (against every final-state estimator): {v.kind}"
            for attack, v in zip(attacks, verdicts)
        ]
        units.append((label, stats.combine(verdicts, "any")))
    return finish(3, units, evidence, "no adversarially trained DEQ was evaluated")


# ---------------------------------------------------------------- claim 4
def claim4(outcomes: pd.DataFrame) -> Finding:
    units, evidence = [], []
    for model in adversarial_deqs(outcomes):
        worst = rows_of(outcomes, model, attack=WORST_CASE).set_index("defense")
        others = [d for d in (EARLY_EXIT, ENSEMBLE) if d in worst.index]
        if FINAL not in worst.index or not others:
            units.append(
                (model, not_tested("no worst-case outcomes of the final defense and of early exit or the ensemble"))
            )
            continue
        family = holm_family(
            [
                stats.mcnemar(vector(worst.loc[d]), vector(worst.loc[FINAL]), "greater", alpha=ALPHA / len(others))
                for d in others
            ]
        )
        verdicts = [stats.decide(r, SMALLEST_EFFECT[4]) for r in family]
        attacked = set(rows_of(outcomes, model)["attacked_state"])
        for defense, result, verdict in zip(others, family, verdicts):
            state = worst.loc[defense, "scored_state"]
            adaptive = str(score_step(state)) if defense == EARLY_EXIT else ENSEMBLE
            target = f"state {adaptive}" if defense == EARLY_EXIT else "the ensemble"
            note = "" if adaptive in attacked else f"; no attack aimed at {target} was run (not adaptive)"
            evidence.append(
                f"- {model}: {defense} ({state}) vs final, worst case incl. clean{note}: {verdict.kind}: "
                f"{result.summary()}"
            )
        units.append((model, stats.combine(verdicts, "any")))
    return finish(4, units, evidence, "no adversarially trained DEQ was evaluated")


# ---------------------------------------------------------------- claim 5
def parameter_count(spec: dict) -> int:
    from deqrobust.models import build_model

    return sum(p.numel() for p in build_model(spec).parameters())


def claim5(outcomes: pd.DataFrame, cfg: dict) -> Finding:
    units, evidence = [], []
    deqs = adversarial_deqs(outcomes)
    models = outcomes.drop_duplicates("model").set_index("model")
    pgd = [m for m in deqs if models.loc[m, "training"] == PGD_AT]
    if deqs and not pgd:
        trainings = sorted({models.loc[m, "training"].upper() for m in deqs})
        reason = f"the adversarially trained DEQs were trained with {'/'.join(trainings)}-AT, the claim is about PGD-AT"
        return Finding(5, NOT_TESTED, reason, None, [f"- {reason}"])
    specs = cfg.get("models", {})

    def spec_of(model):
        return specs.get(model) or specs.get(models.loc[model, "base_model"])

    rivals = [
        m
        for m in models.index
        if models.loc[m, "arch"] not in DEQ_ARCHS and models.loc[m, "training"] == PGD_AT and spec_of(m)
    ]
    for deq in pgd:
        same_seed = [m for m in rivals if str(models.loc[m, "seed"]) == str(models.loc[deq, "seed"])]
        if spec_of(deq) is None or not rivals:
            units.append((deq, not_tested("no deep baseline trained with PGD-AT in this profile")))
            continue
        size = parameter_count(spec_of(deq))
        counts = {m: parameter_count(spec_of(m)) for m in (same_seed or rivals)}
        rival = min(counts, key=lambda m: abs(counts[m] / size - 1))
        ratio = counts[rival] / size
        label = f"{deq} ({size:,} parameters) vs {rival} ({counts[rival]:,} parameters, x{ratio:.2g})"
        if not 1 / SIZE_RATIO <= ratio <= SIZE_RATIO:
            units.append((label, not_tested(f"not comparable: sizes differ by more than a factor {SIZE_RATIO:g}")))
            continue
        d, b = (rows_of(outcomes, m, attack=WORST_CASE, defense=FINAL) for m in (deq, rival))
        if d.empty or b.empty or expand_ranges(d.iloc[0]["indices"]) != expand_ranges(b.iloc[0]["indices"]):
            units.append((label, not_tested("worst-case outcomes missing or not on the same test images")))
            continue
        units.append(
            (
                label,
                stats.decide(
                    stats.noninferiority(vector(d.iloc[0]), vector(b.iloc[0]), SMALLEST_EFFECT[5]), SMALLEST_EFFECT[5]
                ),
            )
        )
    return finish(5, units, evidence, "no adversarially trained DEQ was evaluated")


def findings(
    analyses: list[dict], cfg: dict, outcomes: pd.DataFrame | None = None, exits: dict[str, dict] | None = None
) -> list[Finding]:
    """Every claim's finding. Without per-example outcomes claims 2-5 are not tested; with them,
    claims 2-5 read the cells of the profile's solver setting only."""
    if outcomes is None:
        missing = (
            "no per-example outcomes were given (results/<profile>/outcomes.csv.gz, from `deqrobust merge --outcomes`)"
        )
        return [claim1(analyses), *(Finding(c, NOT_TESTED, missing, None, [f"- {missing}"]) for c in (2, 3, 4, 5))]
    outcomes = profile_rows(outcomes, cfg)
    return [
        claim1(analyses),
        claim2(outcomes, analyses),
        claim3(outcomes, exits or {}),
        claim4(outcomes),
        claim5(outcomes, cfg),
    ]


# ---------------------------------------------------------------- training dynamics (no verdict)


def trend_comparison(trends: list[tuple[dict, dict]], key: str, alternative: str) -> Comparison | None:
    """Run-level Mann-Whitney U of the median changes ``key`` ('residual' or an estimator's name),
    adversarially trained runs against standard ones; None with fewer than MIN_RUNS a side."""
    sides: dict[str, list[float]] = {"adv": [], "std": []}
    for record, t in trends:
        change = t["residual"] if key == "residual" else t["cosine"].get(key)
        if change is not None and np.isfinite(change.estimate):
            sides["adv" if record["model"]["training"] in ADVERSARIAL else "std"].append(change.estimate)
    if min(len(v) for v in sides.values()) < MIN_RUNS:
        return None
    return stats.mann_whitney(sides["adv"], sides["std"], alternative)


def trend_lines(trajectories: list[dict]) -> list[str]:
    """The report's "Along training" section: per run the snapshots' medians and the changes, then
    PGD-AT against standard across runs."""
    from deqrobust.trajectory import log_residual, trend

    if not trajectories:
        return []
    trends = [(r, trend(r)) for r in trajectories]
    names = sorted({name for r in trajectories for s in r["snapshots"] for name in s["alignment"]})
    rows = []
    for r in trajectories:
        for snap in r["snapshots"]:
            deployed, traced = (
                10 ** np.median(log_residual(snap[key])) for key in ("forward_residual", "traced_residual")
            )
            cosines = [
                _num(float(np.nanmedian([np.nan if v is None else v for v in snap["alignment"][n]["cosine"]])))
                if n in snap["alignment"]
                else "n/a"
                for n in names
            ]
            rows.append(
                [
                    r["model"]["name"],
                    r["model"]["training"],
                    f"{snap['epoch']:.2f}" + (" (pretraining)" if snap["pretraining"] else ""),
                    f"{100 * snap['clean_accuracy']:.1f} %",
                    _num(deployed),
                    _num(traced),
                    f"{100 * snap['never_converged']:.1f} %",
                    *cosines,
                ]
            )
    out = [
        "## Along training",
        "",
        TREND_RULE,
        "",
        f"Per snapshot (test images: {trajectories[0]['num_examples']} for accuracy and residuals, "
        f"{trajectories[0]['alignment_examples']} for the cosines to the deployed model's true gradient; never "
        f"converged: within {trajectories[0]['traced_budget']} steps):",
        "",
        markdown_table(
            [
                "model",
                "training",
                "epoch",
                "clean",
                f"median residual, step {trajectories[0]['solver']['budget']} (deployed)",
                f"median residual, step {trajectories[0]['traced_budget']}",
                "never converged",
                *(f"median cosine, {n}" for n in names),
            ],
            rows,
        ).rstrip(),
        "",
        "Change per run:",
        "",
    ]
    for r, t in trends:
        name = r["model"]["name"]
        if t["residual"] is None:
            out.append(f"- {name}: fewer than two snapshots after pretraining")
            continue
        out.append(
            f"- {name} ({r['model']['training']}), epoch {t['first']:.2f} to {t['last']:.2f}: log10 residual "
            f"{t['residual'].summary()}"
        )
        out += [f"  - cosine of {n}@final: {c.summary()}" for n, c in t["cosine"].items()]
    comparisons = [("residual", "log10 residual", "greater"), *((n, f"cosine of {n}@final", "less") for n in names)]
    for key, label, alternative in comparisons:
        result = trend_comparison(trends, key, alternative)
        if result is not None:
            out.append(f"- PGD-AT against standard, change of the {label}, across runs: {result.summary()}")
    return [*out, ""]


# ---------------------------------------------------------------- batch coupling (no verdict)


def setting_name(row) -> str:
    """'batch coupling, batch 96': a row's solver coupling and evaluation batch."""
    return f"{row['coupling']} coupling, batch {row['batch_size']}"


def coupling_pairs(outcomes: pd.DataFrame, cfg: dict) -> list[dict]:
    """Every cell run under batch coupling beside the same cell per sample (defense final): model,
    cell, the two rows and the one-sided McNemar of batch against sample (Holm over a model's
    cells); clean rows are left out (``coupling_clean``)."""
    rows = outcomes
    rows = rows[(rows["defense"] == FINAL) & (rows["scored_state"] == FINAL) & ~rows["attack"].isin(PSEUDO_ATTACKS)]
    key = ["model", "estimator", "attacked_state", "attack"]
    pairs = []
    for model, of_model in rows.groupby("model", sort=False):
        found = []
        for _, cell in of_model.groupby(key, sort=False):
            for _, batch in cell[cell["coupling"] == BATCH].iterrows():
                sample = _partner(cell, batch)
                if sample is None or expand_ranges(sample["indices"]) != expand_ranges(batch["indices"]):
                    continue
                found.append({"model": model, "cell": cell_name(batch), BATCH: batch, SAMPLE: sample})
        tests = holm_family(
            [stats.mcnemar(vector(f[BATCH]), vector(f[SAMPLE]), "greater", alpha=ALPHA / len(found)) for f in found]
        )
        pairs += [{**f, "result": r} for f, r in zip(found, tests)]
    return pairs


def _partner(rows: pd.DataFrame, batch):
    """The per-sample row to compare a batch-coupled one with: at the same batch size (the same
    batches and attack seeds) when there is one, else the first; None when there is none."""
    sample = rows[rows["coupling"] == SAMPLE]
    same = sample[sample["batch_size"] == batch["batch_size"]]
    return None if sample.empty else (same if len(same) else sample).iloc[0]


def coupling_clean(outcomes: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Clean accuracy of the final defense per model and solver setting (the scoring differs too)."""
    rows = outcomes
    rows = rows[(rows["attack"] == CLEAN) & (rows["defense"] == FINAL)]
    return rows.assign(accuracy=[vector(r).mean() for _, r in rows.iterrows()])


def coupling_gaps(outcomes: pd.DataFrame, cfg: dict) -> list[dict]:
    """Per model, attack, final-state estimator E and batch size: E's over-estimate against the true
    gradient at the final state (acc under E minus acc under the true gradient, paired) under
    batch coupling and per sample, and the part of it under batch coupling that per-sample
    decisions remove (the coupling's share)."""
    rows = outcomes
    rows = rows[(rows["defense"] == FINAL) & (rows["scored_state"] == FINAL) & (rows["attacked_state"] == FINAL)]
    gaps = []
    for (model, attack), cells in rows.groupby(["model", "attack"], sort=False):
        true_rows = cells[cells["estimator_type"] == TRUE_GRADIENT]
        truth = {(r["coupling"], r["batch_size"]): r for _, r in true_rows.iterrows()}
        coupled = cells[cells["estimator_type"].isin(FINAL_STATE_TYPES) & (cells["coupling"] == BATCH)]
        for _, batch in coupled.iterrows():
            sample = _partner(cells[cells["estimator"] == batch["estimator"]], batch)
            t_batch = truth.get((BATCH, batch["batch_size"]))
            t_sample = None if sample is None else truth.get((SAMPLE, sample["batch_size"]))
            if t_batch is None or t_sample is None:
                continue
            under = {
                BATCH: stats.mcnemar(vector(batch), vector(t_batch), "greater"),
                SAMPLE: stats.mcnemar(vector(sample), vector(t_sample), "greater"),
            }
            gap = under[BATCH].estimate
            share = (gap - under[SAMPLE].estimate) / gap if gap > 0 else None
            gaps.append(
                {
                    "model": model,
                    "attack": attack,
                    "estimator": batch["estimator"],
                    "batch_size": int(batch["batch_size"]),
                    "under": under,
                    "share": share,
                }
            )
    return gaps


def _diff(r: Comparison) -> str:
    return f"{100 * r.estimate:+.1f} [{100 * r.ci[0]:+.1f}, {100 * r.ci[1]:+.1f}]"


def coupling_lines(outcomes: pd.DataFrame | None, analyses: list[dict], cfg: dict) -> list[str]:
    """The report's section "Batch coupling" (Markdown lines), empty when no cell ran under batch
    coupling beside the same cell per sample."""

    pairs = [] if outcomes is None else coupling_pairs(outcomes, cfg)
    if not pairs:
        return []
    out = ["## Batch coupling", "", COUPLING_TEST, ""]
    header = ["model", "cell", "per sample", "batch-coupled", "batch - sample, points [95 % CI]", "p (Holm)", "MDE"]
    out += [
        markdown_table(
            header,
            [
                [
                    p["model"],
                    p["cell"],
                    f"{100 * vector(p[SAMPLE]).mean():.1f} % ({setting_name(p[SAMPLE])})",
                    f"{100 * vector(p[BATCH]).mean():.1f} % ({setting_name(p[BATCH])})",
                    _diff(p["result"]),
                    f"{p['result'].p:.3g}",
                    p["result"].distance(p["result"].mde),
                ]
                for p in pairs
            ],
        ).rstrip(),
        "",
    ]
    clean = coupling_clean(outcomes, cfg)
    clean = clean[clean["model"].isin({p["model"] for p in pairs})]
    out += [
        f"- {model}, clean accuracy of the final defense: "
        + "; ".join(f"{100 * r['accuracy']:.1f} % under {setting_name(r)}" for _, r in rows.iterrows())
        for model, rows in clean.groupby("model", sort=False)
    ]
    out += [f"- {p['model']}: {p['cell']}, batch-coupled vs per sample: {p['result'].summary()}" for p in pairs]
    gaps = coupling_gaps(outcomes, cfg)
    if gaps:
        out += [
            "",
            f"Final-state over-estimate: accuracy under E at the final state minus accuracy under the true "
            f"gradient ({TRUE_GRADIENT}@final) with the same attack, paired, under each coupling; the coupling's "
            "share is the part of the batch-coupled over-estimate that per-sample decisions remove "
            "((batch - sample) / batch, when the batch-coupled one is positive).",
            "",
            markdown_table(
                [
                    "model",
                    "attack",
                    "E",
                    "over-estimate per sample, points [95 % CI]",
                    "over-estimate batch-coupled, points [95 % CI]",
                    "coupling's share",
                ],
                [
                    [
                        g["model"],
                        g["attack"],
                        g["estimator"],
                        _diff(g["under"][SAMPLE]),
                        f"{_diff(g['under'][BATCH])} (batch {g['batch_size']})",
                        "-" if g["share"] is None else f"{100 * g['share']:.0f} %",
                    ]
                    for g in gaps
                ],
            ).rstrip(),
        ]
    dependence = batch_dependence_rows(analyses)
    if dependence[1]:
        out += [
            "",
            "Batch dependence (fixed-point analysis): median cosine between an image's input gradient solved "
            "in a batch of clean images and solved alone, per coupling (1: the batch does not matter).",
            "",
            markdown_table(*dependence).rstrip(),
        ]
    return [*out, ""]


def batch_dependence_rows(analyses: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Median batch-dependence cosine per model and estimator (rows) and coupling (columns)."""
    from deqrobust.analysis import batch_dependence_frame

    frame = batch_dependence_frame(analyses)
    couplings = list(dict.fromkeys(frame["coupling"]))
    header = ["model", "estimator", "state", "batch size", *(f"median, {c}" for c in couplings)]
    rows = []
    for (model, estimator, state, size), part in frame.groupby(
        ["model", "estimator", "state", "batch_size"], sort=False, dropna=False
    ):
        medians = dict(zip(part["coupling"], part["median"]))
        rows.append([model, estimator, state, str(size), *(_num(medians.get(c)) for c in couplings)])
    return header, rows


# ---------------------------------------------------------------- document
def effect_text(r: Comparison | None) -> str:
    """'accuracy difference +2.3 points [+0.4, +4.3]', or '-' without a deciding comparison."""
    if r is None:
        return "-"
    scale, fmt = (100, "+.1f") if r.effect == stats.DIFFERENCE else (1, ".3f")
    est, lo, hi = (format(scale * v, fmt) for v in (r.estimate, *r.ci))
    unit = " points" if r.effect == stats.DIFFERENCE else ""
    return f"{r.effect} {est}{unit} [{lo}, {hi}]"


def verdict_row(f: Finding) -> list[str]:
    """claim, verdict, statistic, p, effect [CI], n, MDE."""
    r = f.result
    if r is None:
        return [str(f.claim), f"**{f.verdict}**", "-", "-", "-", "-", "-"]
    p = f"{r.p:.3g}" + (f" (Holm, {r.family})" if r.p_adjusted is not None else "")
    return [str(f.claim), f"**{f.verdict}**", f"{r.method}: {r.counts}", p, effect_text(r), str(r.n), r.distance(r.mde)]


def alignment_rows(analyses: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per estimator and state (rows) and model and inputs (columns): the median cosine to the true
    gradient of the estimator's own output, then the median and 10th percentile to the deployed model's."""
    with_alignment = [a for a in analyses if a.get("alignment")]
    columns = [
        (a["model"]["name"], a["model"]["training"], kind) for a in with_alignment for kind in ("clean", "adversarial")
    ]
    values: dict[tuple[str, str], dict] = {}
    for a in with_alignment:
        for e in a["alignment"]:
            deployed = e.get("deployed")
            text = _num(e["median"]) + (
                "" if deployed is None else f" / {_num(deployed['median'])} ({_num(tail(deployed['cosine']))})"
            )
            values.setdefault((e["estimator"], str(e["state"])), {})[(a["model"]["name"], e["inputs"])] = text
    header = ["estimator", "state", *(f"{m} ({t}), {k}" for m, t, k in columns)]
    rows = [
        [est, state, *(values[(est, state)].get((m, k), "n/a") for m, _, k in columns)]
        for est, state in sorted(values, key=lambda key: (key[0], state_order(key[1])))
    ]
    return header, rows


def data_line(table: pd.DataFrame) -> str:
    """Which archive the table's cells read: the official one, or another (named by its MD5)."""
    md5s = set(table["data_md5"].dropna()) if "data_md5" in table.columns else set()
    if not md5s:
        return "- data: not recorded (no split record beside the data when the table was merged)"
    official = set(table["data_official"].dropna())
    kind = (
        "the official CIFAR-10 archive"
        if official == {True}
        else "**not the official CIFAR-10 archive** (accepted with data.allow_md5_mismatch): accuracies are not "
        "comparable with the paper's"
    )
    return f"- data: archive MD5 {', '.join(sorted(md5s))}, {kind}"


def machine_lines(machines: dict[str, dict | None]) -> list[str]:
    """The machine each model was trained on, and a warning when they differ."""
    from deqrobust.provenance import describe

    lines = [f"- model `{name}` trained on: {describe(found)}" for name, found in machines.items()]
    if len({describe(found) for found in machines.values() if found}) > 1:
        lines.append(
            "- the models were trained on different machines: float training differs between processors, "
            "so a model retrained elsewhere gives other numbers"
        )
    return lines


def scale_lines(
    table: pd.DataFrame, analyses: list[dict], cfg: dict, machines: dict[str, dict | None] | None = None
) -> list[str]:
    """Profile, data, sizes, budgets and machines: what "at this scale" means for this report."""
    solver = cfg.get("solver", {})
    attacked_n = table.loc[table["attack"] != CLEAN, "n"]
    lines = [
        f"- profile: `{cfg.get('profile', '?')}`; device setting `{cfg.get('device', 'auto')}`",
        data_line(table),
        f"- test images per evaluation cell: {attacked_n.min() if len(attacked_n) else 'none'}"
        f"{'' if attacked_n.nunique() <= 1 else f' to {attacked_n.max()}'}",
        f"- forward solver: {solver.get('name')}, {solver.get('budget')} steps, tolerance {solver.get('tol')}",
    ]
    for name, spec in cfg.get("models", {}).items():
        made = (
            f"imported from `{spec['checkpoint']}`"
            if "checkpoint" in spec  # trained by the authors' code
            else f"epochs {model_spec(cfg, name)['training_config']['epochs']}"
        )
        arch = f"{spec.get('arch')}-{spec.get('size', 'tiny')}" if spec.get("arch") == MDEQ else spec.get("arch")
        lines.append(
            f"- model `{name}`: {arch}, training {spec.get('training')}, gradient {spec.get('grad', 'exact')}, {made}"
        )
    for a in analyses:
        lines.append(
            f"- analysis of `{a['model']['name']}`: {a['num_examples']} test images, {a['solver']['budget']} "
            f"solver steps traced, adversarial inputs by {a['attack']} via {a['estimator']}"
        )
    return lines + machine_lines(machines or {})


def fmt(cell: dict | None) -> str:
    """'44.0 % [40.9, 47.1] (n=500; pgd10 via exact@final)'."""
    if cell is None:
        return "not run"
    how = (
        ""
        if cell["attack"] in PSEUDO_ATTACKS
        else f"; {cell['attack']} via {cell['estimator']}@{cell['attacked_state']}"
    )
    return (
        f"{100 * cell['accuracy']:.1f} % [{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}] (n={cell['n']}{how})"
    )


KEY_FIGURE = {
    "path": "figures/state_accuracy.png",
    "caption": "Robust accuracy of every solver state and defense under its strongest attack (the paper's "
    "central comparison: final state against intermediate states)",
}


def scale_summary(table: pd.DataFrame, cfg: dict) -> str:
    """One line: the models, the test images of a cell and whether the data are the official archive."""
    attacked_n = table.loc[table["attack"] != CLEAN, "n"]
    images = f"{attacked_n.min()} test images per cell" if len(attacked_n) else "no evaluation cell"
    official = set(table["data_official"].dropna()) if "data_official" in table.columns else set()
    data = "" if official in ({True}, set()) else ", a CIFAR-10 copy that is not the official archive"
    return f"{len(cfg.get('models', {}))} model(s) as configured in `{cfg.get('profile', '?')}`, {images}{data}"


def aim_lines(checks: list[aims.AimCheck], table: pd.DataFrame) -> list[str]:
    """Per trained instance with aims, each aim against the deployed model's test accuracy."""
    headings = dict(main_columns(table))
    by_model: dict[str, list[str]] = {}
    for check in checks:
        by_model.setdefault(check.model, []).append(check.text(headings[check.metric]))
    return [f"- {model}: " + "; ".join(texts) for model, texts in by_model.items()]


def aims_summary(checks: list[aims.AimCheck]) -> str:
    """'accuracy aims: 5 of 8 reached' for the first screen ('' without aims)."""
    if not checks:
        return ""
    unmeasured = sum(c.reached is None for c in checks)
    return f"accuracy aims: {sum(bool(c.reached) for c in checks)} of {len(checks)} reached" + (
        f" ({unmeasured} not measured)" if unmeasured else ""
    )


def render(
    table: pd.DataFrame,
    analyses: list[dict],
    cfg: dict,
    results: list[Finding],
    outcomes: pd.DataFrame | None = None,
    trajectories: list[dict] | None = None,
    machines: dict[str, dict | None] | None = None,
) -> str:
    """The report in Markdown through templates/report.md.j2: the first screen (verdicts, effects,
    scale, key figure), then per claim its rule and evidence, the mechanism sections (alignment,
    batch coupling with ``outcomes``, the trend along training) and the main table (the profile's
    setting)."""
    table = profile_rows(table, cfg)
    header, rows = alignment_rows(analyses)
    checks = aims.checks(cfg, table)
    return TEMPLATES.get_template("report.md.j2").render(
        profile=cfg.get("profile", "?"),
        scale_summary="; ".join(filter(None, [scale_summary(table, cfg), aims_summary(checks)])),
        scale=scale_lines(table, analyses, cfg, machines),
        aims=aim_lines(checks, table),
        findings=results,
        effects={f.claim: effect_text(f.result) for f in results},
        short=SHORT,
        claims=CLAIMS,
        rules=RULES,
        common=COMMON,
        key_figure=KEY_FIGURE,
        verdict_table=markdown_table(
            ["claim", "verdict", "statistic", "p", "effect [95 % CI]", "n", "MDE"], [verdict_row(r) for r in results]
        ),
        kinds=", ".join(f"*{k}*" for k in VERDICTS),
        alignment=markdown_table(header, rows) if rows else "",
        true_gradient=TRUE_GRADIENT,
        aligned_cosine=f"{ALIGNED_COSINE:g}",
        coupling=coupling_lines(outcomes, analyses, cfg),
        trend=trend_lines(trajectories or []),
        warnings=sorted({w for a in analyses for w in a.get("warnings", [])}),
        main=[
            f"- {row['model']} / {row['defense']}: "
            + "; ".join(f"{label} {fmt(row[key])}" for key, label in main_columns(table))
            for row in main_rows(table)
        ],
    )


def metrics(
    table: pd.DataFrame,
    cfg: dict,
    results: list[Finding],
    outcomes: pd.DataFrame | None = None,
    machines: dict[str, dict | None] | None = None,
) -> dict:
    """Headline accuracies (the profile's setting), the heading of each accuracy key (what ran under it:
    the key names stay fixed for the metrics history), verdict kinds and p-values, and with ``outcomes``
    the batch-coupling comparisons, for a metrics JSON."""

    def detail(r: Comparison | None) -> dict | None:
        return (
            None
            if r is None
            else {
                "method": r.method,
                "p": r.p,
                "p_unadjusted": r.p_value,
                "effect": r.effect,
                "estimate": r.estimate,
                "ci": list(r.ci),
                "n": r.n,
                "mde": r.mde if np.isfinite(r.mde) else None,
            }
        )

    coupling = [] if outcomes is None else coupling_pairs(outcomes, cfg)
    rows = profile_rows(table, cfg)
    provenance = {
        c: (None if table.empty or c not in table.columns or pd.isna(table[c].iloc[0]) else table[c].iloc[0])
        for c in ("data_md5", "data_official")
    }
    return {
        "profile": cfg.get("profile"),
        "data": {
            "md5": provenance["data_md5"],
            "official": None if provenance["data_official"] is None else bool(provenance["data_official"]),
        },
        "trained_on": machines or {},
        "accuracy": headline_metrics(rows),
        "aims": [
            {
                "model": c.model,
                "metric": c.metric,
                "aim": c.aim,
                "accuracy": None if c.measured is None else c.measured["accuracy"],
                "reached": c.reached,
            }
            for c in aims.checks(cfg, rows)
        ],
        "columns": dict(main_columns(rows)),
        "verdicts": {str(r.claim): r.verdict for r in results},
        "p_values": {str(r.claim): (r.result.p if r.result else None) for r in results},
        "claims": {str(r.claim): {"verdict": r.verdict, "reason": r.reason, "test": detail(r.result)} for r in results},
        **(
            {
                "batch_coupling": [
                    {
                        "model": p["model"],
                        "cell": p["cell"],
                        "test": detail(p["result"]),
                        **{
                            side: {
                                "accuracy": float(vector(p[side]).mean()),
                                "coupling": p[side]["coupling"],
                                "batch_size": int(p[side]["batch_size"]),
                            }
                            for side in (SAMPLE, BATCH)
                        },
                    }
                    for p in coupling
                ]
            }
            if coupling
            else {}
        ),
    }
