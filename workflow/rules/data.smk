# Data stages: prepare -> tokenizer -> tokenize.


rule prepare:
    output:
        stage_outputs("prepare"),
    params:
        cmd=stage_cmd("prepare"),
        fingerprint=stage_fingerprint("prepare"),
    log:
        "logs/prepare.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"


rule tokenizer:
    input:
        stage_inputs("tokenizer"),
    output:
        stage_outputs("tokenizer"),
    params:
        cmd=stage_cmd("tokenizer"),
        fingerprint=stage_fingerprint("tokenizer"),
    log:
        "logs/tokenizer.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"


rule tokenize:
    input:
        stage_inputs("tokenize"),
    output:
        stage_outputs("tokenize"),
    params:
        cmd=stage_cmd("tokenize"),
        fingerprint=stage_fingerprint("tokenize"),
    threads: workflow.cores
    log:
        "logs/tokenize.log",
    shell:
        "{params.cmd} --workers {threads} 2>&1 | tee {log}"
