# Every stage of frontier/pipeline.py as one rule, built in one loop (dvc.yaml comes from the same list).
# Outputs that `snakemake --report` should show are tagged with report(); multithreaded stages get all
# the cores Snakemake may use, and parallel ones pass them on as --workers.
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
            fingerprint=stage_fingerprint(_stage.name),
        threads: stage_threads(_stage.name)
        log:
            f"logs/{_stage.name}.log",
        shell:
            stage_shell(_stage.name)
