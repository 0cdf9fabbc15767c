"""results.md of the GPU check (benchmarks/gpu_check.py): the stage table, then one section per stage that got as far
as its figures.
"""

from __future__ import annotations

from typing import Any


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    stages = results["stages"]
    machine = stages.get("environment", {}).get("machine", {})
    where = (f"{machine['gpu']} ({machine['gpu_memory_gib']} GiB, compute capability {machine['compute_capability']}, "
             f"CUDA {machine['cuda']})" if "gpu" in machine else "no GPU")  # fmt: skip
    lines = ["# GPU check" + (": SMOKE RUN (tiny settings; these are not GPU figures)" if results["smoke"] else ""), ""]
    lines += [f"- Date: {results['date']}", f"- Command: `{results['command']}`",
              f"- Machine: {where}; {machine.get('cpu', '?')}, {machine.get('cpu_cores', '?')} cores; "
              f"torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}",
              f"- Wall time: {results.get('wall_seconds', 0):.0f} s of the {results['budget_seconds']:.0f} s budget "
              f"(install of the carried wheels included)", "",
              "| stage | status | seconds | planned | note |", "|---|---|---:|---:|---|"]  # fmt: skip
    for name, stage in stages.items():
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']:.1f} | {stage['planned']:.0f} | "
                     f"{stage.get('note', '')} |")
    # Each stage's section, when the stage got as far as the figures it shows (keyed by one of them).
    sections = {"environment": ("versions", environment_markdown), "tests": ("counts", tests_markdown),
                "throughput": ("rows", throughput_markdown), "sampling": ("rows", sampling_markdown),
                "fp16_resume": ("losses", fp16_markdown), "quality": ("steps", quality_markdown)}  # fmt: skip
    for name, (key, render) in sections.items():
        if key in stages.get(name, {}):
            lines += ["", *render(stages[name])]
    return "\n".join(lines) + "\n"


def environment_markdown(stage: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {version or 'missing'}" for name, version in stage["versions"].items())
    carried = ", ".join(stage["carried_wheels"]) or "none"
    unmet = "; ".join(stage["unmet_requirements"]) or "none"
    return ["## Environment", "", f"- Versions: {versions}",
            f"- Carried wheels: {carried}",
            f"- Unmet requirements: {unmet}"]  # fmt: skip


def tests_markdown(stage: dict[str, Any]) -> list[str]:
    where = "on CUDA" if stage["cuda"] else "without CUDA (the CUDA-only tests skip)"
    return ["## Tests of the GPU path", "", f"`{stage['command']}` {where}: {stage['note']}"]


def throughput_markdown(stage: dict[str, Any]) -> list[str]:
    header = stage["header"]
    rows = {row["mode"]: row["images_per_second"] for row in stage["rows"]}
    reference = rows.get("fp32")
    lines = ["## Training throughput (bare step)", "",
             f"{header.get('device', '?')}; preset {header.get('model')} ({fmt(header.get('parameters_m'))} M "
             f"parameters), {header.get('resolution')}x{header.get('resolution')}, batch {header.get('batch_size')}, "
             f"{header.get('steps')} timed AdamW steps per mode (fused on CUDA); fp32 runs with TF32 "
             f"{'on' if header.get('tf32') else 'off'}; fp16 with a GradScaler; the recipe's mode is "
             f"{stage['recipe_mode']}.", "", "| mode | images/s | vs fp32 |", "|---|---:|---:|"]  # fmt: skip
    for row in stage["rows"]:
        ratio = f"{row['images_per_second'] / reference:.2f}x" if reference else "-"
        lines.append(f"| {row['mode'].replace('+', ' + ')} | {row['images_per_second']:.1f} | {ratio} |")
    lines += [f"| {mode.replace('+', ' + ')} | not measured (time) | |" for mode in stage["not_measured"]]
    found = stage.get("largest_batch")
    if found:
        beyond = f"{found['first_failing']} failed: {found['error']}" if found["first_failing"] else \
            f"the search stopped at its limit of {found['limit']}"
        lines += ["", f"Largest batch that fits ({found['mode']}): {found['largest_fitting']} ({beyond}); "
                      f"{fmt(found['images_per_second'])} images/s there."]
    return lines


def sampling_markdown(stage: dict[str, Any]) -> list[str]:
    lines = ["## Sampling", "", "| sampler | steps | UNet weights | images | guidance | seconds |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for row in stage["rows"]:
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['precision']} | {row['num_images']} | "
                     f"{row['guidance_scale']:g} | {row['seconds']:.2f} |")
    return lines


def fp16_markdown(stage: dict[str, Any]) -> list[str]:
    k = stage["resumed_from_step"]
    yes = {True: "yes", False: "NO"}
    scaler_note = "" if stage["run_info"]["device"] == "cuda" else " (off CUDA, Accelerate runs fp16 in fp32 unscaled)"
    return ["## fp16 launch and resume", "",
            f"- One-process `accelerate launch` with `--mixed_precision fp16` ({stage['run_info']['device']}), "
            f"{2 * k} steps with a checkpoint at {k}, then resumed from it: launches took "
            f"{stage['launch_seconds'][0]:.0f} s and {stage['launch_seconds'][1]:.0f} s",
            f"- Finite losses: {yes[stage['finite_losses']]}; grad-scaler state in the checkpoint: "
            f"{yes[stage['grad_scaler_state_saved']]}{scaler_note}; steps the grad scaler skipped: "
            f"{stage['skipped_steps']}",
            f"- Identical continuation (losses of steps {k + 1}-{2 * k}): {yes[stage['identical_continuation']]} "
            f"(largest relative difference {fmt(stage['max_relative_difference'], 3)})"]  # fmt: skip


def quality_markdown(stage: dict[str, Any]) -> list[str]:
    fraction = stage["loop_fraction"]
    bar = "-" if fraction is None else ("met" if fraction >= 0.7 else "NOT met")
    lines = ["## Quality run", "", f"- `{stage['command']}`",
             f"- {stage['steps']} steps x batch {stage['batch_size']} = {stage['images_seen']} images in a "
             f"{stage['loop_seconds']:.0f} s training loop (asked for {stage['planned_training_seconds']:.0f} s with "
             f"--max_train_minutes, which timed {stage['timed_steps_per_second']:.2f} steps/s; the launch took "
             f"{stage['launch_seconds']:.0f} s in all); final loss {fmt(stage['final_loss'], 4)}, mean "
             f"of the last 10 % {fmt(stage['mean_loss_last_10pct'], 4)}; finite losses: "
             f"{'yes' if stage['finite_losses'] else 'NO'}",
             f"- Training loop {stage['images_per_second']:.1f} images/s (median step "
             f"{stage['median_images_per_second']:.1f}) against the bare step's "
             f"{fmt(stage['bare_images_per_second'])} ({stage['bare_source']}): "
             f"{fmt(None if fraction is None else 100 * fraction)} % (bar >= 70 %: {bar})"]  # fmt: skip
    if "evaluation" in stage:
        sampling = stage["sampling"]
        lines += [f"- `{stage['evaluation_command']}` ({sampling['scheduler']} {sampling['num_inference_steps']} "
                  f"steps, guidance {sampling['guidance_scale']:g}, UNet in {sampling['dtype']}, seeds "
                  f"{' '.join(map(str, sampling['seeds']))}; {stage['seconds_per_image']:.4f} s per image)", "",
                  "| conditions | images | accuracy (mean ± std over seeds) | exact match |", "|---|---:|---:|---:|"]
        for name, result in stage["evaluation"].items():
            lines.append(f"| {name} | {result['num_conditions']}x{result['num_seeds']} | "
                         f"{100 * result['accuracy_mean']:.1f} ± {100 * result['accuracy_std']:.1f} % | "
                         f"{100 * result['exact_match_mean']:.1f} % |")
        lines += ["", f"Pictures: samples.png (the run's final grid), eval_grid.png (top to bottom: "
                      f"{', '.join(stage['grid_rows'])}), denoising_process.png."]  # fmt: skip
    return lines
