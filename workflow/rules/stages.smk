# One rule per generic stage of the stage table (licm.stages.generic(): no wildcards): its inputs are
# its artifacts' files and its code, its outputs, command, params and threads are the table's. A stage
# added to the table appears here (and in dvc.yaml, `licm dvc-yaml`) with no other edit. The command
# comes in through params: a `shell:` that named the loop variable would be evaluated when the job
# runs, with the loop's last stage.
for _stage in licm_stages.generic():

    rule:
        name:
            _stage.rule
        input:
            stage_inputs(_stage),
        output:
            _stage.outs,
        params:
            fingerprint=stage_fingerprint_of(_stage),
            licm=licm_stages.COMMAND[_stage.rule],
        log:
            f"logs/{_stage.name}.log",
        threads: _stage.threads
        conda:
            LICM_ENV
        shell:
            "OMP_NUM_THREADS={threads} licm {params.licm} > {log} 2>&1"
