# The HTML report: curves, metrics, samples, resolved config.


rule report:
    input:
        stage_inputs("report"),
    output:
        stage_outputs("report"),
    params:
        cmd=stage_cmd("report"),
        fingerprint=stage_fingerprint("report"),
    log:
        "logs/report.log",
    shell:
        "{params.cmd} 2>&1 | tee {log}"
