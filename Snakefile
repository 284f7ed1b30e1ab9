# licm workflow. params.yaml is the config file; licm validates it (schema in workflow/schemas/) and
# every job calls the `licm` CLI (bookkeeping included: `licm plan`, `licm collect`); the Python of
# workflow/rules/common.smk only computes job parameters, from licm.pipeline.
#   snakemake --cores 8 report                 build everything (scale: `profile:` in params.yaml)
#   snakemake --cores 8 report --config profile=smoke    another scale
#   snakemake --cores 1 --touch --forceall report   once after `dvc pull` in a fresh clone (aligns
#                                              mtimes, records params for the params trigger)
# Pipeline-only settings (--config seeds_per_job=N, seeds_per_gpu=N, ...): workflow/rules/common.smk.
configfile: "params.yaml"


include: "workflow/rules/common.smk"
if DATA_RULES:
    include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/beyond.smk"
include: "workflow/rules/report.smk"


localrules: report


# The target of everything (`make report`; the default target, so `snakemake --cores 8` builds it too).
rule report:
    input:
        rules.html_report.output,
        rules.plan_all.input,
    default_target: True
