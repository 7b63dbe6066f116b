# Frontier's pipeline for Snakemake. Stages are defined once in frontier/pipeline.py;
# each rules file below turns one family of them into rules. `snakemake --cores all` runs
# everything; `snakemake --cores all train` builds what training needs and trains.
configfile: "params.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        "reports",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
