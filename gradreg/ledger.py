"""The claims ledger: every quantitative claim of both papers, the paper's value beside ours, the
statistical comparison and a verdict — generated from ``papers.json`` (the papers' side) and the
stored results (ours), never typed.

Each row accounts for something the book must answer for (``LedgerRow.keys``): a claim of
``papers.json``'s ``_claims`` (``"claim:<topic>#<i>"``) or a reported cell (``"cell:<experiment>/<cell>"``),
and every row names the registered experiment whose runs are ours (``LedgerRow.experiment``; None for
the step-cost bench). The verdicts are ``gradreg.stats``'s: a claim about a direction ("a beats b",
"a and b do not differ") is tested on our grid at the ledger's profile, with the same comparisons the
chapters make; a claim about a value (a cell of Table 1) is judged only on runs at the paper's own
settings — below that scale the row shows the difference and says it is not yet run at paper scale.
Two more labels mark rows without a statistical verdict: ``NOT_RUN`` (the results are missing: the row
gives the command that makes them) and ``NOT_TESTED`` (no measurable claim: an identity, a remark, a
grid that only chooses weights).
"""
from __future__ import annotations

import itertools
import math
import re
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from scipy import stats as _scipy_stats

from . import bench, experiments, papers, report, stats, varga2017
from .errors import GradregError, ResultsMissing
from .results import Record

NOT_RUN = "not yet run"
NOT_TESTED = "no statistical test"
LABELS = (*stats.LABELS, NOT_RUN, NOT_TESTED)
COLUMNS = ("claim", "paper", "ours", "run", "comparison", "verdict")
PAPER_PROFILE = "paper"
# The cost claims are measured by `gradreg bench`, not by a grid: its saved step benches per device.
BENCH_DEVICE = {"smoke": "cpu", "cpu": "cpu", "paper": "cuda"}
ACC = "test_accuracy"
# grids whose settings come from another grid's results (cifar10-full's weights, chosen on validation)
DEPENDS = {"cifar10-full": "cifar10-full-val"}


def run_command(name: str, profile: str) -> str:
    """``experiments.command(name, profile)``, preceded by the grid it takes settings from, if any."""
    first = f"{experiments.command(DEPENDS[name], profile)} && " if name in DEPENDS else ""
    return first + experiments.command(name, profile)


@dataclass(frozen=True)
class LedgerRow:
    """One line of the ledger. ``keys``: the papers.json claims and reported cells it accounts for;
    ``paper_values``: the papers.json numbers it shows, as (experiment, cell, mean, std);
    ``label``: one of ``LABELS``; ``verdict``: the ``stats.Verdict`` behind a statistical label
    (None for ``NOT_RUN`` / ``NOT_TESTED``); ``command``: what produces the missing results."""

    claim: str
    source: str
    paper: str
    ours: str
    run: str
    comparison: str
    label: str
    verdict_text: str
    experiment: str | None
    keys: tuple[str, ...] = ()
    paper_id: str = ""            # whose claim: "varga2017" or "karakida2023" (the gradreg module of its experiments)
    paper_values: tuple[tuple[str, str, float, float | None], ...] = ()
    verdict: stats.Verdict | None = None
    command: str | None = None

    def cells(self) -> dict[str, str]:
        """The row as the table shows it: {column: Markdown text}."""
        verdict = f"{self.verdict_text}: `{self.command}`" if self.command else self.verdict_text
        return {"claim": f"{self.claim} — *{short_source(self.source)}*", "paper": self.paper, "ours": self.ours,
                "run": self.run, "comparison": self.comparison, "verdict": verdict}


# ---------------------------------------------------------------- formatting


def short_source(source: str) -> str:
    """A source without its parenthesised details, e.g. "Varga, Csiszárik & Zombori, extended
    abstract, 'The effect of training set size'"."""
    while True:
        shorter = re.sub(r"\s*\([^()]*\)", "", source)
        if shorter == source:
            return re.sub(r"\s+,", ",", shorter).strip()
        source = shorter


def interval(c: stats.Comparison, level: float = 0.95) -> tuple[float, float]:
    """The confidence interval of the difference c.diff (Welch degrees of freedom); NaNs without a test."""
    if math.isnan(c.se) or math.isnan(c.df) or c.se == 0:
        return math.nan, math.nan
    half = _scipy_stats.t.ppf(0.5 + level / 2, c.df) * c.se
    return c.diff - half, c.diff + half


def against_value(xs: list[float], value: float, a: str = "ours", b: str = "paper") -> stats.Comparison:
    """One-sample t-test of our per-seed values against a number printed without std or n (E7's
    accuracies): difference of our mean from it, two-sided p, se = sd/√n, n − 1 degrees of freedom."""
    n = len(xs)
    mean = statistics.fmean(xs) if xs else math.nan
    if n < 2 or statistics.stdev(xs) == 0:
        return stats.Comparison(a, b, mean - value, math.nan, math.nan, n, n)
    result = _scipy_stats.ttest_1samp(xs, value)
    return stats.Comparison(a, b, mean - value, float(result.statistic), float(result.pvalue), n, n,
                            statistics.stdev(xs) / math.sqrt(n), float(n - 1))


def _diff(c: stats.Comparison, spec: str) -> str:
    return report.number(c.diff, spec)


def describe(c: stats.Comparison, test: str = "Welch", spec: str = "+.2f", unit: str = " points") -> str:
    """One comparison in words: the difference with its 95 % CI and the test's p, or why no test."""
    if math.isnan(c.diff):
        return "no runs to compare"
    if math.isnan(c.p):
        return f"{_diff(c, spec)}{unit}; no test ({c.n_a}/{c.n_b} runs)"
    lo, hi = interval(c)
    ci = f" (95 % CI {report.number(lo, spec)} to {report.number(hi, spec)})" if not math.isnan(lo) else ""
    return f"{_diff(c, spec)}{unit}{ci}, {test} p = {c.p:.2g}"


def describe_parts(tested: list[tuple[report.Claim, stats.Comparison, stats.Verdict]], test: str = "Welch",
                   spec: str = "+.2f", unit: str = " points", most: int = 4) -> str:
    """Several comparisons: each with its difference and p when there are few, else their tally and
    the range of the differences."""
    tested = [t for t in tested if not math.isnan(t[1].diff)]
    if not tested:
        return "no runs to compare"
    if len(tested) <= most:
        return "; ".join(f"{claim.text}: {_diff(c, spec)} (p = {report.number(c.p, '.2g')})" for claim, c, _ in tested)
    diffs = [c.diff for _, c, _ in tested]
    return (f"{len(tested)} {test} tests: {stats.tally([v for *_, v in tested])}; differences "
            f"{report.number(min(diffs), spec)} to {report.number(max(diffs), spec)}{unit}")


def spread(tested: list[tuple[report.Claim, stats.Comparison, stats.Verdict]], spec: str = "+.2f",
           unit: str = " points") -> str:
    """The range of the differences of several comparisons, e.g. "differences −0.12 to +0.40 points (4)"."""
    diffs = [c.diff for _, c, _ in tested if not math.isnan(c.diff)]
    if not diffs:
        return "—"
    if len(diffs) == 1:
        return f"difference {report.number(diffs[0], spec)}{unit}"
    return f"differences {report.number(min(diffs), spec)} to {report.number(max(diffs), spec)}{unit} ({len(diffs)})"


def _pair(summary: dict[str, report.Summary], a: str, b: str) -> str:
    return f"{a} {summary.get(a, '—')} vs {b} {summary.get(b, '—')}"


def _paper(mean: float, std: float | None, n: int | None) -> str:
    return f"{mean:.2f}" + (f" ({std:.2f})" if std is not None else "") + (f", n = {n}" if n else "")


# ---------------------------------------------------------------- the grids


@dataclass
class _Grid:
    name: str
    records: list[Record]
    stored: int
    total: int | None       # None: the grid cannot be configured yet (derived from missing results)
    reason: str = ""

    @property
    def complete(self) -> bool:
        return self.total is not None and self.stored >= self.total


@dataclass
class _Context:
    profile: str
    results_dir: str | None
    train_missing: bool
    grids: dict[str, _Grid] = field(default_factory=dict)

    def grid(self, name: str) -> _Grid:
        if name not in self.grids:
            self.grids[name] = self._load(name)
        return self.grids[name]

    def _load(self, name: str) -> _Grid:
        exp = experiments.get(name)
        try:
            records = experiments.load(name, self.profile, run_missing=self.train_missing,
                                       results_dir=self.results_dir, progress=False, log=lambda _: None)
            total = len(exp.configs(self.profile, results_dir=self.results_dir))
            todo = experiments.missing(name, self.profile, self.results_dir)
            return _Grid(name, records, total - len(todo), total)
        except ResultsMissing as err:
            return _Grid(name, [], 0, None, str(err))

    def ok(self, name: str) -> list[Record]:
        return [r for r in self.grid(name).records if r["status"] == "ok"]

    def run_text(self, name: str) -> str:
        """profile · seeds · device(s), from the grid's records and their provenance."""
        g = self.grid(name)
        if not g.records:
            return f"{self.profile} · no runs stored"
        seeds = len({r["seed"] for r in g.records})
        devices = sorted({f"{r['provenance']['device']} ({r['provenance'].get('device_name', '?')})"
                          for r in g.records if "provenance" in r})
        runs = "" if g.complete else f" · {g.stored}/{'?' if g.total is None else g.total} runs"
        return f"{self.profile} · {seeds} seed{'s' if seeds != 1 else ''}{runs} · {', '.join(devices) or '?'}"

    def at_paper_scale(self, name: str) -> bool:
        """Whether this profile runs the experiment at the paper's settings (same profile as ``paper``)."""
        exp = experiments.get(name)
        return self.profile == PAPER_PROFILE or exp.profile(self.profile) == exp.profile(PAPER_PROFILE)


def _row(ctx: _Context, experiment: str | None, claim: str, source: str, paper: str, ours: str, comparison: str,
         verdict: stats.Verdict | None = None, keys: tuple[str, ...] = (), paper_values=(), label: str | None = None,
         text: str | None = None, command: str | None = None, run: str | None = None) -> LedgerRow:
    if verdict is not None:
        label, text = verdict.label, verdict.text
    return LedgerRow(claim=claim, source=source, paper=paper, ours=ours,
                     run=run if run is not None else ctx.run_text(experiment), comparison=comparison,
                     label=label, verdict_text=text, experiment=experiment, keys=keys,
                     paper_values=tuple(paper_values), verdict=verdict, command=command)


def _claim_key(topic: str, i: int) -> str:
    return f"claim:{topic}#{i}"


def _claim(topic: str, i: int) -> papers.Claim:
    return papers.claims(topic)[i]


def _value_verdict(ctx: _Context, name: str, c: stats.Comparison, unit: str = " points") -> dict[str, Any]:
    """The verdict of a value row: ``stats.verdict(c, "=")`` at the paper's settings, else not yet run
    at paper scale (with the command), or, if the paper-scale runs are stored, a pointer to them."""
    if ctx.at_paper_scale(name):
        return {"verdict": stats.verdict(c, "=", unit=unit)}
    try:
        todo = experiments.missing(name, PAPER_PROFILE, ctx.results_dir)
    except ResultsMissing:
        todo = True
    if todo:
        return {"verdict": None, "label": NOT_RUN, "text": f"{NOT_RUN} at paper scale",
                "command": run_command(name, PAPER_PROFILE)}
    return {"verdict": None, "label": NOT_TESTED, "text": "compared at paper scale only (the ledger at profile paper)"}


def _scale_note(ctx: _Context, name: str) -> str:
    if ctx.at_paper_scale(name):
        return ""
    exp = experiments.get(name)
    cell = (exp.profile(ctx.profile).cells or tuple(exp.cells))[0]
    ours, paper = (exp.config(p, cell, 0, derived={}).to_dict() for p in (ctx.profile, PAPER_PROFILE))
    other = [k for k in ours if k not in ("iterations", "seed", "device") and ours[k] != paper.get(k)]
    return (f" ({ctx.profile} scale: {ours['iterations']:,} of the paper's {paper['iterations']:,} iterations"
            + (f"; other settings differ too: {', '.join(other)}" if other else "") + ")")


# ---------------------------------------------------------------- Varga et al.

_NAMES = {"spectreg": "SpectReg", "datagrad": "DataGrad", "dropout": "Dropout", "batchnorm": "BatchNorm"}


def _quickstart(ctx: _Context) -> list[LedgerRow]:
    exp = experiments.get("quickstart")
    recs = ctx.ok("quickstart")
    (claim, c, v), = report.test_claims(recs, [report.Claim("DataGrad beats plain", "datagrad", "plain")])
    acc = report.summarise(recs, ACC)
    return [_row(ctx, "quickstart", f"No paper claim: the book's quick start — {exp.title}", exp.source, "—",
                 _pair(acc, "datagrad", "plain"), f"the chapter's own check, {claim.text}: {describe(c)} ({v.text})",
                 None, label=NOT_TESTED, text="no paper claim")]


def table1_claims(records: list[Record], runner_up: str | None = None) -> tuple[list[report.Claim], list[report.Claim]]:
    """The Table 1 chapter's claims: the four parts of the paper's sentence (Baseline + GR beats
    Dropout alone and BatchNorm alone), then the claims its numbers imply (GR beats NoGR in the
    Baseline and Dropout rows; Dropout + DataGrad best, against our runner-up — ``runner_up`` when
    there are no runs; BatchNorm gains nothing)."""
    sentence = [report.Claim(f"Baseline + {_NAMES[reg]} beats {_NAMES[rival]} alone", f"baseline/{reg}", f"{rival}/nogr")
                for reg in ("spectreg", "datagrad") for rival in ("dropout", "batchnorm")]
    ours = report.summarise(records, ACC)
    claims = [report.Claim("SpectReg beats NoGR (Baseline)", "baseline/spectreg", "baseline/nogr"),
              report.Claim("DataGrad beats NoGR (Baseline)", "baseline/datagrad", "baseline/nogr"),
              report.Claim("SpectReg beats NoGR (Dropout)", "dropout/spectreg", "dropout/nogr"),
              report.Claim("DataGrad beats NoGR (Dropout)", "dropout/datagrad", "dropout/nogr")]
    runner_up = max((c for c in ours if c != "dropout/datagrad"), key=lambda c: ours[c].mean, default=runner_up)
    if runner_up:
        claims.append(report.Claim("Dropout + DataGrad is best", "dropout/datagrad", runner_up))
    claims += [report.Claim("BatchNorm: SpectReg gains nothing", "batchnorm/spectreg", "batchnorm/nogr", "="),
               report.Claim("BatchNorm: DataGrad gains nothing", "batchnorm/datagrad", "batchnorm/nogr", "=")]
    return sentence, claims


def _table1(ctx: _Context) -> list[LedgerRow]:
    name = "mnist-table1"
    paper = papers.reported(name)
    recs = ctx.ok(name)
    ours = report.summarise(recs, ACC)
    rows = []
    for cell, (pm, ps) in paper.cells.items():
        s = ours.get(cell)
        c = (stats.welch_summary(s.mean, s.std, s.n, pm, ps, paper.seeds, "ours", "paper") if s and s.n > 1
             else stats.Comparison("ours", "paper", (s.mean if s else math.nan) - pm, math.nan, math.nan,
                                   s.n if s else 0, paper.seeds))
        rows.append(_row(ctx, name, f"Table 1, {cell}: test accuracy (%)", paper.source, _paper(pm, ps, paper.seeds),
                         str(s or "—"), "ours − paper: " + describe(c) + _scale_note(ctx, name),
                         keys=(f"cell:{name}/{cell}",), paper_values=[(name, cell, pm, ps)],
                         **_value_verdict(ctx, name, c)))

    def from_paper(claim: report.Claim) -> tuple[stats.Comparison, stats.Verdict]:
        p = stats.welch_summary(*paper.cells[claim.a], paper.seeds, *paper.cells[claim.b], paper.seeds)
        return p, stats.verdict(p, claim.expect, unit=" points")

    def values(*cells: str) -> list[tuple[str, str, float, float | None]]:
        return [(name, c, *paper.cells[c]) for c in cells if c in paper.cells]

    paper_runner_up = max((x for x in paper.cells if x != "dropout/datagrad"), key=lambda x: paper.cells[x][0])
    sentence, claims = table1_claims(recs, paper_runner_up)
    tested = report.test_claims(recs, sentence)
    own = [from_paper(c) for c in sentence]
    text = _claim(name, 0)
    rows.append(_row(ctx, name, text.claim, text.source,
                     f"on its own numbers: {stats.combine([v for _, v in own]).text}; differences "
                     f"{min(p.diff for p, _ in own):+.2f} to {max(p.diff for p, _ in own):+.2f} points",
                     spread(tested),
                     describe_parts(tested), stats.combine([v for *_, v in tested]), keys=(_claim_key(name, 0),),
                     paper_values=values(*dict.fromkeys(x for c in sentence for x in (c.a, c.b)))))
    for claim, c, v in report.test_claims(recs, claims):
        p, pv = from_paper(claim) if claim.b in paper.cells else (None, None)
        best = claim.text.endswith("is best")
        if best:    # the paper's runner-up, for its side
            runner = paper_runner_up
            p, pv = from_paper(report.Claim(claim.text, claim.a, runner))
        paper_text = f"{p.diff:+.2f} points, Welch p = {p.p:.2g} on its numbers: {pv.text}" if p else "—"
        if best:
            paper_text = f"vs its runner-up {runner}: " + paper_text
            text_, source, keys = _claim(name, 1).claim, _claim(name, 1).source, (_claim_key(name, 1),)
        else:
            text_, source, keys = f"{claim.text} (implied by Table 1)", paper.source, ()
        rows.append(_row(ctx, name, text_, source, paper_text, _pair(ours, claim.a, claim.b),
                         f"{claim.a} − {claim.b}: {describe(c)}", v, keys=keys,
                         paper_values=values(claim.a, runner if best else claim.b)))
    return rows


def _table1_protocol(ctx: _Context) -> list[LedgerRow]:
    """Table 1's cells under the authors' protocol (held-out digits; BatchNorm on batch statistics),
    beside the paper's: the protocol chapter's gap test (Welch on summaries), for each cell run."""
    name, paper = "mnist-table1-protocol", papers.reported("mnist-table1")
    recs = ctx.ok(name)
    held_out, batch_stats = report.summarise(recs, ACC), report.summarise(recs, "test_accuracy_batch_stats")
    run = experiments.get(name).profile(ctx.profile).cells or tuple(experiments.get(name).cells)
    cells = [c for c in run if c in paper.cells]
    rows = []
    for cell in cells:
        bn = cell.startswith("batchnorm")         # BatchNorm evaluated on batch statistics, as the authors did
        s = (batch_stats if bn else held_out).get(cell)
        pm, ps = paper.cells[cell]
        c = (stats.welch_summary(s.mean, s.std, s.n, pm, ps, paper.seeds, "ours", "paper") if s and s.n > 1
             else stats.Comparison("ours", "paper", (s.mean if s else math.nan) - pm, math.nan, math.nan,
                                   s.n if s else 0, paper.seeds))
        how = "held-out digits, BatchNorm on batch statistics" if bn else "held-out digits"
        rows.append(_row(ctx, name, f"Table 1, {cell} under the authors' protocol ({how}): test accuracy (%)",
                         paper.source, _paper(pm, ps, paper.seeds), str(s or "—"),
                         "ours − paper: " + describe(c) + _scale_note(ctx, name),
                         paper_values=[("mnist-table1", cell, pm, ps)], **_value_verdict(ctx, name, c)))
    return rows


def size_claims(records: list[Record], sizes: list[int], methods: list[str]) -> list[tuple[str, stats.Verdict, list]]:
    """The size-sweep chapter's three claims, each (what is compared, verdict, [(claim, comparison,
    verdict)]): DataGrad beats the best other method at every size; every gradient regularizer beats
    the baseline at the largest size; DataGrad's gain over the baseline is larger at the smallest
    size than at the largest (a difference of differences)."""
    summary = report.summarise(records, ACC)

    def best_other(n: int) -> str | None:
        others = [m for m in methods if m != "datagrad" and f"n{n}/{m}" in summary]
        return max(others, key=lambda m: summary[f"n{n}/{m}"].mean) if others else None

    best = report.test_claims(records, [report.Claim(f"N = {n}: DataGrad beats {best_other(n)}", f"n{n}/datagrad",
                                                     f"n{n}/{best_other(n)}") for n in sizes if best_other(n)])
    largest, smallest = sizes[-1], sizes[0]
    at_largest = report.test_claims(records, [report.Claim(f"N = {largest}: {m} beats the baseline", f"n{largest}/{m}",
                                                           f"n{largest}/baseline")
                                              for m in methods if m not in ("baseline", "confidence")])
    shrinks = stats.difference_of_differences(records, f"n{smallest}/datagrad", f"n{smallest}/baseline",
                                              f"n{largest}/datagrad", f"n{largest}/baseline", ACC)
    gain = report.Claim(f"DataGrad's gain over the baseline at N = {smallest} minus at N = {largest}", shrinks.a, shrinks.b)
    return [(f"DataGrad − best other method at N = {', '.join(map(str, sizes))}", stats.combine([v for *_, v in best]), best),
            (f"each gradient regularizer − baseline at N = {largest}", stats.combine([v for *_, v in at_largest]), at_largest),
            (gain.text, stats.verdict(shrinks, ">", unit=" points"), [(gain, shrinks, stats.verdict(shrinks, ">", unit=" points"))])]


def _sizes(ctx: _Context) -> list[LedgerRow]:
    name = "mnist-sizes"
    exp = experiments.get(name)
    grid = exp.configs(ctx.profile)
    sizes = sorted({cfg.n_train for _, _, cfg in grid})
    methods = [m for m in varga2017.SIZE_METHODS if any(c.endswith(f"/{m}") for c, _, _ in grid)]
    recs = ctx.ok(name)
    rows = []
    for i, (what, v, tested) in enumerate(size_claims(recs, sizes, methods)):
        c = _claim(name, i)
        comparison = (describe(tested[0][1], "Welch (difference of differences)") if i == 2 else describe_parts(tested))
        rows.append(_row(ctx, name, c.claim, c.source, "— (Figure 1 left: a plot, no numbers printed)",
                         f"{what}: {spread(tested)}", comparison, v, keys=(_claim_key(name, i),)))
    return rows


def _flatter(records: list[Record], cells: list[str], base: str, metric: str, where: str) -> list:
    return report.test_claims(records, [report.Claim(f"{c} is flatter than {base} {where}", base, c) for c in cells],
                              metric=metric, unit="")


def _family(ctx: _Context) -> list[LedgerRow]:
    name = "mnist-family"
    cells = list(experiments.get(name).cells)
    recs = ctx.ok(name)
    beats = report.test_claims(recs, [report.Claim(f"{c} beats no GR", c, "nogr") for c in cells[1:]])
    jac = report.summarise(recs, "jac_fro_test")
    path = report.summarise(recs, "jac_fro_path")
    rows = [_row(ctx, name, "No paper claim: the family of Jacobian projections on accuracy (E3, run by the authors' "
                 "code, not in the extended abstract)", experiments.get(name).source, "—",
                 f"test accuracy: {', '.join(f'{c} {s}' for c, s in report.summarise(recs, ACC).items())}" if recs else "—",
                 f"the chapter's own check, each beats no GR: {stats.tally([v for *_, v in beats])}", None,
                 label=NOT_TESTED, text="no paper claim")]
    c = _claim("gradient-norms", 0)
    for metric, where, summary in (("jac_fro_test", "at test points", jac),
                                   ("jac_fro_path", "between training points", path)):
        tested = _flatter(recs, cells[1:], "nogr", metric, where)
        rows.append(_row(ctx, name, f"{c.claim} — MNIST, N = 2000, each regularizer's ‖J_g‖_F {where}", c.source, "—",
                         f"nogr {summary.get('nogr', '—')}; " + ", ".join(f"{x} {summary[x]}" for x in cells[1:] if x in summary),
                         describe_parts(tested, spec="+.3g", unit=""), stats.combine([v for *_, v in tested]),
                         keys=(_claim_key("gradient-norms", 0),)))
    return rows


FAILED_BELOW = 50.0   # % test accuracy: a run below it failed (the weight-decay chapter's threshold; chance is 10 %)


def _wd(ctx: _Context) -> list[LedgerRow]:
    name, cell = "mnist-wd-grid", varga2017.wd_cell
    recs = ctx.grid(name).records
    learned = [r for r in recs if r["status"] == "ok" and r["metrics"][ACC] >= FAILED_BELOW]
    summary = report.summarise(learned, ACC)
    grid = experiments.get(name).configs(ctx.profile)
    wds, dgs = sorted({cfg.weight_decay for *_, cfg in grid}), sorted({cfg.weight for *_, cfg in grid})
    tested = []
    for wd in wds:
        done = [d for d in dgs if d > 0 and cell(wd, d) in summary]
        if done and cell(wd, 0) in summary:
            best = max(done, key=lambda d: summary[cell(wd, d)].mean)
            tested += report.test_claims(learned, [report.Claim(f"WD {wd:g}: DataGrad {best:g} beats none",
                                                                cell(wd, best), cell(wd, 0))])
    c = _claim(name, 0)
    return [_row(ctx, name, c.claim, c.source, "— (a remark, no numbers)",
                 f"{len(recs) - len(learned)} of {len(recs)} runs failed (below {FAILED_BELOW:g} %)" if recs else "—",
                 f"the chapter's own question, best DataGrad weight against none per weight decay: "
                 f"{stats.tally([v for *_, v in tested])}", None, keys=(_claim_key(name, 0),), label=NOT_TESTED,
                 text="a remark, not a measurable claim (the bound is checked in the identities chapter)")]


def sin5x_flatness(records: list[Record]) -> dict[str, list]:
    """The sin(5x) chapter's test of E9, per regularizer: each step to the next larger weight (from
    none) flattens the function on the grid (mean |f′|, Welch)."""
    out = {}
    for reg in ("spectreg", "datagrad"):
        cells = ["none"] + [f"{reg}/{w:g}" for w in varga2017.SIN5X_WEIGHTS[reg]]
        out[reg] = report.test_claims(records, [report.Claim(f"{b.split('/')[-1] if '/' in b else '0'} → "
                                                             f"{a.split('/')[-1]}", b, a)
                                                for b, a in itertools.pairwise(cells)], metric="slope_grid", unit="")
    return out


def sin5x_off_data(records: list[Record]) -> list:
    """E10 on the toy: wherever gradient regularization flattens the function at the training points
    (mean |f′| there significantly below no regularization), is it flatter on the whole grid too?
    One Welch test on the grid per such cell."""
    parts = []
    for reg, weights in varga2017.SIN5X_WEIGHTS.items():
        for w in weights:
            cell = f"{reg}/{w:g}"
            (_, _, at_data), = report.test_claims(records, [report.Claim(cell, "none", cell)], metric="slope_train", unit="")
            if at_data.label == stats.REPRODUCED:
                parts += report.test_claims(records, [report.Claim(f"{cell} flatter on the grid", "none", cell)],
                                            metric="slope_grid", unit="")
    return parts


def _sin5x(ctx: _Context) -> list[LedgerRow]:
    name = "sin5x"
    exp = experiments.get(name)
    recs = ctx.ok(name)
    grid = report.summarise(recs, "slope_grid")
    rows = []
    for reg, tested in sin5x_flatness(recs).items():
        weights = varga2017.SIN5X_WEIGHTS[reg]
        claim = (f"sin(5x): a larger {_NAMES[reg]} weight gives a flatter learned function everywhere, not only at the "
                 "100 training points" + ("" if reg == "spectreg" else " (\"similar curves when using DataGrad\")"))
        rows.append(_row(ctx, name, claim, f"{exp.source}; the weights are not recorded",
                         "— (a figure; the paper does not record its weights)",
                         f"grid mean ∣f′∣: none {grid.get('none', '—')}, largest weight {grid.get(f'{reg}/{weights[-1]:g}', '—')}",
                         describe_parts(tested, spec="+.3g", unit=" (grid ∣f′∣, smaller weight − larger)"),
                         stats.combine([v for *_, v in tested])))
    parts = sin5x_off_data(recs)
    ratio = report.summarise(recs, "slope_ratio_grid_train")
    c = _claim("gradient-norms", 0)
    rows.append(_row(ctx, name, f"{c.claim} — sin(5x): every weight that flattens the function at the training "
                     "points flattens it on the grid too", c.source, "—",
                     (f"grid ÷ training-point ∣f′∣ from {min(s.mean for s in ratio.values()):.2f} to "
                      f"{max(s.mean for s in ratio.values()):.2f} over the cells") if ratio else "—",
                     describe_parts(parts, spec="+.3g", unit=" (grid ∣f′∣, none − this)") if parts else
                     "no weight flattens the function at the training points significantly",
                     stats.combine([v for *_, v in parts]), keys=(_claim_key("gradient-norms", 0),)))
    return rows


def _cifar(ctx: _Context) -> list[LedgerRow]:
    rows = []
    # E6: no printed numbers
    name = "cifar10-small"
    small = ctx.ok(name)
    cells = list(experiments.get(name).cells)
    beats = report.test_claims(small, [report.Claim(f"{c} beats the baseline", c, "baseline") for c in cells[1:]])
    gr = [t for t in beats if t[0].a != "confidence"]
    acc = report.summarise(small, ACC)
    c = _claim(name, 0)
    rows.append(_row(ctx, name, f"{c.claim} — CIFAR-10, N = 2000, no augmentation (E6)", c.source,
                     "— (E6: the paper prints no numbers)", ", ".join(f"{x} {s}" for x, s in acc.items()) or "—",
                     describe_parts(gr) + (f"; confidence (not GR): {next(v.text for cl, _, v in beats if cl.a == 'confidence')}"
                                           if any(cl.a == "confidence" for cl, _, _ in beats) else ""),
                     stats.combine([v for *_, v in gr]), keys=(_claim_key(name, 0),)))
    # the weights of E7, chosen on validation
    name = "cifar10-full-val"
    val = ctx.grid(name)
    try:
        chosen = varga2017.chosen_weights(ctx.profile, ctx.results_dir) if val.complete else {}
    except ResultsMissing:
        chosen = {}
    rows.append(_row(ctx, name, "No paper claim: choosing E7's SpectReg and DataGrad weights on held-out training "
                     "images (the paper gives no weights)", experiments.get(name).source, "—",
                     "chosen: " + ", ".join(f"{r} {w:g}" for r, w in chosen.items()) if chosen else "—",
                     "—", None, label=NOT_TESTED, text="chooses weights; no claim"))
    # E7: the printed accuracies, and the two claims
    name = "cifar10-full"
    paper = papers.reported(name)
    full = ctx.ok(name)
    ours = report.summarise(full, ACC)
    for cell, (pm, ps) in paper.cells.items():
        c = against_value([r["metrics"][ACC] for r in full if r["cell"] == cell and ACC in r["metrics"]], pm)
        rows.append(_row(ctx, name, f"E7, CIFAR-10 with augmentation, {cell}: test accuracy (%)", paper.source,
                         _paper(pm, ps, None) + " (no std or n printed)", str(ours.get(cell, "—")),
                         "ours − paper: " + describe(c, "one-sample t") + _scale_note(ctx, name),
                         keys=(f"cell:{name}/{cell}",), paper_values=[(name, cell, pm, ps)],
                         **_value_verdict(ctx, name, c)))
    for i, reg in enumerate(("datagrad", "spectreg")):
        (_, comp, v), = report.test_claims(full, [report.Claim(f"{reg} beats the baseline", reg, "baseline")])
        c = _claim(name, i)
        gain = paper.cells[reg][0] - paper.cells["baseline"][0]
        rows.append(_row(ctx, name, c.claim, c.source, f"{gain:+.2f} points (no std or n printed)",
                         _pair(ours, reg, "baseline"), f"{reg} − baseline: {describe(comp)}", v,
                         keys=(_claim_key(name, i),),
                         paper_values=[(name, x, *paper.cells[x]) for x in (reg, "baseline")]))
    # gradient norms off the data, E6 and E7
    c = _claim("gradient-norms", 0)
    for name, recs, label in (("cifar10-small", small, "E6"), ("cifar10-full", full, "E7")):
        cells = list(experiments.get(name).cells)
        tested = [t for t in _flatter(recs, cells[1:], "baseline", "jac_fro_test", "at test points")
                  if t[0].a != "confidence" and t[0].b != "confidence"]
        jac = report.summarise(recs, "jac_fro_test")
        rows.append(_row(ctx, name, f"{c.claim} — CIFAR-10 ({label}), ‖J_g‖_F at test points", c.source, "—",
                         ", ".join(f"{x} {s}" for x, s in jac.items()) or "—",
                         describe_parts(tested, spec="+.3g", unit=""), stats.combine([v for *_, v in tested]),
                         keys=(_claim_key("gradient-norms", 0),)))
    return rows


# ---------------------------------------------------------------- Karakida et al.


def _cost(ctx: _Context) -> list[LedgerRow]:
    """The cost claims, from the saved step benches (``gradreg bench --only steps``; on CUDA for the
    paper profile). A bench stores one median timing per step rule and no replicates, so no test."""
    device = BENCH_DEVICE[ctx.profile]
    saved = {label: r for label, r in bench.load_steps(device, ctx.results_dir).items() if r}
    paper = papers.reported("karakida-cost")
    bound = paper.cells["resnet"][0]
    devices = sorted({f"{r['device']} ({r.get('provenance', {}).get('device_name', '?')})" for r in saved.values()})
    run = (f"{ctx.profile} · bench on {', '.join(devices)} · " +
           "; ".join(f"{label} batch {r['batch_size']}, median of {r['reps']} reps" for label, r in saved.items())
           if saved else f"{ctx.profile} · no saved {device} step bench")
    no_test = {"verdict": stats.Verdict(stats.UNRESOLVED, "not resolved (one median timing per step rule, "
                                        "no replicates: no test)")}

    def not_run(labels: list[str]) -> dict[str, Any]:
        return {"verdict": None, "label": NOT_RUN, "text": f"{NOT_RUN} on {device}",
                "command": " && ".join(bench.step_command(label, device) for label in labels)}

    units = bench.matmul_units(depth=4)      # counted, not timed: the same on every machine
    resnet = saved.get("ResNet-8")
    c0, c1 = _claim("karakida-cost", 0), _claim("karakida-cost", 1)
    return [
        _row(ctx, None, c0.claim, c0.source, "— (no number in the abstract)",
             "F-GR ÷ DB step time: " + ", ".join(f"{k} {r['forward_over_db']:.2f}" for k, r in saved.items()) if saved else "—",
             f"one median timing per rule; counted matrix-product flops of one step (4-layer ReLU MLP): "
             f"F-GR {units['gr-forward']:g}, DB {units['gr-db']:g} layer products",
             keys=(_claim_key("karakida-cost", 0),), run=run,
             **(no_test if saved else not_run(list(bench.STEP_BENCHES)))),
        _row(ctx, None, c1.claim, c1.source, f"DB ÷ F-GR > {bound:g} ({paper.protocol})",
             f"DB ÷ F-GR {1 / resnet['forward_over_db']:.2f} (ResNet-8 on {resnet['device']})" if resnet else "—",
             f"{1 / resnet['forward_over_db'] - bound:+.2f} above the paper's bound; one median timing per rule"
             if resnet else "—",
             keys=(*(f"cell:karakida-cost/{cell}" for cell in paper.cells), _claim_key("karakida-cost", 1)),
             paper_values=[("karakida-cost", cell, *v) for cell, v in paper.cells.items()], run=run,
             **(no_test if resnet else not_run(["ResNet-8"]))),
    ]


def karakida_cifar_claims(records: list[Record]) -> list:
    """The CIFAR chapter's comparisons, for each group (mlp, resnet, wrn) and (γ, ε) with runs:
    F-GR beats DB-GR, F-GR beats B-GR, and F-GR at each larger ε beats the smallest ε."""
    ok = [r for r in records if r["status"] == "ok"]
    groups = [g for g in ("mlp", "resnet", "wrn") if any(r["cell"].startswith(g + "/") for r in ok)]
    gammas = {g: sorted({r["config"]["step_options"]["gamma"] for r in ok if r["cell"].startswith(g + "/db")}) for g in groups}
    epsilons = {g: sorted({r["config"]["step_options"]["eps"] for r in ok if r["cell"].startswith(g + "/f")}) for g in groups}
    claims = []
    for g in groups:
        for gamma in gammas[g]:
            for e in epsilons[g]:
                f, b, db = f"{g}/f-g{gamma:g}-e{e:g}", f"{g}/b-g{gamma:g}-e{e:g}", f"{g}/db-g{gamma:g}"
                claims += [report.Claim(f"{g}: F-GR beats DB-GR (γ={gamma:g}, ε={e:g})", f, db),
                           report.Claim(f"{g}: F-GR beats B-GR (γ={gamma:g}, ε={e:g})", f, b)]
            for e in [x for x in epsilons[g] if x > min(epsilons[g])]:
                claims.append(report.Claim(f"{g}: F-GR at ε={e:g} beats ε={min(epsilons[g]):g} (γ={gamma:g})",
                                           f"{g}/f-g{gamma:g}-e{e:g}", f"{g}/f-g{gamma:g}-e{min(epsilons[g]):g}"))
    return [t for t in report.test_claims(ok, claims) if t[1].n_a and t[1].n_b]


def _karakida_cifar(ctx: _Context) -> list[LedgerRow]:
    name = "karakida-cifar"
    tested = karakida_cifar_claims(ctx.ok(name))
    groups = sorted({t[0].text.split(":")[0] for t in tested})
    rows = []
    for i, words in enumerate((("beats DB-GR", "beats B-GR"), ("beats ε=",))):
        c = _claim(name, i)
        parts = [t for t in tested if any(w in t[0].text for w in words)]
        detail = "; ".join(f"{w}: {stats.tally([v for cl, _, v in parts if w in cl.text])}" for w in words)
        rows.append(_row(ctx, name, f"{c.claim} — CIFAR-10 ({', '.join(groups) or 'no runs'})", c.source,
                         "— (no numbers at hand)", spread(parts),
                         detail if parts else "no runs to compare", stats.combine([v for *_, v in parts]),
                         keys=(_claim_key(name, i),)))
    return rows


def diagonal_tests(records: list[Record], metric: str) -> dict[tuple[str, str], tuple[str, stats.Comparison, stats.Verdict]]:
    """The implicit-bias chapter's paired tests of ``karakida2023.diagonal_claims`` on one metric,
    over the grid's α, γ and ε: {(cell a, cell b): (text, comparison, verdict)}, each pair once."""
    from . import karakida2023
    ok = [r for r in records if r["status"] == "ok"]
    alphas = sorted({r["config"]["model_options"]["alpha"] for r in ok})
    tested = {}
    for a in alphas:
        for g in karakida2023.DIAGONAL_GAMMAS:
            for e in karakida2023.DIAGONAL_EPSILONS:
                for text, cell_a, cell_b in karakida2023.diagonal_claims(a, g, e, metric):
                    c = stats.paired(ok, cell_a, cell_b, metric)
                    if c.n_a:
                        tested[cell_a, cell_b] = (text, c, stats.verdict(c, ">"))
    return tested


def _diagonal(ctx: _Context) -> list[LedgerRow]:
    name = "diagonal-linear"
    recs = ctx.ok(name)
    rows = []
    for metric, label in (("alpha_fit", "the fitted scale α_fit"), ("alpha_coord_gmean", "the per-coordinate scale gmean √(u_i v_i)")):
        tested = [(report.Claim(t, a, b), c, v) for (a, b), (t, c, v) in diagonal_tests(recs, metric).items()]
        for i, words in enumerate((("than GD",), ("than B-GR", "than DB-GR"))):
            c = _claim(name, i)
            parts = [t for t in tested if any(w in t[0].text for w in words)]
            detail = "; ".join(f"{w}: {stats.tally([v for cl, _, v in parts if w in cl.text])}" for w in words)
            rows.append(_row(ctx, name, f"{c.claim} — measured by {label} (smaller is richer)", c.source,
                             "— (a theorem, no numbers)", spread(parts, "+.2e", ""),
                             f"paired t-tests, {detail}" if parts else "no runs to compare",
                             stats.combine([v for *_, v in parts]), keys=(_claim_key(name, i),)))
    return rows


def _flooding(ctx: _Context) -> list[LedgerRow]:
    name = "karakida-flooding"
    exp = experiments.get(name)
    recs = ctx.ok(name)
    fgr = "f-g0.05-e0.05"
    levels = {c: o["step_options"]["b"] for c, o in exp.cells.items() if c.startswith("flooding")}
    context = report.test_claims(recs, [report.Claim("F-GR beats GD", fgr, "gd")] +
                                 [report.Claim(f"flooding (b = {b:g}) beats GD", c, "gd") for c, b in levels.items()])
    same = report.test_claims(recs, [report.Claim(f"flooding (b = {b:g}) and F-GR do not differ", c, fgr, "=")
                                     for c, b in levels.items()])
    acc = report.summarise(recs, ACC)
    c0, c1 = _claim(name, 0), _claim(name, 1)
    return [
        _row(ctx, name, f"{c0.claim} — the mechanism: an ascent step below the flood level and the next descent step "
             "are one F-GR penalty step (ε = γ = η)", c0.source, "—", "—",
             "an identity (algebra), checked to float64 rounding in the flooding chapter", None,
             keys=(_claim_key(name, 0),), label=NOT_TESTED, text="an identity, not a measurement"),
        _row(ctx, name, f"{c0.claim} — the runs: flooding's test accuracy does not differ from F-GR's (γ = ε = η)",
             c0.source, "—", ", ".join(f"{c} {s}" for c, s in acc.items()) or "—",
             describe_parts(same) + ("; context: " + describe_parts(context) if context and recs else ""),
             stats.combine([v for *_, v in same]), keys=(_claim_key(name, 0),)),
        _row(ctx, name, c1.claim, c1.source, "—", "—",
             "an identity: F-GR with γ = ε is SAM with ρ = ε‖g‖ without normalising g (checked in the cost chapter)",
             None, keys=(_claim_key(name, 1),), label=NOT_TESTED, text="an identity, not a measurement"),
    ]


BUILDERS = (("varga2017", (_quickstart, _table1, _table1_protocol, _sin5x, _sizes, _family, _wd, _cifar)),
            ("karakida2023", (_cost, _karakida_cifar, _diagonal, _flooding)))
PAPER_IDS = tuple(p for p, _ in BUILDERS)


# ---------------------------------------------------------------- the ledger


def rows(profile: str = "cpu", results_dir: str | None = None, train_missing: bool = False) -> list[LedgerRow]:
    """Every row of the ledger at a profile, from the stored results (training the missing runs first
    if ``train_missing``, as a chapter does at smoke). A row whose experiment lacks runs at this
    profile says so and gives ``experiments.command(name, profile)``."""
    if profile not in experiments.PROFILES:
        raise GradregError(f"unknown profile {profile!r}; known: {', '.join(experiments.PROFILES)}")
    ctx = _Context(profile, results_dir, train_missing)
    out: list[LedgerRow] = []
    for paper_id, builders in BUILDERS:
        for build in builders:
            out += [replace(_unless_missing(ctx, r), paper_id=paper_id) for r in build(ctx)]
    return out


def _unless_missing(ctx: _Context, row: LedgerRow) -> LedgerRow:
    """A row of an experiment whose grid lacks runs at this profile: not yet run, with the command."""
    if row.experiment is None:
        return row
    g = ctx.grid(row.experiment)
    if g.complete:
        return row
    command = run_command(row.experiment, ctx.profile)
    stored = f"{g.stored} of {g.total} runs stored" if g.total is not None else "its settings need another grid's results"
    return replace(row, label=NOT_RUN, verdict=None, verdict_text=f"{NOT_RUN} at {ctx.profile} scale ({stored})",
                   command=command)


def counts(rows: list[LedgerRow]) -> dict[str, int]:
    """How many rows carry each label, in the order of ``LABELS``."""
    return {label: sum(r.label == label for r in rows) for label in LABELS}


def tally(rows: list[LedgerRow]) -> str:
    """The counts in words, e.g. "12 reproduced, 3 contradicted, 20 not resolved, …"."""
    return ", ".join(f"{n} {label}" for label, n in counts(rows).items())


def table(rows: list[LedgerRow]) -> str:
    """The ledger as a Markdown table (``report.rows_table``), one line per row."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    return report.rows_table([{k: cell(v) for k, v in r.cells().items()} for r in rows])


def commands(rows: list[LedgerRow]) -> list[str]:
    """The distinct commands that would fill the ledger's not-yet-run rows, in order."""
    return list(dict.fromkeys(r.command for r in rows if r.command))


def expected_keys() -> set[str]:
    """What the ledger must account for: every claim of papers.json's ``_claims`` and every cell of
    every experiment with reported numbers."""
    data = papers._all()
    keys = {_claim_key(topic, i) for topic, claims in data["_claims"].items() for i in range(len(claims))}
    keys |= {f"cell:{name}/{cell}" for name, entry in data.items() if not name.startswith("_") for cell in entry["cells"]}
    return keys


def uncovered(rows: list[LedgerRow]) -> list[str]:
    """Registered experiments without a row and expected keys (``expected_keys``) no row accounts for."""
    have = {k for r in rows for k in r.keys}
    named = {r.experiment for r in rows}
    return sorted([f"experiment:{n}" for n in experiments.REGISTRY if n not in named] +
                  [k for k in expected_keys() if k not in have])
