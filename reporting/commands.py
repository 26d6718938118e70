"""CLI commands of the reporting side: `ldct-node risk ...` and clinical-import helpers.

`risk_app` is a Typer app that the node's CLI mounts as `ldct-node risk`. Bad input ends with
a one-line "error: ..." on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from reporting.clinical_records import ClinicalCsvError, ClinicalRecord, parse_clinical_csv
from reporting.risk import COMORBIDITIES, RiskModelError, load_risk_model

if TYPE_CHECKING:  # pandas/scipy/statsmodels load only when a fit runs: fast CLI start
    from reporting.risk_fit import FitResult

risk_app = typer.Typer(
    help="Prognostic risk model (Bartoli et al. 2022 Model C): refit, inspect.",
    no_args_is_help=True,
)

BAD_INPUT_EXIT_CODE = 2

FEATURE_LABELS = {
    "male": "Men (ref. women)",
    "age_45_64": "Age 45-64 (ref. 18-44)",
    "age_over_64": "Age >64 (ref. 18-44)",
    "hypertension": "Hypertension",
    "diabetes": "Diabetes mellitus",
    "cancer": "Cancer",
    "respiratory_disease": "Respiratory diseases",
    "cardiac_disease": "Cardiac diseases",
    "obesity": "Obesity",
    "onset_over_7_days": "Onset >7 days (ref. <=7 / asympt.)",
    "ct_ss": "CT-SS (per SD)",
    "lesion_extent_pct": "Automatic lesion extent (per SD)",
}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=BAD_INPUT_EXIT_CODE)


def fit_report_table(result: FitResult) -> Table:
    """Table 3 layout: odds ratios [95% CI] per model, C-statistics in the last row."""
    labels = list(result.models)
    table = Table(title="Multivariate logistic regressions (training part)", show_lines=False)
    table.add_column("Covariate")
    for label in labels:
        table.add_column(f"Model {label} OR [95% CI]", justify="right")
    features: list[str] = []
    for model in result.models.values():
        features += [f for f in model.features if f not in features]
    for feature in features:
        cells = []
        for label in labels:
            odds = result.models[label].odds_ratios.get(feature)
            cells.append(f"{odds['odds_ratio']:.2f} [{odds['ci_low']:.2f};{odds['ci_high']:.2f}]" if odds else "")
        table.add_row(FEATURE_LABELS.get(feature, feature), *cells)
    c_cells = []
    for label in labels:
        c = result.models[label].c_statistic
        c_cells.append(f"{c.value:.2f} [{c.ci_low:.2f}-{c.ci_high:.2f}]")
    table.add_row("C-statistic, validation (DeLong 95% CI)", *c_cells, style="bold")
    return table


def print_fit_report(result: FitResult, console: Console) -> None:
    cohort = result.cohort
    console.print(
        f"Cohort {cohort['source']}: {cohort['n']} patients, {cohort['events']} events "
        f"({cohort['event_rate']:.1%}); training {cohort['n_train']}, validation "
        f"{cohort['n_validation']} (seed {cohort['seed']})"
    )
    console.print(fit_report_table(result))
    for name, test in result.lr_tests.items():
        console.print(
            f"Likelihood-ratio test {name.replace('_', ' ')}: chi2 {test['statistic']:.1f}, "
            f"df {test['df']}, p = {test['p_value']:.2g}"
        )
    for label, tests in result.interaction_tests.items():
        significant = [
            f"{name} (p = {t['p_value']:.2g})" for name, t in tests.items() if "p_value" in t and t["p_value"] < 0.05
        ]
        console.print(
            f"Model {label} score x covariate interactions with p < 0.05 (not in the model): "
            + (", ".join(significant) if significant else "none")
        )
    console.print(
        f"High-risk cutoff (Youden, training, Model C): probability >= {result.cutoff.threshold:.3f} "
        f"(sensitivity {result.cutoff.sensitivity:.2f}, specificity {result.cutoff.specificity:.2f}; "
        f"validation {result.validation_sensitivity:.2f} / {result.validation_specificity:.2f})"
    )
    console.print(f"Lesion extent alone, Youden cutoff (training): {result.extent_cutoff.threshold:.1f} %")


@risk_app.command("fit")
def fit_command(
    cohort: Annotated[Path, typer.Argument(help="cohort CSV (see `reporting/cohort.py`)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the Model C model file")],
    json_report: Annotated[Path | None, typer.Option("--json", help="also write the full report as JSON")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the 70/30 split")] = 2022,
    name: Annotated[str, typer.Option("--name", help="model name stored in the file")] = "model_c_local",
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="leave a clinical covariate out (repeatable), e.g. obesity"),
    ] = None,
    interactions: Annotated[
        bool,
        typer.Option("--interactions/--no-interactions", help="test score x covariate interactions"),
    ] = True,
) -> None:
    """Refit Models A, B (if ct_ss is present) and C on COHORT.csv and write Model C."""
    from reporting.cohort import CohortError
    from reporting.risk_fit import FitError, fit_cohort_file

    try:
        result = fit_cohort_file(
            cohort, seed=seed, exclude=tuple(exclude or ()), model_name=name, interactions=interactions
        )
    except (CohortError, FitError) as exc:
        _fail(str(exc))
        return
    try:
        result.model.save(out)
        if json_report is not None:
            json_report.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write output: {exc}")
    print_fit_report(result, Console())
    typer.echo(f"wrote model {out}" + (f" and report {json_report}" if json_report else ""))


@risk_app.command("show")
def show_command(
    model_path: Annotated[Path | None, typer.Argument(help="model file; default: the shipped Model C")] = None,
) -> None:
    """Print a model file's coefficients, cutoff and provenance."""
    try:
        model = load_risk_model(model_path)
    except RiskModelError as exc:
        _fail(str(exc))
        return
    console = Console()
    console.print(f"{model.name} {model.version} ({model.calibration_status})")
    table = Table("Feature", "Odds ratio", "log odds")
    for feature, beta in model.coefficients.items():
        table.add_row(FEATURE_LABELS.get(feature, feature), f"{math.exp(beta):.2f}", f"{beta:.4f}")
    table.add_row("Intercept", "", f"{model.intercept:.4f}")
    console.print(table)
    for score, stats in model.standardisation.items():
        console.print(f"{score}: standardised with mean {stats['mean']:.3f}, SD {stats['sd']:.3f}")
    console.print(f"High-risk cutoff: probability >= {model.cutoff:.4f}")
    for key in ("source", "method", "notes"):
        if key in model.provenance:
            console.print(f"{key}: {model.provenance[key]}")


def clinical_import_parse(path: Path) -> list[ClinicalRecord]:
    """Parse a clinical CSV for `ldct-node clinical import`; on bad input print one error
    line to stderr and exit with code 2 (the caller stores the records)."""
    try:
        return parse_clinical_csv(path)
    except ClinicalCsvError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def clinical_import_summary(records: list[ClinicalRecord]) -> str:
    """One line for the import's output: counts only, no identifiers (no PHI)."""
    by_accession = sum(1 for r in records if r.accession_number)
    known = {c: sum(1 for r in records if getattr(r, c) is not None) for c in COMORBIDITIES}
    onset = sum(1 for r in records if r.days_since_onset is not None or r.symptom_onset_date or r.asymptomatic)
    return (
        f"{len(records)} record(s) ({by_accession} by accession number, "
        f"{len(records) - by_accession} by patient ID + study date); known: "
        + ", ".join(f"{c} {n}" for c, n in known.items())
        + f", onset {onset}"
    )
