# Data stages: fetch (download or mirror) and prepare (pad, split, transform per domain); the data
# figures. Left out with --config data_rules=false (DVC's train@ stages: data/ is DVC's).


rule fetch:
    input:
        code("fetch"),
    output:
        RAW_FILES,
    params:
        fingerprint=data_fingerprint("fetch"),
    log:
        "logs/fetch.log",
    conda:
        LICM_ENV
    shell:
        "licm data fetch > {log} 2>&1"


rule prepare:
    input:
        RAW_FILES,
        code("prepare"),
    output:
        expand(f"{PREPARED}/{{{{domain}}}}/{{split}}.npz", split=["train_transformed", "train_canonical", "test"]),
        f"{PREPARED}/{{domain}}/mechanisms.json",
    params:
        fingerprint=lambda w: data_fingerprint("prepare", domain=w.domain),
    log:
        "logs/prepare-{domain}.log",
    conda:
        LICM_ENV
    shell:
        "licm data prepare --domain {wildcards.domain} > {log} 2>&1"


rule figures_data:
    input:
        f"{PREPARED}/paper/test.npz",
        f"{PREPARED}/expanded/test.npz",
        code("figures_data"),
    output:
        FIGURES_DATA,
    params:
        fingerprint=data_fingerprint("figures_data"),
    log:
        "logs/figures-data.log",
    conda:
        LICM_ENV
    shell:
        "licm figures data --out results/figures > {log} 2>&1"
