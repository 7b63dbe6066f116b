# LoRA fine-tune demo: docstring -> function-body pairs from the prepared corpus, then the
# adapter merged into a plain Hugging Face model directory.


rule sft_data:
    input:
        stage_inputs("sft_data"),
    output:
        stage_outputs("sft_data"),
    params:
        cmd=stage_cmd("sft_data"),
        fingerprint=stage_fingerprint("sft_data"),
    log:
        "logs/sft_data.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"


rule finetune:
    input:
        stage_inputs("finetune"),
    output:
        stage_outputs("finetune"),
    params:
        cmd=stage_cmd("finetune"),
        fingerprint=stage_fingerprint("finetune"),
    threads: workflow.cores
    log:
        "logs/finetune.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"


rule merge:
    input:
        stage_inputs("merge"),
    output:
        stage_outputs("merge"),
    params:
        cmd=stage_cmd("merge"),
        fingerprint=stage_fingerprint("merge"),
    log:
        "logs/merge.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"
