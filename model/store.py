"""The model store: MLflow's Model Registry over self-describing model artifacts in the lake.

Each stored model is a **registered model version** in MLflow's registry (the lake's tracking
store, ``LakeSettings.mlflow_tracking_uri``: SQLite under the lake by default), linked to the
training run that produced it. The registry is the one index: it assigns the version numbers,
keeps the aliases (``champion``, ``challenger``, ...) and the version's metadata as tags
(architecture, feature spec fingerprint, weights checksum, code revision); ``scripts/mlflow.sh
start`` shows it in MLflow's UI. The version's ``source`` is its artifact folder under the store
root ``<lake>/models/<name>/<folder>/`` (a local folder or ``s3a://``), holding

- ``weights.pt``: the ``state_dict`` (loaded with ``weights_only=True``),
- ``feature_spec.json``: the spec the model expects (its fingerprint is in ``info.json``),
- ``info.json``: architecture (registry name) + model config, training config, the Delta version
  of ``examples`` and the date split trained on, metrics, parameter count, code revision,
  ``created_at`` (UTC ISO), the SHA-256 of ``weights.pt`` (``weights_sha256``),
- ``MLmodel``: the folder as an MLflow model (pyfunc flavour, signature over the flat candidate
  layout; model/pyfunc.py), so ``mlflow.pyfunc.spark_udf(spark, "models:/infnet@champion")``
  scores it (folders of a pre-registry store lack it).

A save writes the folder completely, then registers it: registration is the commit (one database
transaction, which also makes concurrent saves of one name take distinct numbers), so a crash
leaves at most an unregistered folder that nothing reads, on an object store too.

Loading verifies the checksum before torch reads a byte: a truncated or altered ``weights.pt``, or
weights that no longer fit the architecture the code builds (a model saved by another code
version), is a :class:`CorruptModel` naming the artifact and the difference. A lake from before the
registry (versioned folders ``<name>/000001/`` and no registry entry for the name) is registered
in version order on first use, so its references keep their meaning.

References: ``name@version``, ``name@alias`` or ``name`` (the newest version), parsed by
:func:`conf.syntax.parse_ref`, the one rule the jobs and the DAGs share; :meth:`ModelStore.pin`
turns a name or an alias into the version number the scores and metrics tables record.

>>> parse_ref("infnet@3"), parse_ref("infnet@champion"), parse_ref("infnet")
(('infnet', 3), ('infnet', 'champion'), ('infnet', None))
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
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
from conf.syntax import MODEL_ALIAS_PATTERN, ModelRef, dates_label, parse_ref
from features.spec import FeatureSpec, check_compatible
from model.pyfunc import MLMODEL_FILE, mlmodel_yaml

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


def _legacy_versions(fs: pafs.FileSystem, model_dir: str) -> list[int]:
    """The complete versioned folders (``000001/info.json``) a pre-registry store kept under ``model_dir``."""
    out = []
    for child in _children(fs, model_dir):
        if child.type == pafs.FileType.Directory and child.base_name.isdigit():
            if fs.get_file_info(f"{child.path}/{INFO_FILE}").type == pafs.FileType.File:
                out.append(int(child.base_name))
    return sorted(out)


def _describe(models: dict[str, list[int]]) -> str:
    if not models:
        return "the store is empty"
    return "stored: " + "; ".join(f"{n}@{{{', '.join(map(str, v))}}}" for n, v in models.items())


class RegistryError(ConnectionError):
    """The model registry did not answer or refused a write (the message names the registry); a
    ``ConnectionError``, which the jobs print as one line."""


_UPGRADED: set[tuple[str, str]] = set()  # (root, registry) pairs whose legacy folders are registered


@dataclass(frozen=True)
class ModelStore:
    """The store: artifacts under ``root`` (``<lake>/models``: a local folder or an ``s3a://`` URI),
    indexed by MLflow's registry at ``registry_uri`` (default: a SQLite file in a local ``root``).

    >>> import tempfile; from features.spec import demo_spec; from model.registry import build_model
    >>> store = ModelStore(tempfile.mkdtemp())
    >>> store.save("mmoe", build_model("mmoe", demo_spec(), seed=0), demo_spec(), architecture="mmoe").ref
    'mmoe@1'
    >>> store.set_alias("mmoe", "champion", 1); store.pin(ModelRef("mmoe", "champion"))
    ModelRef(name='mmoe', version='1')
    >>> store.list_models(), store.aliases("mmoe"), store.info("mmoe@champion").architecture
    ({'mmoe': [1]}, {'champion': 1}, 'mmoe')
    """

    root: str
    registry_uri: str = ""

    @classmethod
    def of(cls, settings) -> "ModelStore":
        """The store of a :class:`conf.settings.Settings`' lake, indexed by its tracking store."""
        return cls(settings.lake.model_store, settings.lake.mlflow_tracking_uri)

    # -- the registry -------------------------------------------------------------------------

    @property
    def registry(self) -> str:
        if self.registry_uri:
            return self.registry_uri
        if "://" in self.root and not self.root.startswith("file:"):
            raise RegistryError(f"a model store on {self.root} needs a registry URI (LakeSettings.mlflow_tracking_uri)")
        return f"sqlite:///{Path(self.root.removeprefix('file:')).resolve() / 'registry.db'}"

    def _call(self, method: str, *args, **kwargs):
        """``MlflowClient.<method>``; a registry that does not answer is a :class:`RegistryError`,
        a missing name / version / alias a :class:`ModelNotFound`."""
        from mlflow.exceptions import MlflowException

        from model.tracking import mlflow_client

        try:
            return getattr(mlflow_client(self.registry), method)(*args, **kwargs)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFound(_first_line(err)) from None
            raise RegistryError(f"model registry {self.registry}: {_first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - the registry is outside us: whatever it raises is its answer
            raise RegistryError(f"model registry {self.registry}: {_first_line(err)}") from None

    def _register_legacy_folders(self) -> None:
        """Register a pre-registry store's versioned folders, once per process, in version order,
        for the names the registry does not know (so ``name@3`` keeps naming folder 000003)."""
        key = (self.root, self.registry)
        if key in _UPGRADED:
            return
        fs, root = _fs(self.root)
        known = {m.name for m in self._call("search_registered_models")}
        for child in _children(fs, root):
            if child.type != pafs.FileType.Directory or child.base_name in known:
                continue
            versions = _legacy_versions(fs, child.path)
            if not versions:
                continue
            self._ensure_registered_model(child.base_name)
            for number in range(1, versions[-1] + 1):  # a missing number stays a gap: not READY
                path = f"{child.path}/{format_version(number)}"
                source = f"{self.root.rstrip('/')}/{child.base_name}/{format_version(number)}"
                tags = {"legacy_folder": "true"}
                if number in versions:
                    d = json.loads(_read_bytes(fs, f"{path}/{INFO_FILE}"))
                    tags.update(_version_tags(d))
                mv = self._call("create_model_version", child.base_name, source=source, tags=tags,
                                description="registered from a pre-registry model store folder")
                if number not in versions:
                    self._call("delete_model_version", child.base_name, mv.version)
        _UPGRADED.add(key)

    def _ensure_registered_model(self, name: str) -> None:
        if not self._call("search_registered_models", filter_string=f"name = '{name}'"):
            try:
                self._call("create_registered_model", name, description=f"INFNet project model {name!r} (infnet train)")
            except RegistryError:  # another save created it meanwhile
                if not self._call("search_registered_models", filter_string=f"name = '{name}'"):
                    raise

    def list_models(self) -> dict[str, list[int]]:
        """``{name: [registered versions, ascending]}`` of the store."""
        self._register_legacy_folders()
        out: dict[str, list[int]] = {}
        for version in self._call("search_model_versions"):  # every name's versions in one query
            if version.status == "READY":
                out.setdefault(version.name, []).append(int(version.version))
        return {name: sorted(versions) for name, versions in sorted(out.items())}

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of a registered model (empty when it has none)."""
        self._register_legacy_folders()
        return {alias: int(version) for alias, version in sorted(self._call("get_registered_model", name).aliases.items())}

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name@alias`` at ``version`` (moving it from any other version)."""
        if not re.fullmatch(MODEL_ALIAS_PATTERN, alias):
            raise ValueError(f"bad alias {alias!r}: lower case letters, digits, _ and -, not latest or v<digits>")
        self.resolve(f"{name}@{int(version)}")
        self._call("set_registered_model_alias", name, alias, str(int(version)))

    # -- save ----------------------------------------------------------------------------------

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
        run_id: str | None = None,
    ) -> ModelInfo:
        """Store ``model`` as the next registered version of ``name`` (linked to the MLflow run
        ``run_id`` when given); returns its :class:`ModelInfo`."""
        if parse_ref(name)[1] is not None:
            raise ValueError(f"a model name has no @: {name!r}")
        self._register_legacy_folders()  # before the name's first new version takes number 1
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        if hasattr(model, "config_dict"):  # the registry models' own record of every config field
            model_config = model.config_dict()
        now = dt.datetime.now(dt.timezone.utc)
        info = ModelInfo(
            name=name, version=0, architecture=architecture or name, model_config=dict(model_config or {}),
            train_config=dict(train_config or {}), spec_fingerprint=spec.fingerprint(),
            examples_version=None if examples_version is None else int(examples_version),
            date_split={k: list(v) for k, v in (date_split or {}).items()}, metrics=dict(metrics or {}),
            code_revision=code_revision(), created_at=now.isoformat(timespec="seconds"),
            parameters=sum(p.numel() for p in model.parameters()), extra=dict(extra or {}), spec=spec,
            weights_sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
        )
        # a folder name that is never a version number: the registry alone numbers versions
        folder = f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        fs, root = _fs(self.root)
        path = f"{root}/{name}/{folder}"
        fs.create_dir(path, recursive=True)
        _write_bytes(fs, f"{path}/{WEIGHTS_FILE}", buffer.getvalue())
        _write_bytes(fs, f"{path}/{SPEC_FILE}", spec.to_json().encode())
        _write_bytes(fs, f"{path}/{INFO_FILE}", info.to_json().encode())
        _write_bytes(fs, f"{path}/{MLMODEL_FILE}", mlmodel_yaml(spec).encode())
        self._ensure_registered_model(name)
        source = f"{self.root.rstrip('/')}/{name}/{folder}"
        mv = self._call("create_model_version", name, source=source,
                        run_id=run_id, tags=_version_tags(json.loads(info.to_json())),
                        description=f"{info.architecture}, {info.parameters:,} parameters, trained on "
                                    f"{dates_label(info.date_split.get('train', [])) or 'n/a'}")
        info.version, info.path = int(mv.version), source
        return info

    # -- read ----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str, int]:
        """``name`` -> (name, newest version); ``name@alias`` -> the alias' version; ``name@v`` ->
        checked to exist. :class:`ModelNotFound` saying what exists otherwise."""
        name, version = parse_ref(ref)
        models = self.list_models()
        if name not in models:
            raise ModelNotFound(f"no model named {name!r} in {self.root}: {_describe(models)}")
        if version is None:
            return name, models[name][-1]
        if isinstance(version, str):
            aliases = self.aliases(name)
            if version not in aliases:
                known = ", ".join(f"@{a} -> {v}" for a, v in aliases.items()) or "none"
                raise ModelNotFound(f"model {name} has no alias {version!r} (aliases: {known}; "
                                    f"infnet promote moves one)")
            return name, aliases[version]
        if version not in models[name]:
            raise ModelNotFound(
                f"model {name} has no version {version}: versions {', '.join(map(str, models[name]))} exist "
                f"(newest {name}@{models[name][-1]})"
            )
        return name, version

    def pin(self, ref: ModelRef) -> ModelRef:
        """A reference with its version number: a bare name becomes the newest version, an alias the
        version it points at (ModelNotFound, a FileNotFoundError the jobs print as one line, when
        there is none)."""
        if ref.pinned:
            return ref
        name, version = self.resolve(str(ref))
        return ModelRef(name, str(version))

    def info(self, ref: str) -> ModelInfo:
        """The :class:`ModelInfo` of a reference (its ``path``: the version's artifact folder)."""
        name, version = self.resolve(ref)
        return read_artifact_info(self._call("get_model_version", name, str(version)).source, f"{name}@{version}")

    def load(self, ref: str, map_location: str | torch.device = "cpu",
                 expected_spec: FeatureSpec | None = None, builder=None) -> tuple[nn.Module, ModelInfo]:
        """Rebuild the stored model in eval mode; with ``expected_spec``, refuse a spec mismatch first.

        ``builder(architecture, spec, config)`` defaults to ``model.registry.build_model``.
        """
        info = self.info(ref)
        if expected_spec is not None:
            check_spec(info, expected_spec)
        model = build_from_weights(info, map_location, builder)
        model.to(map_location)
        model.eval()
        return model, info



def _read_weights(info: ModelInfo, map_location) -> dict[str, torch.Tensor]:
    """``weights.pt`` of ``info``, its checksum verified first (:class:`CorruptModel` otherwise)."""
    fs, folder = _fs(info.path)
    path = f"{info.path}/{WEIGHTS_FILE}"
    try:
        data = _read_bytes(fs, f"{folder}/{WEIGHTS_FILE}")
    except FileNotFoundError:
        raise CorruptModel(f"{info.ref}: {path} is missing: restore it or retrain") from None
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


def build_from_weights(info: ModelInfo, map_location: str | torch.device = "cpu",
                       builder=None) -> nn.Module:
    """The model of ``info`` with its stored weights (a :class:`CorruptModel` when the file is not
    the one saved or does not fit what the code builds); what :meth:`ModelStore.load` and a driver-side
    check before scoring share."""
    if builder is None:
        from model.registry import build_model as builder

    state = _read_weights(info, map_location)
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


def read_artifact_info(source: str, ref: str) -> ModelInfo:
    """The :class:`ModelInfo` of the artifact folder ``source`` of the pinned ``ref`` (``name@version``):
    what a Spark executor reads, given both by the driver, without asking the registry."""
    name, version = parse_ref(ref)
    fs, path = _fs(source)
    try:
        d = json.loads(_read_bytes(fs, f"{path}/{INFO_FILE}"))
        spec = FeatureSpec.from_json(_read_bytes(fs, f"{path}/{SPEC_FILE}").decode())
    except FileNotFoundError:
        raise CorruptModel(f"{ref}: its artifact folder {source} lacks {INFO_FILE} or {SPEC_FILE}") from None
    known = set(ModelInfo.__dataclass_fields__) - {"spec", "path"}
    info = ModelInfo(**{k: v for k, v in d.items() if k in known}, spec=spec, path=source)
    info.name, info.version = name, version
    if spec.fingerprint() != info.spec_fingerprint:
        raise CorruptModel(f"{info.ref}: stored feature spec does not match its recorded fingerprint (corrupt artifact)")
    return info


def load_artifact(source: str, ref: str, map_location: str | torch.device = "cpu", builder=None
                  ) -> tuple[nn.Module, ModelInfo]:
    """The model of the artifact folder ``source`` (pinned ``ref``) in eval mode, with its info."""
    info = read_artifact_info(source, ref)
    model = build_from_weights(info, map_location, builder)
    model.to(map_location)
    model.eval()
    return model, info


def _first_line(err: Exception) -> str:
    return (str(getattr(err, "message", "") or err).strip().splitlines() or [type(err).__name__])[0][:300]


def _version_tags(info: dict[str, Any]) -> dict[str, str]:
    """The registry tags of a version: what a reader of the registry (or its UI) filters on."""
    keys = ("architecture", "spec_fingerprint", "weights_sha256", "code_revision", "examples_version", "parameters")
    return {k: str(info[k]) for k in keys if info.get(k) is not None}


def _state_difference(expected: dict, got: dict, most: int = 3) -> tuple[str, str]:
    """The first ``most`` parameter names missing from / unexpected in ``got``, as text."""
    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:most]) + (f" (+{len(keys) - most} more)" if len(keys) > most else "")

    return names(set(expected) - set(got)), names(set(got) - set(expected))


def check_spec(info: ModelInfo, actual: FeatureSpec) -> None:
    """Raise ``features.spec.FeatureSpecMismatch`` when ``actual`` is not the spec ``info`` was trained on."""
    check_compatible(info.spec, actual, what=f"model {info.ref}")
