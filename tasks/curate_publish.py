"""Prefect tasks that end a curation: publish the curated manifest, log the MLflow run; and
the markdown artifacts a person reads first."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from housegan import curate
from housegan.config import get_settings
from housegan.steps import curate as steps
from housegan.steps.curate import CurateResult, TypesResult
from tasks.runtime import in_task_run, run_step, step_task, task_logger


@step_task(steps.publish_curated, cache=False, retries=2, retry_delay_seconds=5)
def publish_task(inputs: CurateResult) -> CurateResult:
    """A new version of the curated manifest, pointer written last."""
    published = run_step(steps.publish_curated, inputs)
    task_logger(__name__).info("curated manifest -> %s", published.curated_uri)
    return published


@step_task(steps.log_curation, cache=False, retries=2, retry_delay_seconds=5)
def log_task(inputs: CurateResult, parent_run_id: str | None = None) -> CurateResult:
    """One MLflow run (funnel, galleries, classifier and fine-tune accuracy, the dataset), nested
    under a refresh's run when given, plus the funnel table and summary artifacts."""
    logged = run_step(steps.log_curation, inputs, parent_run_id=parent_run_id)
    if in_task_run():
        funnel = curate.read_funnel(logged.filter.run_uri, get_settings().storage_options())
        create_table_artifact(
            funnel.to_dict(orient="records"),
            key="curate-funnel",
            description="Photos reaching each stage, per (city, image type)",
        )
        create_markdown_artifact(summary_markdown(logged), key="curate-summary")
    task_logger(__name__).info("curation logged to MLflow run %s", logged.mlflow_run_id)
    return logged


def summary_markdown(result: CurateResult) -> str:
    funnel, filtered, clusters = result.filter.funnel, result.filter, result.clusters
    tuned = result.finetune
    lines = [
        f"# Curated manifest\n\n`{result.curated_uri}` (from `{result.manifest_uri}`)\n",
        f"MLflow run `{result.mlflow_run_id}`; embeddings `{result.embed.tag}`: "
        f"{result.embed.computed} computed, {result.embed.reused} reused"
        + (f"; fine-tuned, held-out accuracy {tuned.holdout_accuracy}.\n" if tuned else ".\n"),
        "| stage | photos |",
        "| --- | ---: |",
        *(f"| {stage} | {count} |" for stage, count in funnel.items()),
        "",
        "| dropped because | photos | gallery |",
        "| --- | ---: | --- |",
        *(
            f"| {reason} | {n} | {filtered.galleries.get(reason, '')} |"
            for reason, n in filtered.drop_counts.items()
        ),
        "",
        "Near-duplicate cosine thresholds (calibrated per cluster): "
        + ", ".join(f"{g}: {v:.4f}" for g, v in filtered.near_duplicate_cosine.items()),
        "",
        "| cluster | photos | gallery |",
        "| --- | ---: | --- |",
        *(f"| {c} | {clusters.sizes.get(c, 0)} | {uri} |" for c, uri in clusters.galleries.items()),
    ]
    return "\n".join(lines)


def classifier_markdown(result: TypesResult) -> str:
    lines = [f"# Image types\n\n{result.type_counts}\n", f"Labels used: {result.labels_used}\n"]
    report = result.classifier
    if report is None:
        lines.append("No labels: types come from `cluster.cluster_to_type` (else `unknown`).")
        return "\n".join(lines)
    lines.append(f"Held-out accuracy ({report['cv_folds']}-fold CV): {report['cv_accuracy']}\n")
    confusion = report.get("confusion")
    if confusion:
        classes = list(confusion)
        lines += [
            "| true \\ predicted | " + " | ".join(classes) + " |",
            "| --- |" + " ---: |" * len(classes),
            *(
                f"| {t} | " + " | ".join(str(confusion[t][p]) for p in classes) + " |"
                for t in classes
            ),
        ]
    return "\n".join(lines)
