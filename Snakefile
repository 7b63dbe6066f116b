# Frontier's pipeline for Snakemake. Stages are defined once in frontier/pipeline.py; the rules are
# built from them in workflow/rules/stages.smk. `snakemake --cores all` runs everything;
# `snakemake --cores all train` builds what training needs and trains; `--config` overrides reach
# every job (they run with the validated, resolved params file). params.yaml is read in common.smk by
# Frontier's strict loader, not by a `configfile:` directive: parameter files are data, never templates.


include: "workflow/rules/common.smk"


rule all:
    input:
        "reports",


include: "workflow/rules/stages.smk"
