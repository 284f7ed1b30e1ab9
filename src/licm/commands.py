"""The `licm` commands and the module that owns each (registers it, runs it): read by the dispatcher
(licm.cli) and by licm.pipeline.code_deps (the code a stage's command runs). A call imports only its
own module (torch takes ~2 s to import; the pipeline runs dozens of bookkeeping jobs that never touch
it). A new command: one entry here, and `register(subparsers)` in its module.
"""
COMMANDS = {"data": "data", "train": "train", "figures": "figures", "classifier": "classifier",
            "evaluate": "evaluate", "omniglot": "omniglot", "summarize": "summary", "report": "report",
            "plan": "pipeline", "collect": "records", "dvc-yaml": "dvcyaml", "publish": "publish",
            "publish-seed": "publish", "composition": "composition", "independence": "independence",
            "genericity": "genericity"}
# Modules that own commands, in `licm --help` order; each defines register(subparsers).
MODULES = tuple(dict.fromkeys(COMMANDS.values()))

__all__ = ["COMMANDS", "MODULES"]
