"""The model store: versioned, self-describing model artifacts in the lake.

Layout: ``<lake>/models/<name>/<version>/`` with

- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``),
- ``feature_spec.json``: the spec the model expects (its fingerprint is in ``info.json``),
- ``info.json``: architecture (registry name) + model config, training config, the Delta version
  of ``examples`` and the date split trained on, metrics, parameter count, code revision
  (``git rev-parse HEAD`` or ``unknown``), ``created_at`` (UTC ISO), the SHA-256 of
  ``weights.pt`` (``weights_sha256``). It is written last: a folder without it is an unfinished
  save and is ignored.

Loading verifies the checksum before torch reads a byte: a truncated or altered ``weights.pt``, or
weights that no longer fit the architecture the code builds (a model saved by another code
version), is a :class:`CorruptModel` naming the artifact and the difference. An artifact saved
before checksums were recorded loads without that check.

Versions are increasing integers, stored zero-padded (``000001``) so that folders sort, and
written ``name@1`` in references (``name@000001`` is accepted too). On a local filesystem a save
writes into a hidden temporary folder and renames it onto the next free version; the rename fails
if another save took that number first, and the save retries with the next one. On an object
store (``s3a://``, through ``conf.storage.arrow_filesystem`` with the lake's S3 settings) there is
no atomic rename: a save writes straight into the next version's folder, ``info.json`` last, so
readers never see an unfinished version, but two saves of one name at once could claim the same
number: keep saves of one model name serialised there (one train job per name at a time).

References: ``name@version`` or ``name`` (the newest complete version), parsed by
:func:`conf.syntax.parse_ref`, the one rule the jobs and the DAGs share.

>>> parse_ref("infnet@3"), parse_ref("infnet"), format_version(3)
(('infnet', 3), ('infnet', None), '000003')
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from conf.storage import arrow_filesystem
from conf.syntax import ModelRef, parse_ref
from features.spec import FeatureSpec, check_compatible

VERSION_DIGITS = 6
WEIGHTS_FILE, SPEC_FILE, INFO_FILE = "weights.pt", "feature_spec.json", "info.json"


class ModelNotFound(FileNotFoundError):
    """No stored model matches a reference; the message lists what exists."""


class CorruptModel(ValueError):
    """A stored model's artifact cannot be used as it is (the message names the file and why)."""


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
    weights_sha256: str | None = None  # None: saved before checksums were recorded
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
            weights_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
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


    def pin(self, ref: ModelRef) -> ModelRef:
        """A reference with its version: a bare name becomes the newest version (ModelNotFound, a
        FileNotFoundError the jobs print as one line, when there is none)."""
        if ref.version is not None:
            return ref
        name, version = self.resolve(ref.name)
        return ModelRef(name, str(version))

    def info(self, ref: str) -> ModelInfo:
        name, version = self.resolve(ref)
        fs, root = _fs(self.root)
        path = f"{root}/{name}/{format_version(version)}"
        d = json.loads(_read_bytes(fs, f"{path}/{INFO_FILE}"))
        spec = FeatureSpec.from_json(_read_bytes(fs, f"{path}/{SPEC_FILE}").decode())
        known = set(ModelInfo.__dataclass_fields__) - {"spec", "path"}
        info = ModelInfo(**{k: v for k, v in d.items() if k in known}, spec=spec, path=path)
        if spec.fingerprint() != info.spec_fingerprint:
            raise CorruptModel(f"{info.ref}: stored feature spec does not match its recorded fingerprint "
                             "(corrupt artifact)")
        return info


    def _read_weights(self, info: ModelInfo, map_location) -> dict[str, torch.Tensor]:
        """``weights.pt`` of ``info``, its checksum verified first (:class:`CorruptModel` otherwise)."""
        fs, _ = _fs(self.root)
        path = f"{info.path}/{WEIGHTS_FILE}"
        data = _read_bytes(fs, path)
        if info.weights_sha256 is not None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != info.weights_sha256:
                raise CorruptModel(f"{info.ref}: {path} is not the file that was saved ({len(data):,} bytes, "
                                   f"sha256 {digest[:12]}..., recorded {info.weights_sha256[:12]}...): "
                                   "restore it or retrain")
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch's unpickler raises many kinds on a bad file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CorruptModel(f"{info.ref}: {path} cannot be read as weights ({len(data):,} bytes): {first[:200]}") from None

    def load(self, ref: str, map_location: str | torch.device = "cpu",
                 expected_spec: FeatureSpec | None = None, builder=None) -> tuple[nn.Module, ModelInfo]:
        """Rebuild the stored model in eval mode; with ``expected_spec``, refuse a spec mismatch first.

        ``builder(architecture, spec, config)`` defaults to ``model.registry.build_model``.
        """
        info = self.info(ref)
        if expected_spec is not None:
            check_spec(info, expected_spec)
        model = self.build_from_weights(info, map_location, builder)
        model.to(map_location)
        model.eval()
        return model, info

    def build_from_weights(self, info: ModelInfo, map_location: str | torch.device = "cpu",
                           builder=None) -> nn.Module:
        """The model of ``info`` with its stored weights (a :class:`CorruptModel` when the file is not
        the one saved or does not fit what the code builds); what :meth:`load` and a driver-side
        check before scoring share."""
        if builder is None:
            from model.registry import build_model as builder

        state = self._read_weights(info, map_location)
        model = builder(info.architecture, info.spec, info.model_config)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # the weights' names or shapes are not what this code builds
            missing, unexpected = _state_difference(model.state_dict(), state)
            raise CorruptModel(f"{info.ref}: {info.path}/{WEIGHTS_FILE} does not fit the {info.architecture} this code "
                               f"builds (saved by code {info.code_revision[:12]}): missing {missing or 'none'}, "
                               f"unexpected {unexpected or 'none'}"
                               + ("" if missing or unexpected else f", shapes differ: {str(err).splitlines()[-1].strip()}")
                               ) from None
        return model


def _state_difference(expected: dict, got: dict, most: int = 3) -> tuple[str, str]:
    """The first ``most`` parameter names missing from / unexpected in ``got``, as text."""
    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:most]) + (f" (+{len(keys) - most} more)" if len(keys) > most else "")

    return names(set(expected) - set(got)), names(set(got) - set(expected))


def check_spec(info: ModelInfo, actual: FeatureSpec) -> None:
    """Raise ``features.spec.FeatureSpecMismatch`` when ``actual`` is not the spec ``info`` was trained on."""
    check_compatible(info.spec, actual, what=f"model {info.ref}")
