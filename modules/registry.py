"""The model registry, kept in the bucket itself.

Layout: `models/<name>/<version>/` holds the ONNX artifacts and `card.json`. A version number is
taken by a conditional create of `models/<name>/<version>/claim.json`, so two registrations never
share one; the card is written after the artifacts, so a version with a card is complete.

Aliases (`latest`, `production`, …) move by compare-and-swap on a generation log:
`models/<name>/aliases/<alias>/<generation>.json`, each generation naming a version and the one
before it. The newest generation is the alias. A move reads the newest generation g, decides the
target from what it read, and creates g+1 by conditional create: of two racing moves one wins and
the other reads again and decides anew, so `register` never moves `production` back past a newer
version, whatever `promote` and `rollback` do at the same time. No lock, nothing to break when a
process dies, and the log says who moved the alias, when and from where. (A bucket written before
the log existed keeps its `aliases/<alias>.json` pointer as generation 0.)

`register` moves `production` only for a version that passed both gates: the compression gate (the served
variant keeps fp32's test metric, `maas.modules.compress`) and the champion gate (not worse than the production
version on the candidate's test split, `maas.modules.champion`). With the model's policy
(`models/<name>/policy.json`) requiring approval, such a version waits as `pending` until `approve`
records who, when and why in its card and moves `production`.

References: `name@alias` or `name/version`; a bare `name` means `name@production`.
Loading verifies each artifact's sha256 against the card and never unpickles: artifacts are ONNX.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from maas.modules import formats, storage
from maas.modules.champion import ChampionDecision, challenge
from maas.modules.config import Location, Settings, sibling_output
from maas.modules.engines import Engine, OnnxEngine, TorchEngine, onnxruntime_available
from maas.modules.errors import ObjectNotFound, RegistryError
from maas.modules.explain import Explainer
from maas.modules.manifests import (
    BaselineReport,
    CompressResult,
    ExplanationReport,
    GateDecision,
    PreprocessResult,
    TrainResult,
    VariantReport,
)
from maas.modules.monitor import Baseline, build_baseline
from maas.modules.preprocess import FeatureSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REF = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")
Target = Callable[[int | None], int | None]  # an alias move: the current version -> the wanted one (None: stay)
BASELINE = "baseline.json"  # the training distribution scored files are compared with (maas.modules.monitor)
PACKAGES = ("maas", "torch", "pytorch-lightning", "onnx", "onnxruntime", "pandas", "numpy", "pyarrow", "prefect")


class CardArtifact(BaseModel):
    file: str = Field(description="File name inside the version folder.")
    sha256: str
    size_bytes: int


class Lineage(BaseModel):
    data_uri: str
    data_etag: str
    preprocess_manifest: str
    train_manifest: str
    compress_manifest: str


class Approval(BaseModel):
    """A person's go-ahead for production, required by the model's policy (or given unasked)."""

    status: Literal["pending", "approved"]
    requested_at: datetime | None = Field(None, description="When registration held the version for approval.")
    by: str | None = Field(None, description="Who approved: the OS user, or whom `--by` named.")
    approved_at: datetime | None = None
    reason: str | None = None
    forced: bool = Field(False, description="Approved although a gate refused the version.")


class ModelPolicy(BaseModel):
    """Per-model registry settings, in `models/<name>/policy.json`."""

    require_approval: bool = Field(
        False, description="A version that passes every gate waits as `pending` until `maas models approve`."
    )


class ModelCard(BaseModel):
    """Everything needed to use and trust a model version, with no access to its training run."""

    name: str
    version: int
    created_at: datetime
    task: str
    target: str
    classes: list | None
    features: FeatureSpec = Field(description="Input schema and the preprocessing folded into the artifacts.")
    artifacts: dict[str, CardArtifact]
    metrics: list[VariantReport]
    served: str = Field(description="The variant measured in `metrics` that the served ONNX (`int8`) artifact is.")
    served_reason: str = Field("", description="Why that variant is served, with every candidate's figures.")
    model: dict = Field(description="Layer sizes of the compressed network (the torch engine rebuilds it).")
    report: str | None = Field(None, description="The compression trade-off plot (PNG) in the version folder.")
    explanations: ExplanationReport | None = Field(
        None,
        description="What the per-row attributions (the `explain` artifact) describe, their completeness, and the "
        "global importance of each raw column (None: registered before explanations).",
    )
    gate: GateDecision
    baselines: list[BaselineReport] = Field(
        [], description="Classical models (linear, gradient-boosted trees) fitted on the same split, test metrics."
    )
    baseline_warning: str | None = Field(
        None, description="Set when the served model is worse than the best baseline by more than the gate's tolerance."
    )
    training: dict
    lineage: Lineage
    packages: dict[str, str]
    champion_labeled: ChampionDecision | None = Field(
        None,
        description="The champion gate on the newest ground truth: the rows production scored whose labels arrived "
        "(None: no evaluated labels yet).",
    )
    champion: ChampionDecision | None = Field(
        None, description="The champion gate: this version against production when it was registered (None: none)."
    )
    approval: Approval | None = Field(None, description="Set when the version waited for, or got, an approval.")

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def promotable(self) -> bool:
        """Passed the compression gate and, where there was a production version, the champion gate."""
        return self.gate.passed and all(d is None or d.passed for d in (self.champion, self.champion_labeled))


class RegisterParams(BaseModel):
    compress_manifest: Location = Field(title="Compress manifest URI", description="manifest.json written by compress.")
    bucket: Location | None = Field(
        None, description="Bucket holding the registry; default MAAS_BUCKET or the local bucket."
    )
    name: str | None = Field(None, description="Model name; default MAAS_MODEL or 'default'.")
    max_champion_drop: float = Field(
        0.0,
        ge=0,
        description="Champion gate: accuracy points (0.01 = 1 point) or relative RMSE rise the new version may lose "
        "against the production version on its test split; 0: it must not be worse.",
    )
    output_uri: Location | None = Field(None, description="Where the result manifest goes; default beside compress's.")


class RegisterResult(BaseModel):
    model_ref: str = Field(description="`name@production` if it moved production, else `name/version`.")
    name: str
    version: int
    card_uri: str
    aliases: list[str]
    champion: str | None = Field(None, description="The champion gate's reason (None: no production to beat).")
    pending: bool = Field(False, description="Passed every gate and waits for `maas models approve`.")
    manifest_uri: str = Field(description="This result, written beside the run's other manifests.")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: use letters, digits, '.', '_' or '-' (up to 128)")
    return name


def model_uri(bucket: str, name: str, *parts: str) -> str:
    return storage.join(bucket, "models", _check_name(name), *parts)


def card_uri(bucket: str, name: str, version: int) -> str:
    return model_uri(bucket, name, str(version), "card.json")


def versions(bucket: str, name: str) -> list[int]:
    """Version numbers taken so far (complete or being written), ascending."""
    found = set()
    for obj in storage.list_objects(model_uri(bucket, name)):
        parts = storage.relative_key(model_uri(bucket, name), obj.uri).split("/")
        if parts[0].isdigit():
            found.add(int(parts[0]))
    return sorted(found)


class AliasMove(BaseModel):
    """One generation of an alias: where it points, where it pointed before, and why it moved."""

    generation: int
    version: int
    previous: int | None
    reason: str
    moved_at: datetime
    nonce: str = Field(default_factory=lambda: secrets.token_hex(8), description="Makes every move's bytes unique.")


def aliases(bucket: str, name: str) -> dict[str, int]:
    """Every alias of the model and the version it points at (one listing, one read per alias)."""
    root = model_uri(bucket, name, "aliases")
    newest: dict[str, str] = {}
    for obj in storage.list_objects(root):  # sorted: a generation file sorts after the legacy pointer
        parts = storage.relative_key(root, obj.uri).split("/")
        if len(parts) == 1 and parts[0].endswith(".json"):
            newest[parts[0].removesuffix(".json")] = obj.uri
        elif len(parts) == 2 and parts[1].removesuffix(".json").isdigit():
            newest[parts[0]] = obj.uri
    return {alias: int(storage.read_json(uri)["version"]) for alias, uri in newest.items()}


def _alias_head(bucket: str, name: str, alias: str) -> AliasMove | None:
    """The newest generation of `alias`, or None if it was never set."""
    moves = [o for o in storage.list_objects(model_uri(bucket, name, "aliases", alias)) if o.uri.endswith(".json")]
    if moves:
        return storage.read_model(moves[-1].uri, AliasMove)
    try:
        legacy = storage.read_json(model_uri(bucket, name, "aliases", f"{alias}.json"))
    except ObjectNotFound:
        return None
    return AliasMove(generation=0, version=int(legacy["version"]), previous=None, reason="legacy pointer",
                     moved_at=legacy.get("updated_at") or datetime.now(timezone.utc))  # fmt: skip


def move_alias(bucket: str, name: str, alias: str, target: Target, reason: str) -> int | None:
    """Compare-and-swap `alias`: `target(current)` names the version to point at (None: leave it).

    `target` is called again with the new current version whenever another move won the race, so
    it always decides on what the alias really is. Returns the version the alias points at after.
    """
    _check_name(alias)
    while True:
        head = _alias_head(bucket, name, alias)
        current = head.version if head else None
        wanted = target(current)
        if wanted is None or wanted == current:
            return current
        if not storage.exists(card_uri(bucket, name, wanted)):
            raise RegistryError(f"cannot point {name}@{alias} at version {wanted}: it has no card in {bucket}")
        generation = (head.generation if head else 0) + 1
        move = AliasMove(generation=generation, version=wanted, previous=current, reason=reason,
                         moved_at=datetime.now(timezone.utc))  # fmt: skip
        if storage.create_json(model_uri(bucket, name, "aliases", alias, f"{generation:08d}.json"), move):
            return wanted


class VersionSummary(BaseModel):
    name: str
    version: int
    created_at: datetime
    metric: str
    fp32: float
    int8: float
    gate_passed: bool
    champion: str | None = Field(None, description="The champion gate: passed, refused or not compared, vs whom.")
    promotable: bool = Field(True, description="Passed the compression gate and the champion gate.")
    approval: str | None = Field(None, description="pending, or approved by whom.")
    aliases: list[str]


def model_names(bucket: str) -> list[str]:
    names = {storage.relative_key(storage.join(bucket, "models"), o.uri).split("/")[0]
             for o in storage.list_objects(storage.join(bucket, "models"))}  # fmt: skip
    return sorted(n for n in names if _NAME.match(n))


def summaries(bucket: str, name: str | None = None) -> list[VersionSummary]:
    """Every complete version (with a card) of one model or of all, with its metrics, gate and aliases."""
    found = []
    for model in [_check_name(name)] if name else model_names(bucket):
        pointers = aliases(bucket, model)
        for version in versions(bucket, model):
            try:
                card = load_card(card_uri(bucket, model, version))
            except ObjectNotFound:  # claimed, still being written
                continue
            metrics = {v.name: v.metric for v in card.metrics}
            found.append(
                VersionSummary(
                    name=model, version=version, created_at=card.created_at, metric=card.gate.metric,
                    fp32=metrics["fp32"], int8=metrics[card.served], gate_passed=card.gate.passed,
                    champion=_champion_summary(card.champion), promotable=card.promotable,
                    approval=_approval_summary(card.approval),
                    aliases=sorted(a for a, v in pointers.items() if v == version),
                )
            )  # fmt: skip
    return found


def _champion_summary(decision: ChampionDecision | None) -> str | None:
    if decision is None:
        return None
    if not decision.compared:
        return f"not compared ({decision.champion})"
    return f"{'passed' if decision.passed else 'refused'} vs {decision.champion}"


def _approval_summary(approval: Approval | None) -> str | None:
    if approval is None:
        return None
    return "pending" if approval.status == "pending" else f"approved by {approval.by}"


def promote(bucket: str, ref: str, alias: str = "production") -> tuple[str, int]:
    """Point `alias` at the version `ref` names (any reference form), whatever its gate said.

    An alias reference (`name@latest`) is resolved anew on every try of the move, so a promotion racing
    a registration points at what `latest` is when the move lands.
    """
    name, _ = resolve(bucket, ref)
    version = move_alias(bucket, name, alias, lambda current: resolve(bucket, ref)[1], f"promote {ref}")
    assert version is not None
    return name, version


def rollback(bucket: str, name: str, alias: str = "production") -> int:
    """Move `alias` back to the newest version below its current one that passed the gates."""

    def earlier_passed(current: int | None) -> int:
        if current is None:
            raise RegistryError(f"model {name} has no alias {alias!r} in {bucket}")
        earlier = [s.version for s in summaries(bucket, name) if s.version < current and s.promotable]
        if not earlier:
            raise RegistryError(f"{name}@{alias} is version {current}; no earlier version passed the gate")
        return earlier[-1]

    version = move_alias(bucket, name, alias, earlier_passed, "rollback")
    assert version is not None
    return version


def set_alias(bucket: str, name: str, alias: str, version: int) -> None:
    """Point `alias` at `version` (a compare-and-swap that always wants `version`)."""
    move_alias(bucket, name, alias, lambda current: version, f"set to {version}")


def resolve(bucket: str, ref: str) -> tuple[str, int]:
    """`name@alias`, `name/version` or `name` (= `name@production`) to a concrete version."""
    match = _REF.match(ref.strip())
    if not match:
        raise RegistryError(f"invalid model reference {ref!r}: use NAME@ALIAS or NAME/VERSION")
    name = _check_name(match["name"])
    if match["version"]:
        version = int(match["version"])
        if not storage.exists(card_uri(bucket, name, version)):
            known = ", ".join(map(str, versions(bucket, name))) or "none"
            raise RegistryError(f"model {name} has no version {version} in {bucket} (versions: {known})")
        return name, version
    alias = _check_name(match["alias"] or "production")
    head = _alias_head(bucket, name, alias)
    if head is None:
        known = ", ".join(sorted(aliases(bucket, name))) or "none"
        raise RegistryError(
            f"model {name} has no alias {alias!r} in {bucket} (aliases: {known}); train one with `maas pipeline`"
        )
    return name, head.version


def load_card(uri: str) -> ModelCard:
    return storage.read_model(uri, ModelCard)


def read_artifact(card_location: str, card: ModelCard, variant: str) -> bytes:
    """The artifact's bytes, after checking them against the sha256 in the card."""
    entry = card.artifacts.get(variant)
    if entry is None:
        raise RegistryError(f"{card.ref} has no {variant!r} artifact (has: {', '.join(card.artifacts)})")
    uri = storage.join(card_location.rsplit("/", 1)[0], entry.file)
    data = storage.read_bytes(uri)
    digest = storage.sha256_hex(data)
    if digest != entry.sha256:
        raise RegistryError(
            f"{uri}: sha256 {digest[:12]}… does not match the card's {entry.sha256[:12]}…; refusing to load"
        )
    return data


def load_engine(card_location: str, engine: str = "auto", threads: int | None = None) -> tuple[ModelCard, Engine]:
    """The model ready to score, on ONNX Runtime (the served ONNX: int8, or fp32 graph-optimized) or torch (int8
    from the served network's weights).

    `auto` takes ONNX Runtime when it is installed. Every artifact is checked against its sha256.
    """
    card = load_card(card_location)
    if engine == "auto":
        engine = "onnxruntime" if onnxruntime_available() else "torch"
    if engine == "onnxruntime":
        return card, OnnxEngine(card.features, read_artifact(card_location, card, "int8"), threads=threads)
    if engine == "torch":
        weights = read_artifact(card_location, card, "torch")
        return card, TorchEngine(card.features, card.model, weights, threads=threads)
    raise RegistryError(f"unknown engine {engine!r}: use auto, onnxruntime or torch")


def require_explanations(card: ModelCard) -> None:
    """Explanations need the version's attribution graph and ONNX Runtime to run it."""
    if "explain" not in card.artifacts:
        raise RegistryError(f"{card.ref} was registered before explanations existed; compress and register it again")
    if not onnxruntime_available():
        raise RegistryError("explanations run on ONNX Runtime, which is not installed here")


def load_explainer(card_location: str, card: ModelCard, threads: int | None = None) -> Explainer:
    """The version's attribution graph on ONNX Runtime (checksum-verified), whatever engine serves it."""
    require_explanations(card)
    return Explainer(card.features, read_artifact(card_location, card, "explain"), threads=threads)


def register(params: RegisterParams) -> RegisterResult:
    """Publish a compressed model as the next version; move `latest`, and `production` (or `pending`, when the
    model's policy requires approval) if it passed the compression gate and the champion gate."""
    settings = Settings.of(params.bucket)
    name = _check_name(params.name or settings.model_name)
    bucket = settings.bucket
    compressed = storage.read_model(params.compress_manifest, CompressResult)
    trained = storage.read_model(compressed.train_manifest, TrainResult)
    prep = storage.read_model(trained.preprocess_manifest, PreprocessResult)
    spec = storage.read_model(prep.spec_uri, FeatureSpec)

    version = _claim_version(bucket, name, params.compress_manifest)
    artifacts, contents = {}, {}
    for variant, ref in compressed.artifacts.items():
        data = contents[variant] = storage.read_bytes(ref.uri)
        if storage.sha256_hex(data) != ref.sha256:
            raise RegistryError(f"{ref.uri} changed since compression (sha256 mismatch); rerun compress")
        file = ref.uri.rsplit("/", 1)[-1]
        storage.write_bytes(model_uri(bucket, name, str(version), file), data)
        artifacts[variant] = CardArtifact(file=file, sha256=ref.sha256, size_bytes=len(data))
    engine = _served_engine(spec, compressed, contents)
    test = formats.read_frame(prep.splits["test"])
    baseline = _baseline(spec, prep, engine, test)
    artifacts["baseline"] = CardArtifact(file=BASELINE, sha256=storage.sha256_hex(baseline), size_bytes=len(baseline))
    storage.write_bytes(model_uri(bucket, name, str(version), BASELINE), baseline)
    report = compressed.report_uri.rsplit("/", 1)[-1]
    storage.write_bytes(model_uri(bucket, name, str(version), report), storage.read_bytes(compressed.report_uri))
    if compressed.explanations is not None:  # the importance chart, beside the trade-off plot
        plot = compressed.explanations.plot
        source = storage.join(compressed.manifest_uri.rsplit("/", 1)[0], plot)
        storage.write_bytes(model_uri(bucket, name, str(version), plot), storage.read_bytes(source))
    champion, labeled = _challenge_production(bucket, name, engine, test, prep.splits["test"], compressed, params)
    passed = compressed.gate.passed and all(d is None or d.passed for d in (champion, labeled))
    held = passed and read_policy(bucket, name).require_approval

    card = ModelCard(
        name=name,
        version=version,
        created_at=datetime.now(timezone.utc),
        task=spec.task,
        target=spec.target,
        classes=spec.classes,
        features=spec,
        artifacts=artifacts,
        metrics=compressed.variants,
        served=compressed.served,
        served_reason=compressed.served_reason,
        model=compressed.model,
        report=report,
        explanations=compressed.explanations,
        gate=compressed.gate,
        baselines=compressed.baselines,
        baseline_warning=compressed.baseline_warning,
        training=trained.model_dump(
            include={
                "model",
                "scheduler",
                "metric",
                "best_epoch",
                "epochs_run",
                "val_metric",
                "test_metric",
                "selection",
                "cv_metric_mean",
                "cv_metric_std",
                "chosen_by",
                "accelerator",
                "precision",
                "mean_epoch_seconds",
            }
        ),
        lineage=Lineage(
            data_uri=prep.data_uri,
            data_etag=prep.data_etag,
            preprocess_manifest=trained.preprocess_manifest,
            train_manifest=compressed.train_manifest,
            compress_manifest=params.compress_manifest,
        ),
        packages=_package_versions(),
        champion=champion,
        champion_labeled=labeled,
        approval=Approval(status="pending", requested_at=datetime.now(timezone.utc)) if held else None,
    )
    location = card_uri(bucket, name, version)
    storage.write_json(location, card)

    wanted = ["latest"] + (["pending"] if held else ["production"] if passed else [])
    moved = [alias for alias in wanted if _advance_alias(bucket, name, alias, version)]
    ref = f"{name}@production" if "production" in moved else f"{name}/{version}"
    result = RegisterResult(
        model_ref=ref,
        name=name,
        version=version,
        card_uri=location,
        aliases=moved,
        champion=champion.reason if champion else None,
        pending=held,
        manifest_uri=storage.join(
            params.output_uri or sibling_output(params.compress_manifest, "register"), "manifest.json"
        ),
    )
    storage.write_json(result.manifest_uri, result)
    return result


def _advance_alias(bucket: str, name: str, alias: str, version: int) -> bool:
    """Move `alias` to `version` unless it already points at it or higher: registrations never move it back."""
    advance = lambda current: version if current is None or current < version else None  # noqa: E731
    return move_alias(bucket, name, alias, advance, f"register {name}/{version}") == version


def _served_engine(spec: FeatureSpec, compressed: CompressResult, artifacts: dict[str, bytes]) -> Engine:
    """The very artifact scoring will serve, on the engine `load_engine("auto")` would pick."""
    if onnxruntime_available():
        return OnnxEngine(spec, artifacts["int8"])
    return TorchEngine(spec, compressed.model, artifacts["torch"])


def _challenge_production(
    bucket: str,
    name: str,
    candidate: Engine,
    test: pd.DataFrame,
    test_uri: str,
    compressed: CompressResult,
    params: RegisterParams,
) -> tuple[ChampionDecision | None, ChampionDecision | None]:
    """The champion gate against the production version as it is now, on the candidate's test split and on
    the newest labeled rows production scored; None when there is none to beat (or no labels yet), or when
    the compression gate already refused (production stays either way).

    A registration racing a promotion may be judged against the version production pointed at just
    before; the compare-and-swap still never moves production back past a newer version."""
    from maas.modules.evaluate import labeled_inputs  # evaluate reads cards through this module: imported late

    head = _alias_head(bucket, name, "production")
    if head is None or not compressed.gate.passed:
        return None, None
    champion_ref = f"{name}/{head.version}"
    _, champion = load_engine(card_uri(bucket, name, head.version))  # checksum-verified
    on_test = challenge(champion_ref, champion, candidate, test, test_uri, compressed.metric, params.max_champion_drop)
    labeled = labeled_inputs(bucket, name, head.version)
    if labeled is None:
        return on_test, None
    rows, labels_uri = labeled
    on_labels = challenge(champion_ref, champion, candidate, rows, labels_uri, compressed.metric,
                          params.max_champion_drop, f"labeled rows {champion_ref} scored")  # fmt: skip
    return on_test, on_labels


def _baseline(spec: FeatureSpec, prep: PreprocessResult, engine: Engine, test: pd.DataFrame) -> bytes:
    """The drift reference of this version: its raw train split, and what the very artifact scoring
    will serve predicts on the test split."""
    predictions = engine.predict(test, prep.splits["test"])
    baseline = build_baseline(spec, formats.read_frame(prep.splits["train"]), predictions)
    return baseline.model_dump_json().encode()


def policy_uri(bucket: str, name: str) -> str:
    return model_uri(bucket, name, "policy.json")


def read_policy(bucket: str, name: str) -> ModelPolicy:
    """The model's registry policy; the defaults (no approval needed) when none was set."""
    try:
        return storage.read_model(policy_uri(bucket, name), ModelPolicy)
    except ObjectNotFound:
        return ModelPolicy()


def write_policy(bucket: str, name: str, policy: ModelPolicy) -> None:
    storage.write_json(policy_uri(bucket, name), policy)


def approve(bucket: str, ref: str, reason: str, by: str, force: bool = False) -> tuple[str, int]:
    """Record who approved the version `ref` names, when and why, in its card; then point `production` at it.

    A version that a gate refused is approved only with `force` (the card says so). The card is rewritten
    whole and atomically; its artifacts and their sha256s stay as they are.
    """
    if not reason.strip():
        raise RegistryError("an approval needs a reason: --reason '…'")
    name, version = resolve(bucket, ref)
    location = card_uri(bucket, name, version)
    card = load_card(location)
    if card.approval is not None and card.approval.status == "approved":
        raise RegistryError(
            f"{card.ref} was approved by {card.approval.by} at {card.approval.approved_at:%Y-%m-%d %H:%M} UTC; "
            f"`maas models promote {card.ref}` points production at it again"
        )
    if not card.promotable and not force:
        refusal = card.gate if not card.gate.passed else card.champion
        assert refusal is not None
        raise RegistryError(f"{card.ref} did not pass the gate ({refusal.reason}); --force approves it anyway")
    approval = Approval(
        status="approved",
        requested_at=card.approval.requested_at if card.approval else None,
        by=by,
        approved_at=datetime.now(timezone.utc),
        reason=reason.strip(),
        forced=not card.promotable,
    )
    storage.write_json(location, card.model_copy(update={"approval": approval}))
    move_alias(bucket, name, "production", lambda current: version, f"approve {card.ref} by {by}: {reason.strip()}")
    return name, version


def load_baseline(card_location: str, card: ModelCard) -> Baseline | None:
    """The version's training baseline (checksum-verified); None for versions registered before baselines."""
    if "baseline" not in card.artifacts:
        return None
    return Baseline.model_validate_json(read_artifact(card_location, card, "baseline"))


def _claim_version(bucket: str, name: str, source: str) -> int:
    version = (versions(bucket, name) or [0])[-1] + 1
    claim = {"source": source, "claimed_at": datetime.now(timezone.utc).isoformat(), "nonce": secrets.token_hex(8)}
    while not storage.create_json(model_uri(bucket, name, str(version), "claim.json"), claim):
        version += 1
    return version


def _package_versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
