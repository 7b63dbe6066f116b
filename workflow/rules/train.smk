# Training. Checkpoints live outside the rule's output (checkpoints/train) so that a killed run
# resumes from them when the rule runs again.


rule train:
    input:
        stage_inputs("train"),
    output:
        stage_outputs("train"),
    params:
        cmd=stage_cmd("train"),
        fingerprint=stage_fingerprint("train"),
    threads: workflow.cores
    log:
        "logs/train.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"
