# Data stages with wildcards or outputs set by params.yaml: fetch (download or mirror) and prepare (pad,
# split, transform per domain); commands from the stage table (licm.stages). Left out with --config
# data_rules=false (DVC's train@ stages: data/ is DVC's).


rule fetch:
    input:
        code("fetch"),
    output:
        licm_stages.mnist(PARAMS),
        licm_stages.omniglot_archive(PARAMS),
    params:
        fingerprint=data_fingerprint("fetch"),
    log:
        "logs/fetch.log",
    conda:
        LICM_ENV
    shell:
        licm("fetch", threads=False)


rule prepare:
    input:
        licm_stages.mnist(PARAMS),
        licm_stages.omniglot_archive(PARAMS),
        code("prepare"),
    output:
        licm_stages.prepared(PARAMS, "{domain}"),
    params:
        fingerprint=lambda w: data_fingerprint("prepare", domain=w.domain),
    log:
        "logs/prepare-{domain}.log",
    conda:
        LICM_ENV
    shell:
        licm("prepare", threads=False)
