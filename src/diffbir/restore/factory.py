"""The one place that maps a task to a restorer: a table of model families.

Each :class:`~diffbir.restore.base.RestorerEntry` names the tasks it serves, how
its settings are resolved before any model loads (so a run is checked, printed
and planned first) and how it is loaded. Adding a model family is adding its
module and one row to :data:`RESTORERS`.
"""

from __future__ import annotations

from diffbir.config.presets import (
    ALL_VERSIONS,
    FACE_WHOLE,
    HYPIR,
    TASK_CHOICES,
    TASKS,
    VERSIONS,
    get_preset,
)
from diffbir.config.settings import RestoreOptions, RunConfig, resolve, resolve_whole_photo
from diffbir.errors import ConfigError
from diffbir.restore.base import Restorer, RestorerEntry

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


def _resolve_preset(
    version: str, task: str, options: RestoreOptions | None, device_type: str, dtype: str | None
) -> RunConfig:
    return resolve(get_preset(version, task), options, device_type=device_type, dtype=dtype)


def _resolve_whole_photo(
    version: str, task: str, options: RestoreOptions | None, device_type: str, dtype: str | None
) -> RunConfig:
    del task  # always face-whole
    return resolve_whole_photo(version, options, device_type=device_type, dtype=dtype)


def _load_diffbir(version: str, task: str, **loader) -> Restorer:
    # Loading needs torch: imported here so that the table (and `diffbir --help`) does not.
    from diffbir.restore.pipeline import DiffBIRPipeline

    return DiffBIRPipeline.from_preset(version, task, **loader)


def _load_whole_photo(version: str, task: str, **loader) -> Restorer:
    del task
    from diffbir.restore.whole_photo import WholePhotoPipeline  # torch: see _load_diffbir

    return WholePhotoPipeline.from_preset(version, **loader)


def _load_hypir(version: str, task: str, **loader) -> Restorer:
    from diffbir.restore.hypir import HypirRestorer  # torch: see _load_diffbir

    return HypirRestorer.from_preset(version, task, **loader)


#: Every model family, by the releases and tasks it serves.
RESTORERS: tuple[RestorerEntry, ...] = (
    RestorerEntry("diffbir", VERSIONS, TASKS, _resolve_preset, _load_diffbir),
    RestorerEntry(
        "diffbir-whole-photo", VERSIONS, (FACE_WHOLE,), _resolve_whole_photo, _load_whole_photo
    ),
    RestorerEntry("hypir", (HYPIR,), TASKS, _resolve_preset, _load_hypir),
)


def restorer_entry(version: str, task: str) -> RestorerEntry:
    """The table's entry for ``version``/``task``, or a :class:`ConfigError` in one line."""
    if version not in ALL_VERSIONS:
        raise ConfigError(f"unknown version {version!r}; choose one of {', '.join(ALL_VERSIONS)}")
    if task not in TASK_CHOICES:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    for entry in RESTORERS:
        if version in entry.versions and task in entry.tasks:
            return entry

    get_preset(version, task)  # says why the pair does not exist
    raise ConfigError(f"no restorer for {version} {task}")


def resolve_run(
    version: str,
    task: str,
    options: RestoreOptions | None = None,
    *,
    device_type: str = "cpu",
    dtype: str | None = None,
) -> RunConfig:
    """The frozen settings of a run of ``version``/``task`` with ``options``, before any
    model is loaded: what ``--print-config`` prints and every image of the run uses.
    ``dtype`` is what ``--dtype`` says (``None``: the release's, ``"auto"``, a name)."""
    return restorer_entry(version, task).resolve(version, task, options, device_type, dtype)


def load_restorer(
    version: str = "v2.1",
    task: str = "sr",
    *,
    compile: bool | dict = False,
    **loader,
) -> Restorer:
    """Load the restorer of ``version`` for ``task``. ``loader`` takes the keyword
    arguments of :meth:`DiffBIRPipeline.from_preset <diffbir.restore.pipeline.DiffBIRPipeline.from_preset>`
    (weights, device, dtype, offload...; whole photos add the face-detector options);
    ``compile`` is ``True`` or the keyword arguments of the restorer's ``compile``."""
    restorer = restorer_entry(version, task).load(version, task, **loader)
    if compile:
        restorer.compile(**(compile if isinstance(compile, dict) else {}))
    return restorer
