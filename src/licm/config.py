"""Load, validate and resolve `params.yaml`, the single source of every number.

Loading is strict on purpose: a typo in a key silently falling back to a default would
make a run look like the paper's configuration when it is not. Every error names the key,
what was expected and what was given.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

PROFILES = ("paper", "paper_main", "quick", "smoke")
# Keys of a profile block that steer the pipeline (which runs exist) instead of being merged.
PIPELINE_KEYS = ("max_seeds", "only_experiments")


class LicmError(Exception):
    """A failure meant for the user (bad data, params, device); the CLI prints it without a traceback."""


class ParamsError(LicmError, ValueError):
    """params.yaml (or an override of it) does not satisfy the schema."""


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def schema() -> dict:
    """The JSON schema shipped inside the package (workflow/schemas links to it)."""
    text = resources.files("licm").joinpath("schema/params.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _expected(error: jsonschema.ValidationError) -> str:
    v, val = error.validator, error.validator_value
    words = {
        "minimum": f"a number >= {val}",
        "maximum": f"a number <= {val}",
        "exclusiveMinimum": f"a number > {val}",
        "exclusiveMaximum": f"a number < {val}",
        "enum": f"one of {val}",
        "type": f"a value of type {val}",
        "pattern": f"a string matching {val!r}",
        "minItems": f"at least {val} item(s)",
        "maxItems": f"at most {val} item(s)",
        "uniqueItems": "items without repetition",
        "minLength": f"a string of at least {val} character(s)",
        "minProperties": f"at least {val} entr(y/ies)",
    }
    return words.get(v, f"{v}: {val}")


def _format(error: jsonschema.ValidationError, source: str) -> str:
    if error.validator in ("anyOf", "oneOf"):
        # Alternatives: the one of the value's type says what is wrong (a list with a repeated seed);
        # a value of none of their types gets the schema's description of them.
        near = [e for e in error.context if e.validator != "type"]
        if near:
            return _format(max(near, key=lambda e: len(e.absolute_path)), source)
        if "description" in error.schema:
            return f"{source}: key {_key(error.absolute_path)}: expected {error.schema['description']}, " \
                   f"given {error.instance!r}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(_key([*error.absolute_path, k]) for k in unknown)
        return f"{source}: unknown key {keys}; expected one of {allowed}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        keys = ", ".join(_key([*error.absolute_path, k]) for k in missing)
        return f"{source}: missing key {keys}; expected it to be set (see params.yaml for the default)"
    if error.validator == "propertyNames":
        return f"{source}: key {_key(error.absolute_path)}: expected names matching {error.validator_value}, given {error.instance!r}"
    return (f"{source}: key {_key(error.absolute_path)}: expected {_expected(error)}, "
            f"given {error.instance!r}")


def validate(params: dict, source: str = "params.yaml") -> None:
    """Raise ParamsError naming key, expectation and value for the first problem found."""
    errors = sorted(_validator().iter_errors(params), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ParamsError(_format(errors[0], source))
    _check_references(params, source)


def _check_references(params: dict, source: str) -> None:
    """Cross-key checks a JSON schema cannot express: names must exist."""
    from licm.mechanisms import REGISTRY

    for domain, names in params["domains"].items():
        for i, name in enumerate(names):
            if name not in REGISTRY:
                raise ParamsError(f"{source}: key domains.{domain}.{i}: expected a registered mechanism "
                                  f"(one of {sorted(REGISTRY)}), given {name!r}")
    for i, domain in enumerate(params["data"]["prepare"]):
        if domain not in params["domains"]:
            raise ParamsError(f"{source}: key data.prepare.{i}: expected one of {sorted(params['domains'])}, "
                              f"given {domain!r}")
    dw, dc = params["model"]["disc_widths"], params["model"]["disc_convs"]
    if len(dw) != len(dc):
        raise ParamsError(f"{source}: key model.disc_convs: expected {len(dw)} entries (one per disc_widths stage), "
                          f"given {dc!r}")


def deep_merge(base: dict, override: dict) -> dict:
    """Return base with override merged in; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_profile(name: str) -> str:
    """`auto` means the paper's scale where a GPU can carry it, the quick one elsewhere."""
    if name == "auto":
        return "paper" if cuda_available() else "quick"
    return name


def load(path: str | os.PathLike = "params.yaml", profile: str | None = None,
         overrides: dict | None = None) -> dict:
    """Read params.yaml, validate it, apply the selected profile, validate again.

    The result has `profile` replaced by the concrete profile that was applied, so
    every run records which scale it ran at.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such parameter file; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: key <top level>: expected a mapping, given {type(raw).__name__}")
    if overrides:
        raw = deep_merge(raw, overrides)
    if profile is not None:
        raw["profile"] = profile
    validate(raw, str(path))
    chosen = resolve_profile(raw["profile"])
    block = {k: v for k, v in raw.get("profiles", {}).get(chosen, {}).items() if k not in PIPELINE_KEYS}
    merged = deep_merge(raw, block)
    merged["profile"] = chosen
    validate(merged, f"{path} (profile {chosen})")
    return merged


@functools.lru_cache(maxsize=4)
def _paper_params(path: str, stamp: float) -> dict:
    return load(path, profile="paper")


def paper_params(path: str | os.PathLike = "params.yaml") -> dict:
    """The params the `paper` profile resolves from `path`: what "the papers' scale" means when a
    verdict is decided from the runs (licm.summary.Experiment.paper_scale). Cached per file version."""
    return copy.deepcopy(_paper_params(str(path), Path(path).stat().st_mtime))


def experiment(params: dict, name: str) -> dict:
    """Params of one named experiment: its overrides merged over the base blocks."""
    if name not in params["experiments"]:
        raise ParamsError(f"params.yaml: key experiments.{name}: expected one of "
                          f"{sorted(params['experiments'])}, given {name!r}")
    overrides = params["experiments"][name].get("overrides", {})
    merged = deep_merge(params, overrides)
    validate(merged, f"params.yaml (experiment {name})")
    return merged


def params_hash(params: dict) -> str:
    """A short stable hash of resolved params, for the report banner and run folders."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def now() -> str:
    """UTC time to the second, ISO 8601: the timestamps of meta.json, campaign.json and index.json."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str:
    """The commit of the code that runs, with " (uncommitted changes)" when the tracked files differ
    from it; LICM_GIT_COMMIT when set (a copy of the tree without .git, e.g. on a GPU machine);
    "unknown" outside git."""
    import subprocess

    if os.environ.get("LICM_GIT_COMMIT"):
        return os.environ["LICM_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# CPU flags that decide which kernels the step gets (AVX2 / AVX-512 fp32, bf16 dot products, AMX tiles).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """The CPU model and its relevant flags: float results differ between CPU models (not between runs
    on one machine), so every run and benchmark records them."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count()}


def data_mirror(params: dict) -> Path | None:
    """The mirror folder: the `data.mirror` parameter first, then LICM_DATA_MIRROR."""
    value = params["data"]["mirror"] or os.environ.get("LICM_DATA_MIRROR") or None
    return Path(value) if value else None


def device(spec: str = "auto"):
    """Resolve `auto | cpu | cuda | cuda:N` to a torch.device, failing loudly when CUDA is missing."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamsError(f"device: expected a machine with a CUDA GPU for {spec!r}, given none "
                              "(torch.cuda.is_available() is False); use device: auto or cpu")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ParamsError(f"device: expected a GPU index below {torch.cuda.device_count()}, given {spec!r}")
    return torch.device(spec)


# ---------------------------------------------------------------- pipeline (Snakefile, dvc.yaml)

def _profile_setting(params: dict, key: str):
    return params.get("profiles", {}).get(params["profile"], {}).get(key)


def selected_experiments(params: dict) -> list[str]:
    """Experiments the pipeline trains at the loaded profile (`profiles.<p>.only_experiments`)."""
    only = _profile_setting(params, "only_experiments")
    for name in only or []:
        if name not in params["experiments"]:
            raise ParamsError(f"params.yaml: key profiles.{params['profile']}.only_experiments: expected names "
                              f"of experiments ({sorted(params['experiments'])}), given {name!r}")
    return [n for n in params["experiments"] if only is None or n in only]


def seeds(params: dict, name: str) -> list[int]:
    """Seeds the pipeline runs for experiment `name` at the loaded profile.

    Its `seeds` (a list, or N meaning seeds 0..N-1), capped to the first `profiles.<p>.max_seeds`;
    none when the profile's `only_experiments` leaves the experiment out.
    """
    if name not in params["experiments"]:
        raise ParamsError(f"params.yaml: key experiments.{name}: expected one of "
                          f"{sorted(params['experiments'])}, given {name!r}")
    if name not in selected_experiments(params):
        return []
    cap = _profile_setting(params, "max_seeds")
    given = params["experiments"][name]["seeds"]
    all_seeds = list(range(given)) if isinstance(given, int) else list(given)
    return all_seeds if cap is None else all_seeds[:cap]

