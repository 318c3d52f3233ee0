"""The model store: versioned, self-describing model artifacts in the lake.

Layout: ``<lake>/models/<name>/<version>/`` with

- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``),
- ``feature_spec.json``: the spec the model expects (its fingerprint is in ``info.json``),
- ``info.json``: architecture (registry name) + model config, training config, the Delta version
  of ``examples`` and the date split trained on, metrics, parameter count, code revision
  (``git rev-parse HEAD`` or ``unknown``), ``created_at`` (UTC ISO). It is written last: a folder
  without it is an unfinished save and is ignored.

Versions are increasing integers, stored zero-padded (``000001``) so that folders sort, and
written ``name@1`` in references (``name@000001`` is accepted too). On a local filesystem a save
writes into a hidden temporary folder and renames it onto the next free version; the rename fails
if another save took that number first, and the save retries with the next one. On an object
store (``s3a://``, through ``conf.storage.arrow_filesystem`` with the lake's S3 settings) there is
no atomic rename: a save writes straight into the next version's folder, ``info.json`` last, so
readers never see an unfinished version, but two saves of one name at once could claim the same
number: keep saves of one model name serialised there (one train job per name at a time).

References: ``name@version`` or ``name`` (the newest complete version).

>>> parse_ref("infnet@3"), parse_ref("infnet"), format_version(3)
(('infnet', 3), ('infnet', None), '000003')
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from conf.storage import arrow_filesystem
from features.spec import FeatureSpec, check_compatible

VERSION_DIGITS = 6
WEIGHTS_FILE, SPEC_FILE, INFO_FILE = "weights.pt", "feature_spec.json", "info.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelNotFound(FileNotFoundError):
    """No stored model matches a reference; the message lists what exists."""


@dataclass
class ModelInfo:
    name: str
    version: int
    architecture: str  # the registry name build_model() takes
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    spec_fingerprint: str
    examples_version: int | None
    date_split: dict[str, list[str]]
    metrics: dict[str, Any]
    code_revision: str
    created_at: str
    parameters: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    spec: FeatureSpec | None = field(default=None, repr=False)
    path: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("spec")
        d.pop("path")
        return json.dumps(d, indent=1, sort_keys=True, default=_json_default)


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME@VERSION`` -> (name, version); ``NAME`` -> (name, None): the one parser of model references.

    >>> parse_ref("mmoe@2"), parse_ref("infnet")
    (('mmoe', 2), ('infnet', None))
    """
    name, sep, version = ref.partition("@")
    if not _NAME_RE.match(name):
        raise ValueError(f"bad model name {name!r} in reference {ref!r} (letters, digits, _ . -)")
    if not sep:
        return name, None
    if not version.isdigit():
        raise ValueError(f"bad model version {version!r} in {ref!r}: expected an integer, e.g. {name}@1")
    return name, int(version)


def format_version(version: int) -> str:
    return f"{int(version):0{VERSION_DIGITS}d}"


def code_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown" if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Filesystem (local folders, s3a:// with the lake's S3 settings, any URI pyarrow understands)
# ---------------------------------------------------------------------------------------------

def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return arrow_filesystem(uri)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return []
    return fs.get_file_info(pafs.FileSelector(path, recursive=False))


def _versions(fs: pafs.FileSystem, model_dir: str, complete_only: bool = True) -> list[int]:
    out = []
    for child in _children(fs, model_dir):
        if child.type == pafs.FileType.Directory and child.base_name.isdigit():
            if not complete_only or fs.get_file_info(f"{child.path}/{INFO_FILE}").type == pafs.FileType.File:
                out.append(int(child.base_name))
    return sorted(out)


def _describe(models: dict[str, list[int]]) -> str:
    if not models:
        return "the store is empty"
    return "stored: " + "; ".join(f"{n}@{{{', '.join(map(str, v))}}}" for n, v in models.items())


@dataclass(frozen=True)
class ModelStore:
    """The store at ``root`` (``<lake>/models``: a local folder or an ``s3a://`` URI).

    >>> import tempfile; from features.spec import demo_spec; from model.registry import build_model
    >>> store = ModelStore(tempfile.mkdtemp())
    >>> store.save("mmoe", build_model("mmoe", demo_spec(), seed=0), demo_spec(), architecture="mmoe").ref
    'mmoe@1'
    >>> store.list_models(), store.resolve("mmoe"), store.info("mmoe@1").architecture
    ({'mmoe': [1]}, ('mmoe', 1), 'mmoe')
    """

    root: str

    @classmethod
    def of(cls, settings) -> "ModelStore":
        """The store of a :class:`conf.settings.Settings`' lake."""
        return cls(settings.lake.model_store)

    def list_models(self) -> dict[str, list[int]]:
        """``{name: [complete versions, ascending]}`` of the store."""
        fs, root = _fs(self.root)
        out = {}
        for child in _children(fs, root):
            if child.type == pafs.FileType.Directory and not child.base_name.startswith("."):
                versions = _versions(fs, child.path)
                if versions:
                    out[child.base_name] = versions
        return dict(sorted(out.items()))


    def save(
        self,
        name: str,
        model: nn.Module,
        spec: FeatureSpec,
        *,
        architecture: str | None = None,
        model_config: dict[str, Any] | None = None,
        train_config: dict[str, Any] | None = None,
        examples_version: int | None = None,
        date_split: dict[str, list[str]] | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ModelInfo:
        """Store ``model`` as the next version of ``name``; returns its :class:`ModelInfo`."""
        parse_ref(name)
        fs, root = _fs(self.root)
        model_dir = f"{root}/{name}"
        fs.create_dir(model_dir, recursive=True)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        if hasattr(model, "config_dict"):  # the registry models' own record of every config field
            model_config = model.config_dict()
        info = ModelInfo(
            name=name, version=0, architecture=architecture or name, model_config=dict(model_config or {}),
            train_config=dict(train_config or {}), spec_fingerprint=spec.fingerprint(),
            examples_version=None if examples_version is None else int(examples_version),
            date_split={k: list(v) for k, v in (date_split or {}).items()}, metrics=dict(metrics or {}),
            code_revision=code_revision(), created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            parameters=sum(p.numel() for p in model.parameters()), extra=dict(extra or {}), spec=spec,
        )
        if not isinstance(fs, pafs.LocalFileSystem):  # object store: no atomic rename, info.json last
            existing = _versions(fs, model_dir, complete_only=False)
            info.version = (existing[-1] if existing else 0) + 1
            final = f"{model_dir}/{format_version(info.version)}"
            _write_bytes(fs, f"{final}/{WEIGHTS_FILE}", buffer.getvalue())
            _write_bytes(fs, f"{final}/{SPEC_FILE}", spec.to_json().encode())
            _write_bytes(fs, f"{final}/{INFO_FILE}", info.to_json().encode())
            info.path = final
            return info
        tmp = f"{model_dir}/.tmp-{uuid.uuid4().hex}"
        fs.create_dir(tmp, recursive=True)
        _write_bytes(fs, f"{tmp}/{WEIGHTS_FILE}", buffer.getvalue())
        _write_bytes(fs, f"{tmp}/{SPEC_FILE}", spec.to_json().encode())
        for _attempt in range(100):
            existing = _versions(fs, model_dir, complete_only=False)  # never reuse a number, even a broken one
            info.version = (existing[-1] if existing else 0) + 1
            _write_bytes(fs, f"{tmp}/{INFO_FILE}", info.to_json().encode())
            final = f"{model_dir}/{format_version(info.version)}"
            if fs.get_file_info(final).type != pafs.FileType.NotFound:
                continue
            try:
                os.rename(tmp, final)  # atomic; fails if another save created `final` meanwhile
            except OSError:
                continue
            info.path = final
            return info
        raise RuntimeError(f"could not claim a version for {name} under {model_dir}")


    def resolve(self, ref: str) -> tuple[str, int]:
        """``name`` -> (name, newest version); ``name@v`` -> checked to exist. Clear errors otherwise."""
        name, version = parse_ref(ref)
        models = self.list_models()
        if name not in models:
            raise ModelNotFound(f"no model named {name!r} in {self.root}: {_describe(models)}")
        if version is None:
            return name, models[name][-1]
        if version not in models[name]:
            raise ModelNotFound(
                f"model {name} has no version {version}: versions {', '.join(map(str, models[name]))} exist "
                f"(newest {name}@{models[name][-1]})"
            )
        return name, version


    def info(self, ref: str) -> ModelInfo:
        name, version = self.resolve(ref)
        fs, root = _fs(self.root)
        path = f"{root}/{name}/{format_version(version)}"
        d = json.loads(_read_bytes(fs, f"{path}/{INFO_FILE}"))
        spec = FeatureSpec.from_json(_read_bytes(fs, f"{path}/{SPEC_FILE}").decode())
        known = set(ModelInfo.__dataclass_fields__) - {"spec", "path"}
        info = ModelInfo(**{k: v for k, v in d.items() if k in known}, spec=spec, path=path)
        if spec.fingerprint() != info.spec_fingerprint:
            raise ValueError(f"{info.ref}: stored feature spec does not match its recorded fingerprint "
                             "(corrupt artifact)")
        return info


    def load(self, ref: str, map_location: str | torch.device = "cpu",
                 expected_spec: FeatureSpec | None = None, builder=None) -> tuple[nn.Module, ModelInfo]:
        """Rebuild the stored model in eval mode; with ``expected_spec``, refuse a spec mismatch first.

        ``builder(architecture, spec, config)`` defaults to ``model.registry.build_model``.
        """
        if builder is None:
            from model.registry import build_model as builder

        info = self.info(ref)
        if expected_spec is not None:
            check_spec(info, expected_spec)
        fs, _ = _fs(self.root)
        state = torch.load(io.BytesIO(_read_bytes(fs, f"{info.path}/{WEIGHTS_FILE}")), map_location=map_location,
                           weights_only=True)
        model = builder(info.architecture, info.spec, info.model_config)
        model.load_state_dict(state)
        model.to(map_location)
        model.eval()
        return model, info


def check_spec(info: ModelInfo, actual: FeatureSpec) -> None:
    """Raise ``features.spec.FeatureSpecMismatch`` when ``actual`` is not the spec ``info`` was trained on."""
    check_compatible(info.spec, actual, what=f"model {info.ref}")
