"""AttackSpec: a valid spec for every kind; bad values and parameters the kind does not read are
refused with a typed error naming the field; pydantic validates it like the other specs."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pydantic
import pytest

from fl_core.attacks import KINDS, PARAMETERS, AttackError, AttackParameterError, AttackSpec, Trigger
from fl_core.errors import FedsiloError

TRIGGER = {"trigger_columns": (0, 3), "trigger_values": (5.0, -5.0)}
# The least each kind needs.
MINIMAL = {kind: ({"kind": kind, "silos": ("s1",)} | (TRIGGER if kind in ("backdoor", "model_replacement") else {}))
           for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_with_its_defaults(kind):
    spec = AttackSpec(**MINIMAL[kind])
    assert spec.kind == kind and spec.silos == ("s1",)
    assert (spec.trigger is not None) == (kind in ("backdoor", "model_replacement"))


def test_lists_become_tuples_so_the_spec_stays_immutable():
    spec = AttackSpec(kind="backdoor", silos=["a", "b"], trigger_columns=[1], trigger_values=[2.0])
    assert spec.silos == ("a", "b") and spec.trigger_columns == (1,) and spec.trigger_values == (2.0,)
    assert spec.trigger == Trigger(columns=(1,), values=(2.0,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kind = "ipm"  # type: ignore[misc]


@pytest.mark.parametrize(("overrides", "field"), [
    ({"kind": "poison"}, "kind"),
    ({"silos": ()}, "silos"),
    ({"silos": "s1"}, "silos"),  # a bare string would otherwise read as silos 's' and '1'
    ({"silos": ("s1", "s1")}, "silos"),
    ({"silos": ("s1", "")}, "silos"),
    ({"silos": ("s1", 3)}, "silos"),
])
def test_bad_kind_or_silos_are_refused_naming_the_field(overrides, field):
    with pytest.raises(AttackParameterError) as info:
        AttackSpec(**(MINIMAL["sign_flip"] | overrides))
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(("kind", "overrides", "field"), [
    ("label_flip", {"flip_fraction": 0.0}, "flip_fraction"),
    ("label_flip", {"flip_fraction": 1.2}, "flip_fraction"),
    ("backdoor", {"poison_fraction": math.nan}, "poison_fraction"),
    ("backdoor", {"target": 2}, "target"),
    ("backdoor", {"trigger_columns": (), "trigger_values": ()}, "trigger_columns"),
    ("backdoor", {"trigger_columns": (0, 0), "trigger_values": (1.0, 1.0)}, "trigger_columns"),
    ("backdoor", {"trigger_columns": (0, 1), "trigger_values": (1.0,)}, "trigger_values"),
    ("model_replacement", {"boost": 0.0}, "boost"),
    ("model_replacement", {"trigger_columns": (-2,), "trigger_values": (1.0,)}, "trigger_columns"),
    ("sign_flip", {"magnitude": -1.0}, "magnitude"),
    ("scaling", {"boost": -3.0}, "boost"),
    ("scaling", {"server_lr": 0.0}, "server_lr"),
    ("gaussian_noise", {"std": math.inf}, "std"),
    ("alie", {"z": -1.0}, "z"),
    ("alie", {"knowledge": "everything"}, "knowledge"),
    ("ipm", {"epsilon": 0.0}, "epsilon"),
])
def test_bad_parameters_are_refused_naming_the_field(kind, overrides, field):
    with pytest.raises(AttackParameterError) as info:
        AttackSpec(**(MINIMAL[kind] | overrides))
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("sign_flip", "epsilon", 5.0),
    ("ipm", "z", 1.0),
    ("alie", "magnitude", 2.0),
    ("label_flip", "trigger_columns", (1,)),
    ("gaussian_noise", "knowledge", "own"),
    ("scaling", "poison_fraction", 0.5),
])
def test_a_parameter_the_kind_does_not_read_is_refused(kind, field, value):
    # Guards against running a different experiment than the config says (e.g. sign_flip "with ε").
    with pytest.raises(AttackParameterError, match=f"not a parameter of {kind}") as info:
        AttackSpec(**(MINIMAL[kind] | {field: value}))
    assert info.value.field == field


def test_every_parameter_belongs_to_some_kind():
    names = {f.name for f in dataclasses.fields(AttackSpec)} - {"kind", "silos"}
    assert names == {p for params in PARAMETERS.values() for p in params}


def test_the_spec_has_no_default_attack():
    # Nothing is attacked unless a spec names the attack and its silos.
    with pytest.raises(TypeError):
        AttackSpec()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        AttackSpec(kind="ipm")  # type: ignore[call-arg]


def test_pydantic_validates_the_spec_from_config_values():
    adapter = pydantic.TypeAdapter(AttackSpec)
    spec = adapter.validate_python({"kind": "backdoor", "silos": ["s0", "s3"], "trigger_columns": [2],
                                    "trigger_values": [4], "poison_fraction": 0.1})
    assert spec == AttackSpec(kind="backdoor", silos=("s0", "s3"), trigger_columns=(2,), trigger_values=(4.0,),
                              poison_fraction=0.1)
    with pytest.raises(pydantic.ValidationError, match="unexpected_keyword_argument|Unexpected keyword"):
        adapter.validate_python({"kind": "ipm", "silos": ["s0"], "epsilion": 0.5})
    with pytest.raises(pydantic.ValidationError, match="kind"):
        adapter.validate_python({"kind": "poison", "silos": ["s0"]})
    with pytest.raises(pydantic.ValidationError, match="silos must name at least one malicious silo"):
        adapter.validate_python({"kind": "ipm", "silos": []})
    with pytest.raises(pydantic.ValidationError, match="epsilon must be a positive finite number"):
        adapter.validate_python({"kind": "ipm", "silos": ["s0"], "epsilon": -1})


def test_the_two_errors_stay_distinguishable():
    # Spec validation raises ValueError (pydantic turns it into a config error at the key); an
    # attack that cannot run raises a FedsiloError, printed as one line by the CLI.
    assert issubclass(AttackParameterError, ValueError) and not issubclass(AttackParameterError, FedsiloError)
    assert issubclass(AttackError, FedsiloError) and not issubclass(AttackError, ValueError)


def test_a_parameter_error_survives_pickling_with_its_field():
    error = pickle.loads(pickle.dumps(AttackParameterError("epsilon", "epsilon must be > 0")))
    assert error.field == "epsilon" and str(error) == "epsilon must be > 0"
