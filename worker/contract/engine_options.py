"""The engine's command-line options, one table over EngineConfig's fields, and the decorator every CLI applies.

`producer submit`, `producer demo`, `producer serve` (an in-process engine), `worker start` and `worker calibrate`
take their engine options from `engine_options(...)`: one name, type, default (EngineConfig's) and help per
option, whichever command offers it. `engine_config(**values)` turns the values a command received back into an
EngineConfig over the environment's (`EngineConfig.from_env().with_options`).

click is imported when a decorator is made, not with the contract (the contract stays numpy + pydantic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from worker.contract.settings import EngineConfig, variable

Command = TypeVar("Command", bound=Callable[..., Any])

PRECISION_HELP = (
    "A precision profile of the routing table (f32: reproducible; bf16, bf16-encoder, ...), an int8 "
    "profile made by `python -m models.quantize`, or `fast`: the fastest profile that passed "
    "`worker calibrate` on this host, else f32."
)


@dataclass(frozen=True)
class EngineOption:
    """How one EngineConfig field is offered on a command line."""

    flag: str  # click names the command's parameter after it: --cache-mb -> cache_mb
    kind: str  # "directory", "file" (must exist), "count" (an int >= 0) or "text"
    help: str
    show_default: bool = False
    envvar: str | None = None  # read by click as well (the worker exports it again to its children)

    @property
    def parameter(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: dict[str, EngineOption] = {  # EngineConfig field -> its option
    "models_dir": EngineOption(
        "--models-dir",
        "directory",
        "Exported models (default: $LITEMEDSAM_MODELS_DIR or ~/.cache/litemedsam-fleet/models).",
    ),
    "precision": EngineOption("--precision", "text", PRECISION_HELP, show_default=True),
    "threads": EngineOption("--threads", "count", "OpenVINO threads (0: all cores).", show_default=True),
    "cache_mb": EngineOption(
        "--cache-mb", "count", "Embedding cache bound per engine process (MB).", show_default=True
    ),
    "routing_file": EngineOption(
        "--routing", "file", "Routing table (default: worker/routing.toml or $LITEMEDSAM_ROUTING)."
    ),
    "cpus": EngineOption(
        "--cpus",
        "text",
        "Cores this worker owns, split among its processes (`all` or a list like 0-3,6). "
        "Default: none; OpenVINO pinning off, the kernel places threads.",
        envvar=variable("cpus"),
    ),
}
DEFAULTS: dict[str, Any] = {item.name: item.default for item in fields(EngineConfig)}


def _click_type(kind: str) -> Any:
    import click

    return {
        "directory": click.Path(file_okay=False, path_type=Path),
        "file": click.Path(exists=True, dir_okay=False, path_type=Path),
        "count": click.IntRange(0),
        "text": click.STRING,
    }[kind]


def engine_options(*names: str, help_of: Mapping[str, str] | None = None) -> Callable[[Command], Command]:
    """A decorator adding the options of these EngineConfig fields to a click command, in this order;
    `help_of` replaces a field's help text where the command gives it another meaning (worker start's threads)."""
    import click

    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise ValueError(f"EngineConfig has no command-line option for {unknown}")
    texts = dict(help_of or {})

    def decorate(command: Command) -> Command:
        for name in reversed(names):  # click lists options in the order the decorators are written
            option = OPTIONS[name]
            command = click.option(
                option.flag,
                type=_click_type(option.kind),
                default=DEFAULTS[name],
                show_default=option.show_default,
                envvar=option.envvar,
                help=texts.get(name, option.help),
            )(command)
        return command

    return decorate


def engine_config(**values: Any) -> EngineConfig:
    """The environment's EngineConfig with the values a command received for its engine options (by parameter
    name: models_dir, precision, threads, cache_mb, routing, cpus; None: not given)."""
    fields_of = {option.parameter: name for name, option in OPTIONS.items()}
    unknown = sorted(set(values) - set(fields_of))
    if unknown:
        raise TypeError(f"not engine options: {unknown}")
    return EngineConfig.from_env().with_options(**{fields_of[param]: value for param, value in values.items()})
