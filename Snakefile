# licm workflow. params.yaml is the config file; licm validates it (schema in
# workflow/schemas/) and every rule only calls the `licm` CLI.
# Run: snakemake --cores 8 report   |   choose a scale: --config profile=smoke
from licm import config as licm_config

configfile: "params.yaml"

PARAMS = licm_config.load("params.yaml", profile=config.get("profile"))
PROFILE = PARAMS["profile"]
LICM = f"licm --profile {PROFILE}"
# Package sources a stage depends on, so edits to them re-run it.
def code(*modules):
    return [f"src/licm/{m}.py" for m in ("config", *modules)] + ["src/licm/schema/params.schema.yaml"]

include: "workflow/rules/data.smk"
include: "workflow/rules/report.smk"
