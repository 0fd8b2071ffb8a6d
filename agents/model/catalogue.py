"""The model catalogue: every model a deployment may call, by name.

A YAML file (``SWITCHYARD_MODEL_CATALOGUE``) laid over the built-in one, which holds the local
reference models (the triage classifier, the retrieval scorer, the rule drafter: no endpoint, no
price) and, when ``SWITCHYARD_MODEL_BASE_URL`` is set, a model named ``llm`` at that endpoint::

    models:
      - name: small
        base_url: http://127.0.0.1:11434/v1     # any OpenAI-compatible server
        model: qwen2.5:1.5b                     # the provider's id
        api_key_env: OPENAI_API_KEY             # the variable holding the key (never the key)
        price: {input_per_mtok: 0.10, output_per_mtok: 0.40}   # USD per million tokens
        context: 32768
        capabilities: [json_schema, tools, stream]
        tier: 1                                 # higher is stronger
      - name: large
        ...

Workflows name models from it in their steps' ``model`` policies; the supervisor refuses a
definition naming one it does not list.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import check_token

Capability = Literal["json_schema", "tools", "stream"]


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["openai", "local"] = "openai"
    base_url: str = ""
    model: str = ""  # the provider's model id (default: the name)
    api_key_env: str = ""
    api_key: SecretStr = SecretStr("")  # set from the environment, never from the file
    price: Price = Price()
    context: int = Field(default=8192, gt=0)
    capabilities: list[Capability] = ["json_schema", "tools", "stream"]
    tier: int = Field(default=1, ge=0)
    # how a JSON schema is asked for: OpenAI's ``json_schema``, or ``json_object`` with a
    # ``schema`` (the llama.cpp server's grammar)
    response_format: Literal["json_schema", "json_object"] = "json_schema"
    timeout_s: float = Field(default=60.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_is_a_token(cls, value: str) -> str:
        return check_token("model name", value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @property
    def provider_model(self) -> str:
        return self.model or self.name

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for that many tokens at this model's price."""
        return (input_tokens * self.price.input_per_mtok
                + output_tokens * self.price.output_per_mtok) / 1e6


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = []

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.models) or "none"
        raise ConfigError(f"no model named {name!r} in the catalogue (it has: {known})")

    def names(self) -> list[str]:
        return [s.name for s in self.models]

    def merged(self, other: Catalogue) -> Catalogue:
        """This catalogue with ``other``'s entries added, replacing those of the same name."""
        theirs = {s.name for s in other.models}
        return Catalogue(models=[*(s for s in self.models if s.name not in theirs),
                                 *other.models])


def parse_catalogue(text: str, source: str) -> Catalogue:
    try:
        catalogue = Catalogue.model_validate(yaml.safe_load(text) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ConfigError(f"model catalogue {source} is invalid: {exc}") from None
    for spec in catalogue.models:
        if "api_key" in spec.model_fields_set:
            raise ConfigError(f"model catalogue {source}: {spec.name} has an api_key; name the "
                              "variable that holds it in api_key_env instead")
        if spec.kind == "openai" and not spec.base_url:
            raise ConfigError(f"model catalogue {source}: {spec.name} has no base_url")
    names = catalogue.names()
    if len(set(names)) != len(names):
        raise ConfigError(f"model catalogue {source}: names must be unique: {names}")
    return catalogue


def builtin_catalogue() -> Catalogue:
    text = resources.files("switchyard.agents").joinpath("data", "models.yaml").read_text()
    return parse_catalogue(text, "builtin:models")


def load_catalogue(path: str | Path | None = None, *, base_url: str = "", model: str = "",
                   api_key: str = "", context: int = 8192,
                   env: Mapping[str, str] | None = None) -> Catalogue:
    """The built-in catalogue, the ``llm`` entry when ``base_url`` is given, then the file's
    entries over both; API keys filled in from the variables the entries name, looked up in
    ``env`` (settings passes the process's environment)."""
    catalogue = builtin_catalogue()
    if base_url:
        catalogue = catalogue.merged(Catalogue(models=[ModelSpec(
            name="llm", base_url=base_url, model=model or "default", tier=1, context=context,
            description="the model at SWITCHYARD_MODEL_BASE_URL")]))
    if path:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the model catalogue {str(p)!r}: "
                              f"{exc.strerror}") from None
        catalogue = catalogue.merged(parse_catalogue(text, str(p)))
    for spec in catalogue.models:
        if spec.api_key_env:
            spec.api_key = SecretStr((env or {}).get(spec.api_key_env, ""))
        elif spec.name == "llm" and api_key:
            spec.api_key = SecretStr(api_key)
    return catalogue
