"""The federation config: one YAML file, validated by pydantic.

The sections reuse fl_core's frozen specs (pydantic validates them directly), so a value is
checked once, where it is defined. Unknown keys and bad values raise `ConfigError` with one line
per problem naming the key path and the value. The only other inputs are the environment
overrides below (documented in the README):

- ``FEDSILO_TRACKING_URI`` replaces ``tracking.uri``;
- ``FEDSILO_EXCHANGE`` replaces ``storage.exchange``;
- ``FEDSILO_DISPATCH`` replaces ``dispatch.mode``;
- ``FEDSILO_HOME`` moves the state folder (see `infra.state`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from fl_core import robust
from fl_core.aggregation import FedAvg, weighted_mean
from fl_core.anomaly import AnomalySpec
from fl_core.attacks import COLLUDING_KINDS, AttackSpec
from fl_core.dp.fedavg import Aggregator
from fl_core.dp.policy import RecordPrivacy, SiloPrivacy
from fl_core.errors import AggregationError, ConfigError, HeadroomError
from fl_core.gate import GateSpec
from fl_core.personalise import PersonalSpec
from fl_core.round_policy import RoundPolicy, build_policy
from fl_core.schema import DataContract
from fl_core.secagg.spec import SecureSpec
from fl_core.server_opt import ServerOptimizerSpec
from fl_core.specs import ModelSpec, TrainSpec, parameter_sizes

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_OVERRIDES = {"FEDSILO_TRACKING_URI": ("tracking", "uri"), "FEDSILO_EXCHANGE": ("storage", "exchange"),
                 "FEDSILO_DISPATCH": ("dispatch", "mode")}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiloConfig(_Section):
    id: str = Field(pattern=SLUG)
    data: str = Field(min_length=1, description="Parquet file with the silo's table, relative to the config file")
    pool: str | None = Field(default=None, pattern=SLUG, description="Prefect work pool; default silo-<id>")
    privacy: RecordPrivacy | None = Field(default=None, description="record-level DP: the silo's budget and DP-SGD")

    @property
    def pool_name(self) -> str:
        return self.pool or f"silo-{self.id}"


ROBUST_RULES = tuple(name for name in robust.NAMES if name != "mean")


class AggregationConfig(_Section):
    """``mode: secure`` (default): the coordinator sees only the sum of the silos' updates;
    ``mode: bucketed``: silos are shuffled each round into buckets of at least ``min_bucket``, each
    bucket is summed securely and the robust ``rule`` merges the bucket means;
    ``mode: trusted``: it sees each update (only for an aggregator the silos trust, named explicitly).
    ``rule``: ``fedavg`` (sample-weighted mean) or a Byzantine-robust rule (`fl_core.robust`) with
    its parameters in ``robust``, e.g. ``rule: trimmed_mean, robust: {beta: 0.2}``; ``anomaly``:
    anomaly scores and flags of each update (trusted) or bucket mean (bucketed). ``silos_per_round``:
    k of the eligible silos drawn to train each round (`fl_core.sampling`; unset: every silo); every
    silo still evaluates every round's candidate."""

    mode: Literal["secure", "bucketed", "trusted"] = "secure"
    rule: Literal["fedavg", *ROBUST_RULES] = "fedavg"
    robust: dict[str, StrictInt | StrictFloat | None] = Field(default_factory=dict, description="the robust rule's parameters")
    server_lr: float = 1.0
    server_optimizer: ServerOptimizerSpec = Field(
        default=ServerOptimizerSpec(), description="the server's step: fedavg (default), fedavgm, fedadagrad, fedadam or "
        "fedyogi, with beta1, beta2 and tau (fl_core.server_opt); its learning rate is server_lr")
    min_silos: int = Field(default=2, ge=1)
    silos_per_round: int | None = Field(
        default=None, ge=1, description="k silos drawn to train each round, uniformly without replacement from the "
        "eligible ones, seeded by the federation's seed and the round; unset: every eligible silo trains")
    min_bucket: int = Field(default=3, ge=2, description="bucketed mode: the fewest silos summed together")
    qffl: float | None = Field(
        default=None, ge=0, le=20, description="q-FFL's q (fl_core.qffl): each silo's weight is n·F^q, F its training "
        "loss at the round's global model, so that the silos the model serves worst weigh more; unset: n")
    secure: SecureSpec = SecureSpec()
    privacy: SiloPrivacy | None = Field(default=None, description="silo-level DP: the federation's budget, clip and noise")
    anomaly: AnomalySpec | None = Field(default=None, description="anomaly scores of each update or bucket mean")

    def fedavg(self) -> FedAvg:
        return FedAvg(server_lr=self.server_lr)

    def merge_rule(self) -> Aggregator:
        """What combines the updates: the sample-weighted mean, or the configured robust rule."""
        if self.rule == "fedavg":
            return weighted_mean
        return robust.make_aggregator(self.rule, **self.robust)

    def n_buckets(self, n_silos: int) -> int:
        return n_silos // self.min_bucket

    @field_validator("server_lr")
    @classmethod
    def _positive(cls, value: float) -> float:
        FedAvg(server_lr=value)
        return value


class TrackingConfig(_Section):
    uri: str | None = Field(default=None, description="MLflow tracking URI; default sqlite in the state folder")
    experiment: str | None = Field(default=None, description="MLflow experiment; default the federation id")


class StorageConfig(_Section):
    exchange: str | None = Field(
        default=None, description="the exchange: a folder, or s3://<bucket>[/<prefix>] for an S3 bucket; "
                                  "default <state>/exchange"
    )
    endpoint_url: str | None = Field(
        default=None, pattern=r"^https?://[^/\s]+", description="s3:// exchange: the S3 API's URL (MinIO, Ceph, ...); "
        "default boto3's own (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS S3)"
    )
    region: str | None = Field(
        default=None, pattern=r"^[a-z0-9-]{1,32}$", description="s3:// exchange: the bucket's region; "
        "default boto3's own (AWS_REGION, AWS_DEFAULT_REGION, the profile)"
    )


class DispatchConfig(_Section):
    """How the coordinator runs each silo's part of a round: ``in_process`` (embedded: every silo's
    steps as task runs of the round, ``parallel`` silos at a time) or ``work_pools`` (federated: one
    flow run per silo and round of the silo flow's deployment on the silo's own pool, through a
    Prefect server, driven phase by phase through the exchange)."""

    mode: Literal["in_process", "work_pools"] = "in_process"
    phase_timeout_s: float = Field(default=900.0, gt=0, description="work pools: a silo not done by then is dropped")
    parallel: int | None = Field(default=None, ge=1, le=1024, description="in process: silos served at once; "
                                 "default four per core, at most the roster")
    poll_s: float = Field(default=0.5, gt=0, le=30, description="work pools: the longest wait between two looks at "
                          "the exchange for an order or a manifest (polls start at 50 ms and back off to this)")
    create_concurrency: int = Field(default=16, ge=1, le=256, description="work pools: silo runs created at once")


class FederationConfig(_Section):
    federation: str = Field(pattern=SLUG)
    seed: int = 0
    silos: list[SiloConfig] = Field(min_length=1)
    contract: DataContract
    model: ModelSpec = ModelSpec()
    training: TrainSpec = TrainSpec()
    aggregation: AggregationConfig = AggregationConfig()
    gate: GateSpec = GateSpec()
    personalisation: PersonalSpec | None = Field(
        default=None, description="each silo fine-tunes every candidate on its own rows (steps, layers: all|head, "
        "lr) and reports the personalised model's holdout metrics beside the global model's; the weights stay on "
        "the silo (fl_core.personalise)")
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    dispatch: DispatchConfig = DispatchConfig()
    attack: AttackSpec | None = Field(
        default=None, description="experiments only: the named silos run this attack (fl_core.attacks); never set "
                                  "in a real federation")

    _source: Path | None = PrivateAttr(default=None)
    _policy: RoundPolicy | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _roster(self) -> FederationConfig:
        ids = [s.id for s in self.silos]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"silos: ids repeat: {repeated}")
        pools = [s.pool_name for s in self.silos]
        shared = sorted({p for p in pools if pools.count(p) > 1})
        if shared:
            raise ValueError(f"silos: pools shared between silos: {shared} (each silo runs on its own pool)")
        if self.aggregation.min_silos > len(self.silos):
            raise ValueError(
                f"aggregation.min_silos = {self.aggregation.min_silos} exceeds the {len(self.silos)} silos in the roster"
            )
        aggregation = self.aggregation
        n_roster = len(self.silos)
        n = self._per_round(aggregation, n_roster)  # the silos one round's aggregation sees at most
        if aggregation.mode == "bucketed":
            if aggregation.secure.threshold is not None:
                raise ValueError("aggregation.secure.threshold: in bucketed mode each bucket's threshold is a strict "
                                 "majority of the bucket; leave it unset")
            if n < aggregation.min_bucket:
                raise ValueError(f"aggregation.min_bucket: {aggregation.min_bucket} exceeds the {n} silos "
                                 f"{self._where(n_roster)}")
            if aggregation.rule == "fedavg":
                raise ValueError("aggregation.rule: bucketed mode merges bucket means with a robust rule; for a plain "
                                 "weighted mean of everyone use mode: secure")
        if aggregation.mode != "trusted":
            # the largest secure sum: the roster, or the largest bucket (sizes differ by at most one)
            k = aggregation.n_buckets(n) if aggregation.mode == "bucketed" else 1
            try:
                aggregation.secure.check(-(-n // k))
            except (ValueError, HeadroomError) as exc:
                raise ValueError(f"aggregation.secure: {exc}") from None
        if aggregation.rule == "fedavg" and aggregation.robust:
            raise ValueError(f"aggregation.robust: parameters {sorted(aggregation.robust)} need a robust rule, not fedavg")
        if aggregation.rule != "fedavg":
            if aggregation.mode == "secure":
                raise ValueError(
                    f"aggregation.rule: {aggregation.rule} needs to see each update (mode: trusted) or bucket means "
                    "(mode: bucketed); secure aggregation shows the coordinator only the sum"
                )
            if aggregation.privacy is not None:
                raise ValueError(f"aggregation.rule: silo-level DP is accounted for fedavg only, not {aggregation.rule}")
            units, what = (n, "silos") if aggregation.mode == "trusted" else (aggregation.n_buckets(n), "buckets")
            in_roster = self._where(n_roster)
            try:
                aggregation.merge_rule()
            except (AggregationError, ValueError) as exc:
                raise ValueError(f"aggregation.robust: {exc}") from None
            try:
                tolerated = robust.tolerated_faults(aggregation.rule, units, **aggregation.robust)
            except (AggregationError, ValueError) as exc:
                raise ValueError(f"aggregation.robust: {exc} ({units} {what})") from None
            f = aggregation.robust.get("f")
            if f is not None and f > tolerated:
                raise ValueError(
                    f"aggregation.robust: {aggregation.rule} with f = {f} needs more {what} than the "
                    f"{units} {in_roster if what == 'silos' else f'of at least {aggregation.min_bucket} silos'} "
                    f"(it tolerates at most {tolerated} of them)"
                )
        if aggregation.anomaly is not None and aggregation.mode == "secure":
            raise ValueError("aggregation.anomaly: scoring needs each update (mode: trusted) or bucket means "
                             "(mode: bucketed)")
        if self.attack is not None:
            self._check_attack(self.attack)
        if self.gate.groups is not None:
            column = self.gate.groups.column
            categorical = [f.name for f in self.contract.features if f.kind == "categorical"]
            if column not in categorical:
                raise ValueError(f"gate.groups.column: {column!r} is not a categorical column of the contract "
                                 f"(categorical columns: {categorical or 'none'})")
        if self.model.classes != len(self.contract.label.classes):
            raise ValueError(f"model.classes: {self.model.classes}, but the contract's label has "
                             f"{len(self.contract.label.classes)} classes {list(self.contract.label.classes)}; the "
                             "pipeline trains binary classifiers (model.classes: 2, the default)")
        privacy = self.aggregation.privacy
        if privacy is not None:
            if self.aggregation.qffl is not None:
                raise ValueError("aggregation.qffl with silo-level DP (aggregation.privacy) is refused: DP-FedAvg caps "
                                 "every silo's weight at 1, which leaves nothing for q-FFL to reweight")
            if privacy.placement == "distributed" and self.aggregation.mode != "secure":
                raise ValueError("aggregation.privacy.placement: distributed noise needs aggregation.mode: secure")
            if self.aggregation.mode == "secure" and privacy.clip_norm > self.aggregation.secure.clip_norm:
                raise ValueError(
                    f"aggregation.privacy.clip_norm: {privacy.clip_norm} exceeds aggregation.secure.clip_norm "
                    f"{self.aggregation.secure.clip_norm}, the quantiser's range"
                )
            if self.training.objective == "scaffold":
                raise ValueError("training.objective: scaffold with silo-level DP (aggregation.privacy) is refused: "
                                 "DP-FedAvg's clipping, noise and accounting cover the model update, not the control "
                                 "variates SCAFFOLD sends beside it")
        return self

    def _per_round(self, aggregation: AggregationConfig, n_roster: int) -> int:
        """The most silos one round trains and sums: the roster, or ``silos_per_round`` of it; a sample
        too small for the quorum or the secure sum is refused here, saying why."""
        k = aggregation.silos_per_round
        if k is None:
            return n_roster
        if k > n_roster:
            raise ValueError(f"aggregation.silos_per_round = {k} exceeds the {n_roster} silos in the roster")
        if k < aggregation.min_silos:
            raise ValueError(f"aggregation.silos_per_round: {k} sampled silos can never reach aggregation.min_silos = "
                             f"{aggregation.min_silos}; every round would stop for want of quorum")
        if aggregation.mode != "trusted":
            if k < 2:
                raise ValueError(f"aggregation.silos_per_round: {k} silo per round is too few for a secure sum "
                                 f"(mode: {aggregation.mode}): a sum of one silo is that silo's update; at least 2")
            try:  # the threshold (t > k/2, and a configured one at most k) of the sum of k silos
                aggregation.secure.threshold_for(k)
            except ValueError as exc:
                raise ValueError(f"aggregation.silos_per_round: {k} sampled silos are too few for the secure sum's "
                                 f"threshold: {exc}") from None
        return k

    def _where(self, n_roster: int) -> str:
        k = self.aggregation.silos_per_round
        return "in the roster" if k is None or k >= n_roster else f"sampled per round (silos_per_round, of {n_roster})"

    def _check_attack(self, attack: AttackSpec) -> None:
        strangers = sorted(set(attack.silos) - set(self.silo_ids))
        if strangers:
            raise ValueError(f"attack.silos: {strangers} are not in the roster {self.silo_ids}")
        if attack.kind in COLLUDING_KINDS:
            raise ValueError(f"attack.kind: {attack.kind} computes its update from other silos' updates, which a silo "
                             "does not see here; run it in benchmarks/attacks.py")
        if attack.kind == "model_replacement" and attack.boost is None:
            raise ValueError("attack.boost: model replacement here needs an explicit boost (a silo does not see the "
                             "round's total weight to compute it)")
        if attack.trigger is not None:
            from fl_core.preprocess import FeatureEncoder

            width = FeatureEncoder(self.contract.features).n_outputs
            if max(attack.trigger_columns) >= width:
                raise ValueError(f"attack.trigger_columns: {list(attack.trigger_columns)} index the model's {width} "
                                 "encoded inputs")

    # -- derived -----------------------------------------------------------------------------------
    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def silo_ids(self) -> list[str]:
        return [s.id for s in self.silos]

    def buckets(self, round_number: int, silos: Sequence[str] | None = None) -> list[tuple[str, ...]]:
        """Bucketed mode: round `round_number`'s buckets of `silos` (the round's roster; default: every
        configured silo), as `RoundPolicy.buckets` shuffles them."""
        return self.policy().buckets(round_number, list(self.silo_ids if silos is None else silos))

    def layer_sizes(self) -> tuple[int, ...]:
        """The model's parameter sizes in flattening order (no model is built)."""
        from fl_core.preprocess import FeatureEncoder

        return parameter_sizes(self.model, FeatureEncoder(self.contract.features).n_outputs)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> FederationConfig:
        copy = super().model_copy(update=update, deep=deep)
        copy._policy = None  # a copy with other settings derives its own policy
        return copy

    def policy(self) -> RoundPolicy:
        """The round's aggregation policy (`fl_core.round_policy`), built once per loaded config."""
        if self._policy is None:
            a = self.aggregation
            self._policy = build_policy(
                mode=a.mode, rule=a.rule, robust_params=a.robust, server_lr=a.server_lr, min_silos=a.min_silos,
                min_bucket=a.min_bucket, secure=a.secure, privacy=a.privacy, anomaly=a.anomaly, seed=self.seed,
                rounds=self.training.rounds, layers=self.layer_sizes(), n_silos=len(self.silos),
                server_optimizer=a.server_optimizer, control=self.training.objective == "scaffold",
                silos_per_round=a.silos_per_round,
            )
        return self._policy

    def silo(self, silo_id: str) -> SiloConfig:
        for silo in self.silos:
            if silo.id == silo_id:
                return silo
        raise ConfigError(f"silo {silo_id!r} is not in federation {self.federation!r} (silos: {self.silo_ids})")

    def silo_data_path(self, silo_id: str) -> Path:
        path = Path(self.silo(silo_id).data).expanduser()
        if not path.is_absolute() and self._source is not None:
            path = self._source.parent / path
        return path.resolve()

    def config_hash(self) -> str:
        """sha256 of everything that shapes the model (where things are stored and run excluded)."""
        dump = self.model_dump(mode="json", exclude={"tracking", "storage", "dispatch"})
        return hashlib.sha256(json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _format(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        where = _path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{where}: unknown key (value {item['input']!r})")
        elif item["type"] in ("value_error", "assertion_error"):
            lines.append(f"{where}: {message}" if item["loc"] else message)  # roster checks name their keys
        elif item["type"] == "missing" or item["type"] == "missing_keyword_argument":
            lines.append(f"{where}: required key missing")
        else:
            value = item.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            lines.append(f"{where} = {shown}: {message}")
    return lines


def parse_config(raw: Any, source: Path | None = None, env: Mapping[str, str] | None = None) -> FederationConfig:
    """Validate an already-parsed YAML document; `source` anchors relative data paths."""
    name = str(source) if source else "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping at the top level, got {type(raw).__name__}")
    env = os.environ if env is None else env
    raw = dict(raw)
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            block = raw.get(section) or {}
            if not isinstance(block, dict):
                break  # let validation report the bad section
            raw[section] = {**block, key: value}
    try:
        config = FederationConfig.model_validate(raw)
    except ValidationError as exc:
        lines = _format(exc)
        raise ConfigError(f"{name}: " + "; ".join(lines)) from None
    config._source = source.resolve() if source else None
    return config


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~30x faster
_cache: dict[tuple, FederationConfig] = {}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> FederationConfig:
    """Load and validate a config file. Every silo flow loads its config, so a validated config is
    kept per (file, size, mtime, overrides): an edited file is always read again."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tuple(env.get(v) for v in ENV_OVERRIDES))
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    config = _read_config(path, env)
    if key is not None:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = config
    return config


def _read_config(path: Path, env: Mapping[str, str]) -> FederationConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_config(raw, source=path, env=env)
