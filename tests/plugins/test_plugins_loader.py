"""The loader: built-ins, file and folder paths, modules, entry points; and its errors."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.config import PluginConfig
from relay.errors import ConfigError
from relay.plugins.builtin.privacy import Privacy, PrivacyOptions
from relay.plugins.loader import DEFAULT_BUDGET_MS, load_all, load_one
from relay.plugins.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Spec:
    use: str
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    type: str = ""
    budget_ms: float = 0


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


PLUGIN_SOURCE = """
    class Shout:
        name = "shout"
        type = "enrichment"
        version = "0.1"

        async def track(self, message):
            message["event"] = message["event"].upper()
            return message
"""


@pytest.mark.parametrize("use", ["privacy", "tracking_plan", "tracking-plan", "filter", "consent",
                                 "user_agent", "user-agent", "rename"])
def test_builtin_is_loaded_by_name(use: str) -> None:
    loaded = load_one(0, PluginConfig(use=use))
    assert loaded.name == use
    assert loaded.budget == DEFAULT_BUDGET_MS / 1000


def test_builtin_options_are_decoded_into_its_options_struct() -> None:
    loaded = load_one(0, PluginConfig(use="privacy", name="strip-pii",
                                      options={"remove": ["traits.email"], "anonymise_ip": False}))
    assert isinstance(loaded.plugin, Privacy)
    assert loaded.options == PrivacyOptions(remove=("traits.email",), anonymise_ip=False)
    assert (loaded.name, loaded.type) == ("strip-pii", "before")


async def test_example_plugin_is_loaded_by_path_like_a_users_own() -> None:
    loaded = load_one(0, PluginConfig(use="plugins/add_app_version.py:AddAppVersion",
                                      options={"version": "2.4.1", "name": "Storefront"}), base=ROOT)
    assert (loaded.type, loaded.plugin.name) == ("enrichment", "add-app-version")
    pipeline = Pipeline([loaded], {})
    await pipeline.start()
    result = await pipeline.run_ingest({"type": "track", "event": "E", "userId": "u"})
    assert result.messages[0]["context"]["app"] == {"name": "Storefront", "version": "2.4.1"}
    kept = await pipeline.run_ingest({"type": "track", "context": {"app": {"version": "9"}}})
    assert kept.messages[0]["context"]["app"] == {"version": "9"}


def test_example_plugin_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[0\] \(app\): Object missing required field `version`"):
        load_one(0, PluginConfig(use="plugins/add_app_version.py:AddAppVersion", name="app"), base=ROOT)


def test_file_path_is_relative_to_base_or_absolute(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine" / "shout.py", PLUGIN_SOURCE)
    assert load_one(0, Spec(use="mine/shout.py:Shout"), base=tmp_path).plugin.name == "shout"
    assert load_one(0, Spec(use=f"{path}:Shout")).plugin.name == "shout"


async def test_folder_is_loaded_as_a_package_with_relative_imports(tmp_path: Path) -> None:
    _write(tmp_path / "loud" / "__init__.py", "from .impl import Loud\n")
    _write(tmp_path / "loud" / "impl.py", PLUGIN_SOURCE.replace("Shout", "Loud"))
    loaded = load_one(0, Spec(use="loud:Loud"), base=tmp_path)
    assert type(loaded.plugin).__name__ == "Loud"
    pipeline = Pipeline([loaded], {})
    assert (await pipeline.run_ingest({"type": "track", "event": "e"})).messages == [
        {"type": "track", "event": "E"}]


def test_importable_module_is_loaded_by_dotted_name() -> None:
    assert load_one(0, Spec(use="relay.plugins.builtin.rename:Rename")).plugin.name == "rename"


def test_entry_point_in_group_relay_plugins_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "relay_test_shout.py", PLUGIN_SOURCE)
    _write(tmp_path / "relay_test_shout-0.1.dist-info" / "METADATA",
           "Metadata-Version: 2.1\nName: relay-test-shout\nVersion: 0.1\n")
    _write(tmp_path / "relay_test_shout-0.1.dist-info" / "entry_points.txt",
           "[relay.plugins]\nshout = relay_test_shout:Shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        loaded = load_one(3, Spec(use="shout", name="loud"))
    finally:
        sys.modules.pop("relay_test_shout", None)
    assert (loaded.name, loaded.plugin.name, loaded.type) == ("loud", "shout", "enrichment")


@pytest.mark.parametrize(("spec", "error"), [
    (Spec(use="privacy", name="strip-pii", options={"salt": 5}),
     "plugins[2] (strip-pii): Expected `str`, got `int` - at `$.salt`"),
    (Spec(use="privacy", name="strip-pii", options={"remove": "traits.email"}),
     "plugins[2] (strip-pii): Expected `array`, got `str` - at `$.remove`"),
    (Spec(use="privacy", options={"salts": "x"}),
     "plugins[2] (privacy): Object contains unknown field `salts`"),
    (Spec(use="filter", name="f", options={"if": "type = = 1"}),
     "plugins[2] (f): unexpected `=` at position 7"),
    (Spec(use="nothing-like-this"),
     "plugins[2] (nothing-like-this): no plugin 'nothing-like-this': not a built-in"),
    (Spec(use="mine/missing.py:X"), "missing.py does not exist"),
    (Spec(use="mine/shout.py:Nope"), "has no attribute 'Nope'"),
    (Spec(use="mine/broken.py:X"), "fails to import: ZeroDivisionError"),
    (Spec(use="no_such_module_here:X"), "cannot import 'no_such_module_here'"),
    (Spec(use=":X"), "should read"),
    (Spec(use="mine/odd.py:NoType"), "not a plugin: it needs a string `type`"),
    (Spec(use="mine/odd.py:BadType"), "type 'middle' is not one of before, enrichment"),
    (Spec(use="mine/odd.py:NoHooks"), "a before plugin needs a hook"),
    (Spec(use="mine/odd.py:Failing"), "cannot create the plugin: RuntimeError: no"),
    (Spec(use="mine/shout.py:Shout", type="after"), "an after plugin needs a `delivered` hook"),
    (Spec(use="mine/shout.py:Shout", budget_ms=-5), "`budget_ms` must be a positive number"),
])
def test_bad_plugin_is_a_config_error_naming_the_instance(tmp_path: Path, spec: Spec, error: str) -> None:
    _write(tmp_path / "mine" / "shout.py", PLUGIN_SOURCE)
    _write(tmp_path / "mine" / "broken.py", "1 / 0\n")
    _write(tmp_path / "mine" / "odd.py", """
        class NoType:
            name = "x"
            version = "1"

        class BadType:
            name, type, version = "x", "middle", "1"

        class NoHooks:
            name, type, version = "x", "before", "1"

        class Failing:
            name, type, version = "x", "before", "1"

            def __init__(self):
                raise RuntimeError("no")
    """)
    with pytest.raises(ConfigError) as caught:
        load_one(2, spec, base=tmp_path)
    assert error in str(caught.value)


def test_instance_names_must_be_unique() -> None:
    twice = r"plugins\[1\] \(privacy\): the instance name 'privacy' is used twice"
    with pytest.raises(ConfigError, match=twice):
        load_all([Spec(use="privacy"), Spec(use="privacy")])
    named = load_all([Spec(use="privacy"), Spec(use="privacy", name="p2")])
    assert [p.name for p in named] == ["privacy", "p2"]


def test_plugin_without_options_type_gets_its_options_as_a_dict(tmp_path: Path) -> None:
    _write(tmp_path / "shout.py", PLUGIN_SOURCE)
    loaded = load_one(0, Spec(use="shout.py:Shout", options={"anything": [1]}), base=tmp_path)
    assert loaded.options == {"anything": [1]}


def test_spec_may_set_type_and_budget(tmp_path: Path) -> None:
    _write(tmp_path / "shout.py", PLUGIN_SOURCE)
    loaded = load_one(0, Spec(use="shout.py:Shout", type="before", budget_ms=250), base=tmp_path)
    assert (loaded.type, loaded.budget) == ("before", 0.25)
