# licm workflow. params.yaml is the config file; licm validates it (schema in
# workflow/schemas/) and every rule calls the `licm` CLI (bookkeeping included: `licm plan`,
# `licm collect`; the Python here only computes job parameters, from licm.pipeline).
#   snakemake --cores 8 report                 build everything (scale: `profile:` in params.yaml)
#   snakemake --cores 8 report --config profile=smoke    another scale
#   snakemake --cores 1 --touch --forceall report   once after `dvc pull` in a fresh clone (aligns
#                                              mtimes, records params for the params trigger)
# Pipeline-only settings (not params, never change results), via --config:
#   seeds_per_gpu=N   training jobs sharing one GPU at a time (default 2)
#   gpus=N            GPUs on this machine (default: what torch sees)
from licm import config as licm_config

configfile: "params.yaml"

# Keys --config may add or set: the jobs read params.yaml from disk, so any other override
# would make Snakemake's view and the jobs' view differ. Edit params.yaml instead.
PIPELINE_CONFIG = ("profile", "seeds_per_gpu", "gpus")
_file = licm_config.yaml.safe_load(open("params.yaml"))
_changed = sorted(k for k in config if k not in PIPELINE_CONFIG and config[k] != _file.get(k))
if _changed:
    raise licm_config.ParamsError(f"--config may set only {PIPELINE_CONFIG}; given {_changed} "
                                  "(licm jobs read params.yaml: edit it, or use `dvc exp run -S`)")

PARAMS = licm_config.load("params.yaml", profile=config.get("profile"))
PROFILE = PARAMS["profile"]
LICM = f"licm --profile {PROFILE}"

# Package sources a stage depends on, so edits to them re-run it (Snakemake only sees files
# that are inputs; the package is installed editable, so these are the code that runs).
def code(*modules):
    return [f"src/licm/{m}.py" for m in ("config", *modules)] + ["src/licm/schema/params.schema.yaml"]

include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
