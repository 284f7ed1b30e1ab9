# The report target. It grows with the pipeline (training, evaluation, report issues);
# today it builds the data stages and the figures drawn from prepared data alone.

rule report:
    input: rules.figures_data.output
    default_target: True
