# Every stage of the pipeline (frontier/pipeline.py's STAGES) as one rule, built in one loop (dvc.yaml and
# the CLI's subcommands come from the same declarations). Outputs that `snakemake --report` should show are
# tagged with report(); multithreaded stages get all the cores Snakemake may use (a cluster job's CPUs under
# an executor), and parallel ones pass them on as --workers. resources: is what a cluster executor asks for
# (stages that launch ranks: params' launch: section). input: also holds the stage's stamp, newer than its
# output when that was built from other params; params: cmd is dvc.yaml's command (in Snakemake's params
# trigger), run what the job runs (with this run's params file; left out of the trigger).
for _stage in STAGES.values():

    rule:
        name:
            _stage.name
        input:
            stage_inputs(_stage.name),
        output:
            stage_outputs(_stage.name),
        params:
            cmd=stage_cmd(_stage.name),
            run=stage_run(_stage.name),
            launcher=rank_launcher,
        threads: stage_threads(_stage.name)
        resources:
            **stage_resources(_stage.name),
        log:
            f"logs/{_stage.name}.log",
        shell:
            stage_shell(_stage.name)
