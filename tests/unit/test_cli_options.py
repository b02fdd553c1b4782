"""The CLI mirrors the parameter models: every field is an option under its documented name, with the
field's description and default, and what the user leaves out is left to the model."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field
from pydantic_core import PydanticUndefined

from maas.flows.cli import COMMANDS, load
from maas.flows.cli.options import model_options, model_values, option_name, params_command
from maas.modules.fields import leaf_fields
from maas.modules.reference import SECTIONS


def _models() -> list[tuple[str, type[BaseModel]]]:
    from maas.flows.demo import DemoParams
    from maas.flows.stack import StackParams

    return [(name, model) for name, model, _ in SECTIONS] + [("demo", DemoParams), ("up", StackParams)]


@pytest.mark.parametrize(("command", "model"), _models(), ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_every_field_of_the_parameter_model_is_an_option(command: str, model: type[BaseModel]) -> None:
    options = {opt: p for p in load(command).params if isinstance(p, click.Option) for opt in p.opts}
    for path, field in leaf_fields(model):
        name = option_name(path)
        assert name in options, f"maas {command} has no {name} for {model.__name__}.{'.'.join(path)}"
        assert options[name].help.startswith(field.description), name
        if field.default is PydanticUndefined:
            assert "[default: " in options[name].help or field.is_required(), name
        elif field.default is not None and not isinstance(field.default, list):
            assert f"[default: {field.default}]" in options[name].help, name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_command_list_says_what_each_command_says_of_itself(name: str) -> None:
    assert load(name).help.strip().splitlines()[0] == COMMANDS[name][1]


class _Inner(BaseModel):
    seed: int = Field(42, description="Seed.")


class _Params(BaseModel):
    data_uri: str = Field(description="Data.")
    shadow: str | None = Field("auto", description="A model, auto or none.")
    sizes: list[int] = Field([256, 128], description="Widths.")
    flag: bool = Field(False, description="A switch.")
    inner: _Inner = Field(default_factory=_Inner, description="Nested.")


def test_given_options_fill_the_model_and_the_rest_keep_its_defaults() -> None:
    options = {p.name: p for p in model_options(_Params, {"data_uri": ["--data"]})}
    assert options["data_uri"].opts == ["--data-uri", "--data"] and options["data_uri"].required
    assert options["inner__seed"].opts == ["--inner-seed"]
    assert options["flag"].secondary_opts == ["--no-flag"]

    built = model_values(_Params, {"data_uri": "s3://b/x", "shadow": "none", "sizes": ("64", "32"), "inner__seed": "7",
                                   "flag": None})()  # fmt: skip
    assert built == _Params(data_uri="s3://b/x", shadow=None, sizes=[64, 32], flag=False, inner=_Inner(seed=7))
    assert model_values(_Params, {"data_uri": "x", "sizes": ()})() == _Params(data_uri="x")


def test_an_alias_of_a_switch_is_a_switch_too() -> None:
    (option,) = [p for p in model_options(_Params, {"flag": ["--f"]}) if p.name == "flag"]
    assert option.opts == ["--flag", "--f"] and option.secondary_opts == ["--no-flag", "--no-f"]
    command = params_command("c", _Params, lambda params, as_json: print(params().flag, as_json), help="h",
                             aliases={"flag": ["--f"]})  # fmt: skip
    assert CliRunner().invoke(command, ["--data-uri", "x", "--f", "--json"]).output == "True True\n"
    assert CliRunner().invoke(command, ["--data-uri", "x", "--no-f"]).output == "False False\n"


def test_registry_commands_load_neither_torch_nor_prefect(tmp_path) -> None:
    probe = (
        "import sys; from maas.flows.cli import app\n"
        "try: app(['models', 'list', '--json', '--bucket', sys.argv[1]])\n"
        "except SystemExit as stop: assert stop.code == 0, stop.code\n"
        "print(sorted(m for m in ('torch', 'prefect', 'lightning', 'onnxruntime') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == ['{"versions":[]}', "[]"]


@pytest.mark.integration
def test_watch_prints_its_json_line_when_it_stops(prefect_api: None, tmp_path, capsys) -> None:
    from maas.flows.cli import app
    from maas.modules import storage

    bucket = tmp_path.as_uri()
    storage.write_bytes(storage.join(bucket, "incoming", "a.csv"), b"x\n1\n")
    with pytest.raises(SystemExit) as stop:
        app(["watch", "--bucket", bucket, "--run-seconds", "0", "--json"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == '{"events":1}'


def test_a_bridge_stopped_by_sigterm_prints_its_json_line(tmp_path) -> None:
    import signal
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "maas.flows.cli", "bridge", "webhook", "--port", str(port), "--json",
               "--bucket", tmp_path.as_uri()]  # fmt: skip
    bridge = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and bridge.poll() is None:  # listening once it accepts a connection
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    bridge.send_signal(signal.SIGTERM)
    out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == '{"events":0}'
