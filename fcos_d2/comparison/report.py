"""report.md, plots and report.json from the run directories of a comparison.

The runs are read and evaluated by ``results``; the tables are ``tables``', the plots
``plots``'; this module judges the claims and writes the text around them.
"""

import json
import os
from typing import Dict, List, Optional

import numpy as np
from tabulate import tabulate

from . import bootstrap, convergence, inference_timing, plots, tables
from .results import (
    AT_CONVERGENCE,
    ITERATIONS,
    DatasetResults,
    group_series,
    load_runs,
    pairings,
    variant_differences,
)
from .runner import RUN_FILE
from .statistics import ALL, Series, metric_estimate
from .verdicts import (
    CLAIMS,
    CLEAR,
    CROWDED,
    JUDGED_ON,
    MIN_GROUP_BOXES,
    data_to_settle,
    judge_claims,
)


def _verdict_record(dataset: str, budget: str, fcos: Series, baseline: Series, verdict) -> dict:
    d = verdict.difference
    return {
        "dataset": dataset,
        "budget": budget,
        "fcos": fcos.label,
        "baseline": baseline.label,
        "baseline_name": baseline.name,
        "claim": verdict.claim,
        "verdict": verdict.verdict,
        "margin": verdict.margin,
        "difference": None if d is None else [d.value, d.low, d.high],
        "data_to_settle": None
        if d is None
        else data_to_settle(d.value, d.low, d.high, verdict.margin),
        "evidence": verdict.evidence,
    }


def _clock_paragraph(clock: Optional[dict]) -> List[str]:
    """How training time is counted, and the timing it is counted on."""
    if clock is None:
        return [
            "Training time is each run's own wall clock, evaluations along the way excluded "
            "(runs timed on different machines do not compare)."
        ]
    speeds = ", ".join(
        f"{name} {seconds:.3f}" for name, seconds in clock["seconds_per_iteration"].items()
    )
    rounds = len(next(iter(clock["rounds"].values()), []))
    return [
        "Training time is on one clock: each model's seconds per training iteration, timed "
        f"back-to-back on one machine ({clock['machine']['processor']}, "
        f"{clock['machine']['cpus']} CPUs, {clock['measured']}; {rounds} round(s) of "
        f"{clock['iterations_timed']} iterations after {clock['warmup_iterations']} untimed, "
        "the order reversed each round), times the iterations a run trained; it is what "
        f"the learning curves, the time to a common AP and the time budgets use. Seconds per "
        f"iteration: {speeds} (timing.json). A run's own wall clock (*wall min*) is shown "
        "beside it: the runs were trained over several sessions, on machines whose speed "
        "differed by up to three times, so wall clocks compare only within a session.",
    ]


def _variants_section(results: DatasetResults) -> List[str]:
    records = variant_differences(results)
    if not records:
        return []
    return [
        "### Variants against their reference",
        "",
        "Differences (model − reference) paired over validation images, with 95% intervals; "
        "the reference is the model of the same kind and schedule that the verdicts judge; "
        "for a run trained for that model's own schedule time, its schedule runs.",
        "",
        tables.variants_table(records),
        "",
    ]


def baseline_title(series: Series) -> str:
    """ "Mask R-CNN" or "Faster R-CNN" (and its proposals when not Detectron2's RPN), with
    the config name: the heading of that baseline's verdicts."""
    kind = "Mask R-CNN" if _has_masks(series) else "Faster R-CNN"
    generator = series.runs[0].get("proposal_generator")
    if generator and generator != "RPN":
        kind += f" with {generator} proposals"
    return f"{kind} ({series.name})"


def _has_masks(series: Series) -> bool:
    return all("segm" in next(iter(r["curve"][-1]["datasets"].values())) for r in series.runs)


def judge_all(
    all_results: List[DatasetResults], plateaus: Dict[str, convergence.Plateau]
) -> List[dict]:
    """Every verdict: each validation set, each FCOS / baseline pair and budget."""
    multiples = {name: plateau.multiple for name, plateau in plateaus.items()}
    records = []
    for results in all_results:
        for budget, fcos, baseline in pairings(results, multiples):
            longer = len(plateaus[fcos.name].trained) + len(plateaus[baseline.name].trained) > 2
            if budget == AT_CONVERGENCE and not longer:
                continue  # both at their only schedule: the equal-iterations verdicts again
            verdicts = judge_claims(
                fcos, baseline, results.group_sizes[CROWDED], results.group_sizes[CLEAR]
            )
            if budget == AT_CONVERGENCE:
                verdicts[0].evidence += "; " + _time_to_plateau(fcos, baseline, plateaus)
            records += [
                _verdict_record(results.dataset, budget, fcos, baseline, v) for v in verdicts
            ]
    return records


def _time_to_plateau(fcos: Series, baseline: Series, plateaus: Dict[str, convergence.Plateau]):
    """Claim 1 at convergence: each model's training time to its own plateau AP."""
    parts = []
    for series in (fcos, baseline):
        minutes = np.mean(series.clock_train_seconds()) / 60
        plateau = plateaus[series.name]
        state = (
            ""
            if plateau.reached
            else ", still rising"
            if plateau.doublings
            else ", no longer schedule"
        )
        parts.append(
            f"{minutes:.1f} min ({series.multiple:g}×, {series.point[ALL]['AP']:.1f} AP{state})"
        )
    ratio = np.mean(fcos.clock_train_seconds()) / np.mean(baseline.clock_train_seconds())
    return (
        f"to its own plateau: FCOS {parts[0]} vs {parts[1]}, FCOS's time "
        f"{100 * ratio:.0f}% of the baseline's"
    )


def _verdict_sections(records: List[dict], all_results, dataset: str) -> List[str]:
    """One verdict table per baseline, the baseline named in its heading."""
    lines = []
    results = next(r for r in all_results if r.dataset == dataset)
    by_label = {s.label: s for s in results.series}
    baselines = dict.fromkeys(r["baseline_name"] for r in records if r["dataset"] == dataset)
    for name in baselines:
        rows = [r for r in records if r["dataset"] == dataset and r["baseline_name"] == name]
        title = baseline_title(by_label[rows[0]["baseline"]])
        lines += [f"### Verdicts: FCOS against {title}", "", tables.verdict_table(rows), ""]
    return lines or ["### Verdicts", "", tables.verdict_table([]), ""]


def shown_series(results: DatasetResults, plateaus: Dict[str, convergence.Plateau]):
    """The series the plots draw: the 1× schedules, the time budgets, and each model's
    schedule at convergence."""
    at_convergence = {(name, p.multiple) for name, p in plateaus.items()}
    return [
        s
        for s in results.series
        if s.multiple == 1 or (s.schedule == ITERATIONS and (s.name, s.multiple) in at_convergence)
    ]


def _convergence_section(plateaus, all_results: List[DatasetResults]) -> List[str]:
    if not any(len(p.trained) > 1 for p in plateaus.values()):
        return []
    datasets = [r.dataset for r in all_results]
    return [
        "## At convergence",
        "",
        "Each model at 1×, 2×, 4× ... its schedule (LR steps at the same fractions). "
        + convergence.RULE,
        "",
        tables.doublings_table(plateaus, datasets),
        "",
        "Each model at the schedule it is judged at (training time on the clock; inference "
        "time per image and peak training memory as each run measured them: runs of other "
        "sessions ran on machines of other speeds, see *speed probe* in the metrics):",
        "",
        tables.convergence_table(plateaus, all_results),
        "",
        "![AP and recall against schedule](ap_vs_schedule.png)",
        "",
    ]


def _inference_section(inference: Optional[dict]) -> List[str]:
    if not inference:
        return []
    rows = [
        [
            name,
            f"{model['schedule_multiple']:g}×",
            f"{model['median_s']:.4f}",
            f"{model['mean_s']:.4f}",
        ]
        for name, model in inference["models"].items()
    ]
    return [
        f"Inference timed back-to-back (`{inference_timing.TIMING_FILE}`): each run's final "
        f"model on the same {inference['images']} images of {inference['dataset']}, "
        f"{inference['threads']} threads, warm ({inference_timing.WARMUP_IMAGES} images run "
        "untimed first), "
        f"{inference['rounds']} rounds in alternating order; seconds per image:",
        "",
        tabulate(rows, headers=["run", "schedule", "median s/img", "mean s/img"], tablefmt="pipe"),
        "",
    ]


def _shared_machine_notes(runs: List[dict]) -> List[str]:
    shared = [r for r in runs if r.get("shared_machine")]
    if not shared:
        return []
    return [
        "Runs that did not have the machine to themselves (their wall clock and s/iter in "
        "run are not timings; their AP is unaffected, and training time on the clock does "
        "not use them):",
        "",
        *(f"- {os.path.basename(r['run_dir'])}: {r['shared_machine']}" for r in shared),
        "",
    ]


def write_report(
    runs_root: str,
    output_dir: str,
    num_resamples: int = 1000,
    seed: int = 0,
    command: str = "",
    clock: Optional[dict] = None,
    inference: Optional[dict] = None,
) -> Dict:
    """Analyse every run under ``runs_root``; write report.md, plots and report.json there.

    ``clock``: the comparison's timing (``fcos_d2.comparison.timing``); training times are
    taken on it, for the models it times. ``inference``: trained models' inference timed
    back-to-back (``inference_timing``), shown at convergence."""
    os.makedirs(output_dir, exist_ok=True)
    runs = load_runs(runs_root)
    if not runs:
        raise FileNotFoundError(f"no {RUN_FILE} under {runs_root}/*/: nothing to report")
    series = group_series(runs)
    datasets = list(runs[0]["curve"][-1]["datasets"])
    all_results = [DatasetResults(d, series, num_resamples, seed, clock) for d in datasets]
    plateaus = convergence.find_plateaus(all_results, num_resamples, seed)

    def shown(results: DatasetResults) -> List[Series]:
        return shown_series(results, plateaus)

    plots.plot_learning_curves(
        all_results, os.path.join(output_dir, "ap_vs_time.png"), clock is not None, shown
    )
    plots.plot_schedules(all_results, os.path.join(output_dir, "ap_vs_schedule.png"))
    plots.plot_overlap(all_results, os.path.join(output_dir, "recall_by_overlap.png"), shown)
    plots.plot_recall_vs_iou(all_results, os.path.join(output_dir, "recall_vs_iou.png"), shown)
    records = judge_all(all_results, plateaus)

    against_rcnn = any(s.meta_architecture != "FCOS" for s in series)
    lines = [
        "# FCOS against R-CNN baselines: do the claims hold?"
        if against_rcnn
        else "# FCOS variants against the default FCOS",
        "",
        f"Command: `{command}`" if command else "",
        "",
        f"Runs: {len(runs)} ({', '.join(f'{s.label}: {len(s.runs)} seed(s)' for s in series)}). "
        f"Every number is computed with pycocotools' matching from the saved predictions. "
        "Intervals are 95% bootstrap percentile intervals "
        f"({num_resamples} resamples, seed {seed}) "
        "over validation images and, where a model has several seeds, over its seeds "
        "(`fcos_d2/comparison/statistics.py` says how the two are pooled); `±` is the standard "
        "deviation across seeds. Three budgets: *equal iterations* (each model's 1× schedule), "
        "*equal time* (FCOS for as long as the baseline's schedule takes on the clock) and "
        "*at convergence* (each model at its plateau schedule, below).",
        "",
        *_clock_paragraph(clock),
        "",
        "![AP against training time](ap_vs_time.png)",
        "",
        *_convergence_section(plateaus, all_results),
        *_inference_section(inference),
    ]
    for results in all_results:
        lines += [
            f"## {results.dataset} ({results.num_images} images, {results.group_sizes[ALL]} boxes)",
            "",
            *_verdict_sections(records, all_results, results.dataset),
            "### Metrics",
            "",
            tables.metrics_table(results),
            "",
            *tables.overrun_notes(results),
            *_variants_section(results),
            "### Proposals of the R-CNNs",
            "",
            tables.proposals_table(results),
            "",
            "### By overlap",
            "",
            "A box's overlap is its largest IoU with another box of its image; in each group the "
            "other boxes count as crowd (detections of them are ignored). Boxes per group in "
            f"parentheses; a group of fewer than {MIN_GROUP_BOXES} boxes gets no interval.",
            "",
            tables.overlap_tables(results),
        ]
    lines += [
        *_shared_machine_notes(runs),
        "## Plots",
        "",
        "![recall by overlap](recall_by_overlap.png)",
        "",
        "![recall against IoU](recall_vs_iou.png)",
        "",
        "## How the verdicts are reached",
        "",
        "See `fcos_d2/comparison/verdicts.py`: a claim is *supported* only when the whole "
        "interval of its difference lies beyond the margin in its favour, *not supported* "
        "only when it lies wholly beyond the margin against it, and *inconclusive* otherwise. "
        "*To settle*: for an inconclusive verdict, about how many times the data (validation "
        "images and seeds) would narrow its interval (as 1/√n) past the margin if the estimate "
        "stayed put; an estimate inside the margin is a difference too small to matter, which "
        "more data only confirms.",
        "",
        "Each claim's difference (positive favours the claim):",
        "",
        *(f"- *{claim}*: {judged_on}." for claim, judged_on in zip(CLAIMS, JUDGED_ON)),
    ]
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    summary = {
        "num_resamples": num_resamples,
        "datasets": {
            r.dataset: {
                s.label: {
                    "runs": [os.path.basename(run["run_dir"]) for run in s.runs],
                    "train_seconds": [run["train_seconds"] for run in s.runs],
                    "clock_train_seconds": s.clock_train_seconds(),
                    "metrics": {
                        g: {m: metric_estimate(s, g, m).__dict__ for m in bootstrap.METRICS}
                        for g in s.point
                    },
                }
                for s in r.series
            }
            for r in all_results
        },
        "variants": {
            r.dataset: [
                {
                    "variant": v["variant"].label,
                    "reference": v["reference"].label,
                    "differences": {k: e.__dict__ for k, e in v["differences"].items()},
                }
                for v in variant_differences(r)
            ]
            for r in all_results
        },
        "plateaus": {
            name: {
                "multiple": p.multiple,
                "reached": p.reached,
                "status": p.status(),
                "trained": p.trained,
                "doublings": [
                    {
                        "shorter": d.shorter,
                        "longer": d.longer,
                        "seeds": d.seeds,
                        "gains": {k: e.__dict__ for k, e in d.gains.items()},
                    }
                    for d in p.doublings
                ],
            }
            for name, p in plateaus.items()
        },
        "inference_timing": inference,
        "verdicts": records,
    }
    with open(os.path.join(output_dir, "report.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
