"""The reproduction report: each claim of the paper, the figures that test it, and a verdict.

A verdict is "held", "did not hold" or "not tested at this scale" (the data that would test
the claim is missing: no such model, cell or analysis in this profile). It comes from a rule
fixed here, before any result was seen, and printed in the report beside the numbers; nothing
is tuned. Accuracies are read from the tidy table (Wilson 95 % intervals); a "strongest" cell
is the one with the lowest accuracy. "Final-state" cells are attacks whose gradient is
estimated at the final state (attacked_state 'final': exact, unroll, neumann); "intermediate"
cells estimate it at a solver state n (intermediate unrolling, simultaneous adjoint); attacks
on the ensemble of states count as neither. The adversarially trained DEQs are the models with arch 'mdeq' and training 'pgd' or 'fgsm'.

Rules, per model; a claim holds when it holds for every model it could be tested on:
1. (analyses, clean inputs) Each adversarially trained DEQ is paired with the standard DEQ of
   the same size and gradient mode (else the same size). Held if the adversarially trained
   one has the higher median relative residual at the last traced step AND a capped mean of
   steps-to-tolerance that is not lower (equal when neither converges within the budget).
2. (table, defense final) For every attack run with both final-state and intermediate
   estimators: the strongest final-state cell's accuracy exceeds the strongest intermediate
   cell's with non-overlapping intervals (ci_low of final > ci_high of intermediate).
3. (table, defense final) The strongest intermediate cell over all attacks has a lower
   accuracy than the strongest final-state cell over all attacks.
4. (table) Robust accuracy of a defense = its per-example worst case ('worst-case' rows),
   else its strongest cell. Held if early exit or ensemble exceeds the final-state defense.
5. (table, defense final, worst case as in 4) Each adversarially trained DEQ is paired with
   the deep baseline of the same training whose parameter count is closest; the pair counts
   only when the ratio of parameter counts is within [1/2, 2] ("similar size"). Held if the
   DEQ's robust accuracy is at least the baseline's minus SIMILAR_MARGIN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from deqrobust.config import model_spec
from deqrobust.results import (CLEAN, DEFENSES, FINAL, PSEUDO_ATTACKS, WORST_CASE, attacked, headline_metrics,
                               main_columns, main_rows, models_of, split_by_state, strongest)

HELD, NOT_HELD, NOT_TESTED = "held", "did not hold", "not tested at this scale"
ADVERSARIAL = ("pgd", "fgsm")
SIMILAR_MARGIN = 0.05   # claim 5: "competitive" = within 5 percentage points (ours)
SIZE_RATIO = 2.0        # claim 5: "similar size" = parameter counts within a factor of 2 (ours)

CLAIMS = {
    1: "An adversarially trained DEQ needs more solver steps to reach its fixed point, or never reaches it.",
    2: "Attacks that use the final-state gradient (exact implicit or unrolled) suffer gradient obfuscation: "
       "they over-estimate robustness.",
    3: "Gradients estimated at intermediate solver states give stronger white-box attacks.",
    4: "Defenses that use intermediate states (early exit, ensemble of states) improve robustness under those attacks.",
    5: "PGD-AT DEQs reach robustness competitive with deep networks of similar size.",
}
RULES = {
    1: "Paired with the standard DEQ of the same size (and gradient mode when available), on clean inputs: held if "
       "the median relative residual at the last traced step is higher AND the mean steps to the solver tolerance "
       "(never-converging samples counted as the budget) is not lower.",
    2: "Per adversarially trained DEQ, defense final, per attack run with both kinds of estimator: held if the "
       "strongest final-state cell's accuracy exceeds the strongest intermediate-state cell's with non-overlapping "
       "95 % intervals, for every such attack.",
    3: "Per adversarially trained DEQ, defense final: held if the strongest intermediate-state cell over all attacks "
       "has a lower accuracy than the strongest final-state cell over all attacks.",
    4: "Per adversarially trained DEQ: robust accuracy of a defense is its per-example worst case over every "
       "attack (else its strongest cell); held if early exit or ensemble exceeds the final-state defense.",
    5: f"Per adversarially trained DEQ, against the deep baseline of the same training with the closest parameter "
       f"count (counted only within a factor {SIZE_RATIO:g}): held if the DEQ's worst-case robust accuracy "
       f"(defense final) is at least the baseline's minus {100 * SIMILAR_MARGIN:g} percentage points.",
}


@dataclass
class Finding:
    claim: int
    verdict: str
    evidence: list[str] = field(default_factory=list)   # Markdown lines


def combine(outcomes: list[bool]) -> str:
    """Held when every tested model supports the claim; not tested when no model could test it."""
    if not outcomes:
        return NOT_TESTED
    return HELD if all(outcomes) else NOT_HELD


def fmt(cell: dict | None) -> str:
    """'44.0 % [40.9, 47.1] (n=500; pgd10 via exact@final)'."""
    if cell is None:
        return "not run"
    plain = cell["attack"] in PSEUDO_ATTACKS
    how = "" if plain else f"; {cell['attack']} via {cell['estimator']}@{cell['attacked_state']}"
    return (f"{100 * cell['accuracy']:.1f} % [{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}]"
            f" (n={cell['n']}{how})")


# ---------------------------------------------------------------- table helpers
def adversarial_deqs(table: pd.DataFrame) -> list[str]:
    m = models_of(table)
    return m.loc[(m["arch"] == "mdeq") & m["training"].isin(ADVERSARIAL), "model"].tolist()


def robust(table: pd.DataFrame, model: str, defense: str) -> dict | None:
    """Per-example worst case of a defense, else its strongest cell."""
    rows = table[(table["model"] == model) & (table["defense"] == defense)]
    return strongest(rows[rows["attack"] == WORST_CASE]) or strongest(attacked(table, model, defense))


# ---------------------------------------------------------------- claims
def claim1(analyses: list[dict]) -> Finding:
    finding = Finding(1, NOT_TESTED)
    outcomes = []
    std = [a for a in analyses if a["model"]["training"] == "standard"]
    for adv in (a for a in analyses if a["model"]["training"] in ADVERSARIAL):
        same_size = [s for s in std if s["model"]["size"] == adv["model"]["size"]]
        same_grad = [s for s in same_size if s["model"]["grad"] == adv["model"]["grad"]]
        if not same_size:
            finding.evidence.append(f"- {adv['model']['name']}: no standard DEQ of its size analysed")
            continue
        partner = (same_grad or same_size)[0]
        (res_a, steps_a), (res_s, steps_s) = (
            (a["inputs"]["clean"]["residual"]["median"][-1], a["inputs"]["clean"]["steps_to_tol"]["mean_capped"])
            for a in (adv, partner))
        ok = None not in (res_a, res_s) and res_a > res_s and steps_a >= steps_s
        outcomes.append(ok)
        finding.evidence.append(f"- {adv['model']['name']} vs {partner['model']['name']}:")
        finding.evidence += [f"  - {line}" for a in (adv, partner) for line in convergence_lines(a)]
        finding.evidence.append(f"  - pair verdict: {HELD if ok else NOT_HELD}")
    if not analyses:
        finding.evidence.append("- no fixed-point analysis was given")
    finding.verdict = combine(outcomes)
    return finding


def convergence_lines(a: dict) -> list[str]:
    """One line per input kind of an analysis: residual, steps, non-convergence, accuracy."""
    name = f"{a['model']['name']} ({a['model']['training']})"
    deployed = min(a["deployed_budget"], len(next(iter(a["inputs"].values()))["residual"]["median"]))
    return [f"{name}, {kind} inputs, n={s['n']}: median relative residual "
            f"{_num(s['residual']['median'][deployed - 1])} at the deployed budget (step {deployed}), {_num(s['residual']['median'][-1])} at step "
            f"{len(s['residual']['median'])}; mean steps to tol {a['tol']:g} {_num(s['steps_to_tol']['mean_capped'])} "
            f"(capped at the budget); never converged {100 * s['share_never_converged']:.1f} %; "
            f"accuracy of h(z*) {100 * s['accuracy_fixed_point']:.1f} %"
            for kind, s in a["inputs"].items()]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def claim2(table: pd.DataFrame) -> Finding:
    finding = Finding(2, NOT_TESTED)
    outcomes = []
    for model in adversarial_deqs(table):
        final, inter = split_by_state(attacked(table, model, FINAL))
        for attack in sorted(set(final["attack"]) & set(inter["attack"])):
            f, i = strongest(final[final["attack"] == attack]), strongest(inter[inter["attack"] == attack])
            ok = f["ci_low"] > i["ci_high"]
            outcomes.append(ok)
            finding.evidence.append(f"- {model}, {attack}: final-state {fmt(f)} vs intermediate {fmt(i)} -> "
                                    f"{'separated' if ok else 'not separated'}")
    if not outcomes:
        finding.evidence.append("- no adversarially trained DEQ was attacked with both final-state and "
                                "intermediate-state estimators under the same attack")
    finding.verdict = combine(outcomes)
    return finding


def claim3(table: pd.DataFrame) -> Finding:
    finding = Finding(3, NOT_TESTED)
    outcomes = []
    for model in adversarial_deqs(table):
        f, i = (strongest(part) for part in split_by_state(attacked(table, model, FINAL)))
        if f is None or i is None:
            finding.evidence.append(f"- {model}: final-state {fmt(f)}, intermediate {fmt(i)} (cannot compare)")
            continue
        outcomes.append(i["accuracy"] < f["accuracy"])
        finding.evidence.append(f"- {model}: strongest intermediate {fmt(i)} vs strongest final-state {fmt(f)}")
    if not adversarial_deqs(table):
        finding.evidence.append("- no adversarially trained DEQ in the table")
    finding.verdict = combine(outcomes)
    return finding


def claim4(table: pd.DataFrame) -> Finding:
    finding = Finding(4, NOT_TESTED)
    outcomes = []
    for model in adversarial_deqs(table):
        scores = {d: robust(table, model, d) for d in DEFENSES}
        finding.evidence.append(f"- {model}: " + "; ".join(f"{d} {fmt(c)}" for d, c in scores.items()))
        others = [c["accuracy"] for d, c in scores.items() if d != FINAL and c is not None]
        if scores[FINAL] is not None and others:
            outcomes.append(max(others) > scores[FINAL]["accuracy"])
    if not adversarial_deqs(table):
        finding.evidence.append("- no adversarially trained DEQ in the table")
    finding.verdict = combine(outcomes)
    return finding


def parameter_count(spec: dict) -> int:
    from deqrobust.models import build_model

    return sum(p.numel() for p in build_model(spec).parameters())


def claim5(table: pd.DataFrame, cfg: dict) -> Finding:
    finding = Finding(5, NOT_TESTED)
    outcomes = []
    models = models_of(table).set_index("model")
    specs = cfg.get("models", {})
    params = {m: parameter_count(specs[m]) for m in models.index if m in specs}
    for deq in adversarial_deqs(table):
        rivals = [m for m in models.index if models.loc[m, "arch"] != "mdeq"
                  and models.loc[m, "training"] == models.loc[deq, "training"] and m in params]
        if deq not in params or not rivals:
            finding.evidence.append(f"- {deq}: no deep baseline with the same training ({models.loc[deq, 'training']})")
            continue
        rival = min(rivals, key=lambda m: abs(params[m] / params[deq] - 1))
        ratio = params[rival] / params[deq]
        d, b = robust(table, deq, FINAL), robust(table, rival, FINAL)
        line = (f"- {deq} ({params[deq]:,} parameters) {fmt(d)} vs {rival} ({params[rival]:,} parameters, "
                f"x{ratio:.2g}) {fmt(b)}")
        if not 1 / SIZE_RATIO <= ratio <= SIZE_RATIO:
            finding.evidence.append(f"{line} -> not comparable: sizes differ by more than a factor {SIZE_RATIO:g}")
            continue
        if d is None or b is None:
            finding.evidence.append(f"{line} -> not comparable: attacked cells missing")
            continue
        outcomes.append(d["accuracy"] >= b["accuracy"] - SIMILAR_MARGIN)
        finding.evidence.append(line)
    if not adversarial_deqs(table):
        finding.evidence.append("- no adversarially trained DEQ in the table")
    finding.verdict = combine(outcomes)
    return finding


def findings(table: pd.DataFrame, analyses: list[dict], cfg: dict) -> list[Finding]:
    return [claim1(analyses), claim2(table), claim3(table), claim4(table), claim5(table, cfg)]


# ---------------------------------------------------------------- document
def scale_lines(table: pd.DataFrame, analyses: list[dict], cfg: dict) -> list[str]:
    """Profile, sizes and budgets: what "at this scale" means for this report."""
    solver = cfg.get("solver", {})
    attacked_n = table.loc[table["attack"] != CLEAN, "n"]
    lines = [f"- profile: `{cfg.get('profile', '?')}`; device setting `{cfg.get('device', 'auto')}`",
             f"- test images per evaluation cell: {attacked_n.min() if len(attacked_n) else 'none'}"
             f"{'' if attacked_n.nunique() <= 1 else f' to {attacked_n.max()}'}",
             f"- forward solver: {solver.get('name')}, {solver.get('budget')} steps, tolerance {solver.get('tol')}"]
    for name, spec in cfg.get("models", {}).items():
        epochs = model_spec(cfg, name)["training_config"]["epochs"]
        arch = f"{spec.get('arch')}-{spec.get('size', 'tiny')}" if spec.get("arch") == "mdeq" else spec.get("arch")
        lines.append(f"- model `{name}`: {arch}, training {spec.get('training')}, "
                     f"gradient {spec.get('grad', 'exact')}, epochs {epochs}")
    for a in analyses:
        lines.append(f"- analysis of `{a['model']['name']}`: {a['num_examples']} test images, {a['solver']['budget']} "
                     f"solver steps traced, adversarial inputs by {a['attack']} via {a['estimator']}")
    return lines


def render(table: pd.DataFrame, analyses: list[dict], cfg: dict, results: list[Finding]) -> str:
    """The report in Markdown."""
    out = [f"# Reproduction report: profile `{cfg.get('profile', '?')}`", "",
           "Yang, Pang, Liu. *A Closer Look at the Adversarial Robustness of Deep Equilibrium Models*, NeurIPS 2022. "
           "Each claim below is tested by a rule fixed in `deqrobust/report.py` before results were seen; nothing "
           "was tuned. Verdicts speak for this profile's scale only: small models, few epochs and few test images "
           "can neither confirm nor refute the paper at its own scale.", "", "## Scale", "",
           *scale_lines(table, analyses, cfg), "", "## Verdicts", "", "| claim | verdict |", "|---|---|",
           *(f"| {r.claim}. {CLAIMS[r.claim]} | **{r.verdict}** |" for r in results), ""]
    for r in results:
        out += [f"## Claim {r.claim}", "", f"> {CLAIMS[r.claim]}", "", f"Rule: {RULES[r.claim]}", "",
                "Measured:", "", *r.evidence, "", f"Verdict: **{r.verdict}**", ""]
    warnings = sorted({w for a in analyses for w in a.get("warnings", [])})
    if warnings:
        out += ["## Attack warnings during the analyses", "", *(f"- {w}" for w in warnings), ""]
    out += ["## Main table", "", "Per model and defense, the strongest cell per attack family (as in `main.md`):", ""]
    columns = main_columns(table)
    out += [f"- {row['model']} / {row['defense']}: " + "; ".join(f"{label} {fmt(row[key])}" for key, label in columns)
            for row in main_rows(table)]
    return "\n".join(out) + "\n"


def metrics(table: pd.DataFrame, cfg: dict, results: list[Finding]) -> dict:
    """Headline accuracies and verdicts, for a metrics JSON."""
    return {"profile": cfg.get("profile"),
            "accuracy": headline_metrics(table),
            "verdicts": {str(r.claim): r.verdict for r in results}}
