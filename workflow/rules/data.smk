# Data stages: fetch (download or mirror) and prepare (pad, split, transform per domain).

RAW_FILES = expand("{raw}/MNIST/raw/{f}", raw=PARAMS["data"]["raw_dir"],
                   f=["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]) + \
            [f"{PARAMS['data']['raw_dir']}/omniglot/{PARAMS['data']['omniglot_archive']}.zip"]
PREPARED = PARAMS["data"]["prepared_dir"]


rule fetch:
    input: code("data")
    output: RAW_FILES
    log: "logs/fetch.log"
    shell: "{LICM} data fetch > {log} 2>&1"


rule prepare:
    input: RAW_FILES, code("data", "mechanisms")
    output:
        expand(PREPARED + "/{{domain}}/{split}.npz", split=["train_transformed", "train_canonical", "test"]),
        PREPARED + "/{domain}/mechanisms.json",
    log: "logs/prepare-{domain}.log"
    shell: "{LICM} data prepare --domain {wildcards.domain} > {log} 2>&1"


rule figures_data:
    input: expand(PREPARED + "/{domain}/test.npz", domain=["paper", "expanded"]), code("figures", "data")
    output: "results/figures/expand-fig1.png", "results/figures/expand-fig2.png"
    log: "logs/figures-data.log"
    shell: "{LICM} figures data --out results/figures > {log} 2>&1"
