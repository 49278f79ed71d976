"""LazyConfig / instantiate: specs as data, nesting, partials, placeholders, round trips, errors."""

from __future__ import annotations

import copy
import enum
import functools
import json
import sys

import attrs
import pytest
import torch
from torch import nn

from subq.functional.norm import RMSNormConfig
from subq.lazy_config import (
    PLACEHOLDER,
    LazyConfig,
    from_json,
    from_yaml,
    instantiate,
    is_spec,
    locate,
    to_json,
    to_yaml,
)
from subq.nn.norm import RMSNorm

HERE = __name__


# --- targets (module level so that they have dotted paths) -----------------------------------


class Outer:
    """A nested class and alternative constructors, to exercise nested qualnames."""

    class Inner:
        def __init__(self, value: int, *, scale: float = 1.0) -> None:
            self.value = value
            self.scale = scale

    def __init__(self, a: int, b: int = 2) -> None:
        self.a, self.b = a, b

    @classmethod
    def make(cls, total: int) -> Outer:
        return cls(total - 2, 2)

    @staticmethod
    def double(x: int) -> int:
        return 2 * x


def add(x: int, y: int = 10) -> int:
    return x + y


def collect(*items: object, **named: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return items, named


def positional_only(x: int, /) -> int:
    return x


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen(kw_only=True)
class MixerConfig:
    width: int
    kernel: tuple[int, ...] = (3,)
    colour: Colour = Colour.RED


class Inner(nn.Module):
    def __init__(self, dim: int, gain: float = 1.0) -> None:
        super().__init__()
        self.dim, self.gain = dim, gain
        self.proj = nn.Linear(dim, dim)


class Parent(nn.Module):
    """As nvSubquadratic mixers do: receive a spec of an inner module and complete it."""

    def __init__(self, hidden_dim: int, inner_cfg: dict, act: type[nn.Module] = nn.Identity):
        super().__init__()
        self.received = inner_cfg
        self.inner = instantiate(inner_cfg, dim=hidden_dim)
        self.act = act()


class Failing:
    def __init__(self, x: int) -> None:
        raise ValueError(f"Failing.x: expected a miracle, got {x}")


# --- specs are data -------------------------------------------------------------------------


def test_spec_is_plain_jsonable_dict_with_dotted_target():
    spec = LazyConfig(Outer)(1, b=3)
    assert type(spec) is dict
    assert spec == {"_target_": f"{HERE}.Outer", "_args_": [1], "b": 3}
    assert json.loads(json.dumps(spec)) == spec
    assert is_spec(spec) and not is_spec({"a": 1}) and not is_spec(3)


def test_instantiate_class_function_and_attrs_config():
    outer = instantiate(LazyConfig(Outer)(1, b=3))
    assert (outer.a, outer.b) == (1, 3)
    assert instantiate(LazyConfig(add)(x=1)) == 11
    assert instantiate(LazyConfig(RMSNormConfig)(dim=8)) == RMSNormConfig(dim=8)
    shell = instantiate(LazyConfig(RMSNorm)(dim=8, eps=1e-5))
    assert isinstance(shell, RMSNorm) and shell.cfg == RMSNormConfig(dim=8, eps=1e-5)


def test_overrides_replace_and_add_keys_without_mutating_the_spec():
    spec = LazyConfig(add)(x=1)
    before = copy.deepcopy(spec)
    assert instantiate(spec, y=5) == 6
    assert instantiate(spec, x=2, y=0) == 2
    assert spec == before


def test_call_time_positional_args_replace_spec_args():
    spec = LazyConfig(collect)(1, 2, k=3)
    assert instantiate(spec) == ((1, 2), {"k": 3})
    assert instantiate(spec, 7) == ((7,), {"k": 3})


def test_double_underscore_target_key_is_accepted():
    assert instantiate({"__target__": f"{HERE}.add", "x": 1, "y": 1}) == 2


def test_both_target_keys_is_an_error():
    with pytest.raises(ValueError, match="either '_target_' or '__target__', got both"):
        instantiate({"_target_": f"{HERE}.add", "__target__": f"{HERE}.add", "x": 1})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{HERE}.Outer.Inner", Outer.Inner),
        (f"{HERE}.Outer.make", Outer.make),
        (f"{HERE}.Outer.double", Outer.double),
        ("subq.functional.norm.RMSNormConfig", RMSNormConfig),
        ("torch.nn.Linear", nn.Linear),
        ("dict", dict),
    ],
)
def test_locate_dotted_paths_including_nested_qualnames(path, expected):
    assert locate(path) == expected


def test_nested_qualname_targets_round_trip():
    spec = LazyConfig(Outer.Inner)(4, scale=0.5)
    assert spec["_target_"] == f"{HERE}.Outer.Inner"
    built = instantiate(from_json(to_json(spec)))
    assert isinstance(built, Outer.Inner) and (built.value, built.scale) == (4, 0.5)
    assert LazyConfig(Outer.make)(total=7)["_target_"] == f"{HERE}.Outer.make"
    made = instantiate(from_json(to_json(LazyConfig(Outer.make)(total=7))))
    assert (made.a, made.b) == (5, 2)
    assert instantiate(LazyConfig(Outer.double)(x=4)) == 8


def test_string_target_is_resolved_at_instantiate_time():
    spec = LazyConfig("subq.functional.norm.RMSNormConfig")(dim=4)
    assert spec == {"_target_": "subq.functional.norm.RMSNormConfig", "dim": 4}
    assert instantiate(spec) == RMSNormConfig(dim=4)


# --- nesting --------------------------------------------------------------------------------


def test_nested_module_spec_is_handed_unbuilt_and_completed_by_the_parent():
    spec = LazyConfig(Parent)(hidden_dim=6, inner_cfg=LazyConfig(Inner)(dim=PLACEHOLDER, gain=2.0))
    parent = instantiate(spec)
    assert isinstance(parent.inner, Inner)
    assert parent.inner.dim == 6 and parent.inner.gain == 2.0
    # The parent got a spec (a copy: editing it cannot change the user's spec).
    assert parent.received == spec["inner_cfg"]
    assert parent.received is not spec["inner_cfg"]


def test_nested_module_spec_is_built_with_recursive_instantiate():
    spec = LazyConfig(collect)(m=LazyConfig(Inner)(dim=3))
    (_, named) = instantiate(spec)
    assert is_spec(named["m"])
    (_, named) = instantiate(spec, recursive_instantiate=True)
    assert isinstance(named["m"], Inner) and named["m"].dim == 3


def test_recursive_instantiate_reaches_deep_module_specs():
    spec = LazyConfig(collect)(outer=[{"deep": LazyConfig(Inner)(dim=2)}])
    (_, named) = instantiate(spec, recursive_instantiate=True)
    assert isinstance(named["outer"][0]["deep"], Inner)


def test_nested_non_module_specs_are_built_and_containers_walked():
    spec = LazyConfig(collect)(
        cfg=LazyConfig(RMSNormConfig)(dim=4),
        values=[LazyConfig(add)(x=1), 5, (LazyConfig(add)(x=2, y=0),)],
        table={"a": LazyConfig(add)(x=3, y=0), "b": "text"},
        module_class=nn.GELU,
    )
    (_, named) = instantiate(spec)
    assert named["cfg"] == RMSNormConfig(dim=4)
    assert named["values"] == [11, 5, (2,)]
    assert named["table"] == {"a": 3, "b": "text"}
    assert named["module_class"] is nn.GELU  # a reference is resolved, never left as a spec


def test_top_level_module_target_is_built():
    assert isinstance(instantiate(LazyConfig(Inner)(dim=2)), Inner)


def test_uncalled_lazyconfig_acts_as_an_empty_spec():
    assert isinstance(instantiate(LazyConfig(nn.Identity)), nn.Identity)
    spec = LazyConfig(collect)(item=LazyConfig(dict))
    assert spec["item"] == {"_target_": "builtins.dict"}
    assert instantiate(spec) == ((), {"item": {}})


def test_non_spec_is_returned_as_is():
    module = nn.Linear(2, 2)
    assert instantiate(module) is module
    assert instantiate({"a": 1}) == {"a": 1}


def test_parent_accepts_a_built_module_in_place_of_a_spec():
    # instantiate(obj) returns obj, so a parent may be handed a module or a spec alike.
    inner = Inner(5)
    assert instantiate(inner) is inner


# --- partial application --------------------------------------------------------------------


def test_partial_spec_builds_functools_partial():
    spec = LazyConfig(add)(y=3, _partial_=True)
    assert spec["_partial_"] is True
    fn = instantiate(spec)
    assert isinstance(fn, functools.partial) and fn(4) == 7
    # Round trip: still a partial; overrides are bound into it.
    fn2 = instantiate(from_json(to_json(spec)), y=100)
    assert fn2(1) == 101


def test_partial_of_a_nested_function_spec_is_built():
    spec = LazyConfig(collect)(init=LazyConfig(add)(y=1, _partial_=True))
    (_, named) = instantiate(spec)
    assert named["init"](1) == 2


def test_partial_still_rejects_unknown_keys():
    with pytest.raises(TypeError, match="has no parameter 'z'"):
        instantiate({"_target_": f"{HERE}.add", "_partial_": True, "z": 1})


# --- placeholders ---------------------------------------------------------------------------


def test_placeholder_left_raises_naming_the_key_path():
    with pytest.raises(
        ValueError, match=rf"'y' \(in the arguments of {HERE}\.add\) is still PLACEHOLDER"
    ):
        instantiate(LazyConfig(add)(x=1, y=PLACEHOLDER))
    nested = LazyConfig(collect)(cfg=LazyConfig(collect)(inner={"deep": [0, PLACEHOLDER]}))
    with pytest.raises(
        ValueError, match=r"'cfg\.inner\.deep\[1\]' \(in the arguments of .*\.collect\) is still"
    ):
        instantiate(nested)
    with pytest.raises(ValueError, match=r"'_args_\[1\]' \(.*\) is still PLACEHOLDER"):
        instantiate(LazyConfig(collect)(1, PLACEHOLDER))


def test_placeholder_filled_by_override():
    assert instantiate(LazyConfig(add)(x=1, y=PLACEHOLDER), y=2) == 3


def test_placeholder_in_unbuilt_module_spec_is_the_parents_to_fill():
    spec = LazyConfig(collect)(m=LazyConfig(Inner)(dim=PLACEHOLDER))
    (_, named) = instantiate(spec)  # no error: the module spec is handed over unbuilt
    assert named["m"]["dim"] == PLACEHOLDER
    with pytest.raises(
        ValueError, match=rf"'m\.dim' \(in the arguments of {HERE}\.Inner\) is still"
    ):
        instantiate(spec, recursive_instantiate=True)


def test_placeholder_survives_json_and_yaml():
    spec = LazyConfig(add)(x=PLACEHOLDER)
    assert from_json(to_json(spec))["x"] == PLACEHOLDER
    assert from_yaml(to_yaml(spec))["x"] == PLACEHOLDER


# --- JSON / YAML round trips ----------------------------------------------------------------


def _rich_spec() -> dict:
    return LazyConfig(Parent)(
        hidden_dim=8,
        inner_cfg=LazyConfig(Inner)(dim=PLACEHOLDER, gain=0.5),
        act=nn.GELU,
    )


def test_json_round_trip_then_build():
    spec = _rich_spec()
    text = to_json(spec)
    back = from_json(text)
    assert back == spec
    parent = instantiate(back)
    assert isinstance(parent.act, nn.GELU) and parent.inner.dim == 8 and parent.inner.gain == 0.5


def test_yaml_round_trip_equals_json_round_trip():
    spec = _rich_spec()
    assert from_yaml(to_yaml(spec)) == from_json(to_json(spec)) == spec


def test_data_forms_of_dtypes_enums_and_attrs_configs():
    cfg = MixerConfig(width=4, kernel=(3, 5), colour=Colour.BLUE)
    spec = LazyConfig(collect)(cfg=cfg, dtype=torch.bfloat16, colour=Colour.RED)
    back = from_json(to_json(spec))
    (_, named) = instantiate(back)
    assert named["dtype"] is torch.bfloat16
    assert named["colour"] is Colour.RED
    # JSON has no tuples: the kernel comes back as a list; everything else is equal.
    assert named["cfg"] == attrs.evolve(cfg, kernel=[3, 5])
    # Without the JSON trip the tuple is kept and the config rebuilt exactly.
    assert instantiate(spec)[1]["cfg"] == cfg


def test_torch_builtin_functions_are_stored_as_references():
    # torch.relu and friends are C builtins without a __module__; they still have a path.
    spec = LazyConfig(collect)(acts=[torch.relu, torch.tanh, torch.nn.functional.gelu])
    assert spec["acts"][0] == {"_target_": "torch.relu", "_call_": False}
    (_, named) = instantiate(from_json(to_json(spec)))
    assert named["acts"][0] is torch.relu and named["acts"][1] is torch.tanh
    assert named["acts"][2] is torch.nn.functional.gelu


def test_functools_partial_values_are_stored_as_partial_specs():
    from subq import init

    spec = LazyConfig(collect)(
        init_fn=init.partial_wang_init_fn_with_num_layers(4),
        pos=functools.partial(collect, 1, k=2),
    )
    assert spec["init_fn"] == {
        "_target_": "subq.init.wang_init",
        "_partial_": True,
        "num_layers": 4,
    }
    assert spec["pos"] == {
        "_target_": f"{HERE}.collect",
        "_partial_": True,
        "_args_": [1],
        "k": 2,
    }
    (_, named) = instantiate(from_json(to_json(spec)))
    assert isinstance(named["init_fn"], functools.partial)
    generator = torch.Generator().manual_seed(0)
    got = named["init_fn"](16)(torch.empty(8), generator=generator)
    want = init.wang_init(16, 4)(torch.empty(8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, want)
    assert named["pos"](3) == ((1, 3), {"k": 2})


def test_init_factory_closures_are_written_as_function_specs():
    # trunc_normal_init_factory(0.02) returns a closure (no dotted path); its spec is the call.
    from subq import init

    spec = LazyConfig(collect)(init_fn=LazyConfig(init.trunc_normal_init_factory)(std=0.02))
    (_, named) = instantiate(from_json(to_json(spec)))
    tensor = named["init_fn"](64)(torch.empty(1000), generator=torch.Generator().manual_seed(0))
    assert tensor.abs().max() <= 0.04


def test_to_json_names_the_key_that_has_no_data_form():
    spec = LazyConfig(collect)(inner={"weights": [1, torch.zeros(2)]})
    (_, named) = instantiate(spec)  # usable in Python
    assert torch.equal(named["inner"]["weights"][1], torch.zeros(2))
    with pytest.raises(TypeError, match=r"at 'inner\.weights\[1\]' holds a Tensor"):
        to_json(spec)
    with pytest.raises(TypeError, match="key 3 at 'inner' is not a string"):
        to_json(LazyConfig(collect)(inner={3: 1}))


def test_unimportable_target_is_kept_as_object():
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    spec = LazyConfig(Local)(x=1)
    assert spec["_target_"] is Local
    assert instantiate(spec).x == 1
    with pytest.raises(TypeError, match="at '_target_' holds a type"):
        to_json(spec)
    lam = LazyConfig(collect)(fn=lambda: 1)
    assert instantiate(lam)[1]["fn"]() == 1
    with pytest.raises(TypeError, match="at 'fn' holds a function"):
        to_json(lam)


def test_yaml_without_pyyaml_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(ImportError, match="PyYAML"):
        to_yaml({"_target_": "dict"})
    with pytest.raises(ImportError, match="PyYAML"):
        from_yaml("a: 1")


# --- errors ---------------------------------------------------------------------------------


def test_unknown_key_names_target_signature_and_key():
    with pytest.raises(TypeError) as info:
        instantiate(LazyConfig(add)(x=1), z=3)
    message = str(info.value)
    assert f"{HERE}.add(x: 'int', y: 'int' = 10)" in message
    assert "'z'" in message and "valid keys: ['x', 'y']" in message


def test_unknown_key_is_caught_when_the_lazyconfig_is_written():
    with pytest.raises(TypeError, match=r"RMSNormConfig\(\*, dim: 'int'.*has no parameter 'dmi'"):
        LazyConfig(RMSNormConfig)(dmi=8)


def test_unknown_key_in_nested_spec_names_its_path():
    spec = LazyConfig(collect)(cfg={"_target_": f"{HERE}.add", "x": 1, "bogus": 2})
    with pytest.raises(TypeError, match=r"has no parameter 'bogus' \(at 'cfg\.bogus'\)"):
        instantiate(spec)


def test_missing_argument_names_it():
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        instantiate(LazyConfig(add)())


def test_positional_only_parameter_by_keyword_is_rejected():
    with pytest.raises(TypeError, match="has no parameter 'x'"):
        instantiate({"_target_": f"{HERE}.positional_only", "x": 1})
    assert instantiate({"_target_": f"{HERE}.positional_only", "_args_": [4]}) == 4


def test_unknown_dotted_path_says_which_part_failed():
    with pytest.raises(ImportError, match="no module named 'no_such_pkg_xyz'"):
        instantiate({"_target_": "no_such_pkg_xyz.Thing"})
    with pytest.raises(
        ImportError,
        match=r"imported module 'subq\.functional\.norm', but 'subq\.functional\.norm' has no "
        r"attribute 'Missing'",
    ):
        instantiate({"_target_": "subq.functional.norm.Missing"})
    with pytest.raises(ImportError, match=rf"but '{HERE}\.Outer' has no attribute 'Nope'"):
        instantiate({"_target_": f"{HERE}.Outer.Nope"})
    with pytest.raises(ImportError, match=r"at 'cfg'.*no module named 'no_such_pkg_xyz'"):
        instantiate({"_target_": f"{HERE}.collect", "cfg": {"_target_": "no_such_pkg_xyz.A"}})


def test_module_that_fails_inside_its_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "subq_broken_mod_xyz.py").write_text("import subq_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ImportError,
        match=r"importing module 'subq_broken_mod_xyz' failed: No module named "
        r"'subq_missing_dependency_xyz'",
    ):
        locate("subq_broken_mod_xyz.Thing")
    monkeypatch.delitem(sys.modules, "subq_broken_mod_xyz", raising=False)


def test_bad_dotted_path_syntax():
    with pytest.raises(ValueError, match="expected a dotted path"):
        locate("not a path")
    with pytest.raises(ValueError, match="expected a dotted path"):
        locate("")


def test_error_raised_by_the_target_keeps_its_type_and_gains_context():
    spec = LazyConfig(collect)(f=LazyConfig(Failing)(x=1))
    with pytest.raises(ValueError, match=r"Failing\.x: expected a miracle") as info:
        instantiate(spec)
    if sys.version_info >= (3, 11):
        assert any(f"{HERE}.Failing at 'f'" in note for note in info.value.__notes__)


def test_malformed_specs():
    with pytest.raises(ValueError, match="unknown reserved key '_recursive_'"):
        instantiate({"_target_": "dict", "_recursive_": False})
    with pytest.raises(ValueError, match="_partial_ must be true or false, got 'yes'"):
        instantiate({"_target_": "dict", "_partial_": "yes"})
    with pytest.raises(ValueError, match="_args_ must be a list, got 3"):
        instantiate({"_target_": "dict", "_args_": 3})
    with pytest.raises(ValueError, match=r"_call_: false .* takes no arguments"):
        instantiate({"_target_": "dict", "_call_": False, "a": 1})
    with pytest.raises(TypeError, match="must be a dotted path or a callable, got 3"):
        instantiate({"_target_": 3})
    with pytest.raises(ValueError, match="'_partial_' cannot be overridden"):
        instantiate(LazyConfig(add)(x=1), _partial_=True)
    with pytest.raises(TypeError, match="need a spec with a '_target_' key, got dict"):
        instantiate({"x": 1}, x=2)


def test_lazyconfig_argument_errors():
    with pytest.raises(TypeError, match="target must be a callable or a dotted path, got 3"):
        LazyConfig(3)
    with pytest.raises(ValueError, match="target must be a callable or a dotted path, got ''"):
        LazyConfig("")
    with pytest.raises(ValueError, match="'_target_' is set by LazyConfig itself"):
        LazyConfig(add)(_target_="x")
    with pytest.raises(ValueError, match="_partial_ must be a bool, got 1"):
        LazyConfig(add)(_partial_=1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        LazyConfig(add)(1, 2, 3)


def test_attrs_config_validation_error_is_raised_at_instantiate():
    with pytest.raises(ValueError, match=r"RMSNormConfig\.dim: expected a positive number, got -1"):
        instantiate(LazyConfig(RMSNormConfig)(dim=-1))


def test_repr():
    assert repr(LazyConfig(add)) == f"LazyConfig({HERE}.add)"
