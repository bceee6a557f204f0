"""Settings: defaults from config/, environment overrides, and failures that name the setting."""

import pytest
from pydantic import ValidationError

from flux_api.settings import BF16Settings, FP4Settings


def test_defaults_come_from_config_files():
    fp4, bf16 = FP4Settings(), BF16Settings()
    assert (fp4.port, bf16.port) == (8000, 8001)
    assert fp4.host == bf16.host == "127.0.0.1"  # exposing the service is a deliberate choice
    assert fp4.model == bf16.model == "black-forest-labs/FLUX.1-dev"
    assert fp4.backend == "auto" and fp4.placement == "auto"


def test_environment_overrides_config(monkeypatch):
    monkeypatch.setenv("FLUX_FP4_DEFAULT_STEPS", "9")
    monkeypatch.setenv("FLUX_BF16_PORT", "9001")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert FP4Settings().default_steps == 9
    assert BF16Settings().default_steps == 25  # the prefix keeps the services apart
    assert BF16Settings().port == 9001
    assert FP4Settings().token == "hf_secret"
    assert "hf_secret" not in repr(FP4Settings())


def test_explicit_arguments_override_the_environment(monkeypatch):
    monkeypatch.setenv("FLUX_BF16_MODEL", "org/from-env")
    assert BF16Settings(model="tiny").model == "tiny"


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (FP4Settings, "port", 0),
        (FP4Settings, "backend", "fp3"),
        (BF16Settings, "default_steps", 101),
        (BF16Settings, "default_width", 1000),
        (BF16Settings, "placement", "everywhere"),
        (BF16Settings, "queue_size", 0),
        (BF16Settings, "model", "  "),
    ],
)
def test_invalid_settings_name_the_setting(cls, field, value):
    with pytest.raises(ValidationError) as e:
        cls(**{field: value})
    assert field in str(e.value)


def test_unknown_setting_is_refused():
    with pytest.raises(ValidationError, match="backend"):
        BF16Settings(backend="bnb-fp4")  # a BF16 service has no quantization backend
