# Evaluation of the pretrained and the fine-tuned model.


rule evaluate:
    input:
        stage_inputs("evaluate"),
    output:
        stage_outputs("evaluate"),
    params:
        cmd=stage_cmd("evaluate"),
        fingerprint=stage_fingerprint("evaluate"),
    log:
        "logs/evaluate.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"


rule evaluate_finetuned:
    input:
        stage_inputs("evaluate_finetuned"),
    output:
        stage_outputs("evaluate_finetuned"),
    params:
        cmd=stage_cmd("evaluate_finetuned"),
        fingerprint=stage_fingerprint("evaluate_finetuned"),
    log:
        "logs/evaluate_finetuned.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"
