"""Errors a person can act on: what was wrong, where (the field path), and what would be right."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


@dataclass(frozen=True)
class FieldError:
    """One problem at one field path, e.g. ``spec.trainer.config.batch_size``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ValueError):
    """A manifest that cannot become a run; carries every problem found, each with its path."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    @property
    def first_path(self) -> str:
        return self.errors[0].path if self.errors else ""


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'batch_size'?)`` when ``word`` is close to one of ``choices``, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation such as ``Resume | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        models = [m for a in get_args(annotation) if (m := _model_in(a)) is not None]
        return models[0] if len(models) == 1 else None
    if origin is typing.Annotated:
        return _model_in(get_args(annotation)[0])
    return None


def _union_member(annotation: Any, tag: str) -> type[BaseModel] | None:
    """The member of a discriminated union (``kind``) whose tag is ``tag``."""
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    for member in get_args(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = member.model_fields.get("kind")
            if kind is not None and tag in get_args(kind.annotation):
                return member
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _walk(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[list[str], type[BaseModel] | None]:
    """Turn a pydantic loc into a readable path, dropping union tags; return the parent model."""
    path: list[str] = []
    model: type[BaseModel] | None = root
    pending_union: Any = None
    for part in loc:
        if pending_union is not None:
            # pydantic puts the discriminator's value in the loc; the reader never wrote it.
            model = _union_member(pending_union, str(part))
            pending_union = None
            continue
        path.append(str(part))
        if model is None or isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if part in (f.alias or n, n)),
            None,
        )
        if field is None:
            model = None
            continue
        if field.discriminator is not None:
            pending_union = field.annotation
            model = None
        else:
            model = _model_in(field.annotation)
    return path, model


def _message(error: ErrorDetails, parent: type[BaseModel] | None) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        if parent is None:
            return "unknown field"
        names = _field_names(parent)
        hint = did_you_mean(error["loc"][-1], names)
        return f"unknown field{hint}; allowed: {', '.join(names)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        # pydantic gives the tags as one string: "'vqvae', 'pixelcnn', ..."
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        hint = did_you_mean(ctx.get("tag"), tags)
        return f"unknown trainer {ctx.get('tag')!r}{hint}; allowed: {', '.join(tags)}"
    if kind == "union_tag_not_found":
        return "required field is missing (the trainer kind)"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = error.get("input")
    if kind not in ("model_type", "dict_type") and isinstance(value, str | int | float | bool):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        message = f"{message} (got {shown})"
    return message


def from_validation_error(
    exc: ValidationError, root: type[BaseModel], prefix: str = ""
) -> ManifestError:
    """Convert pydantic's errors into field-path errors relative to ``root``."""
    errors: list[FieldError] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path, parent = _walk(root, loc)
            path.append("kind")
        elif error["type"] == "extra_forbidden":
            path, _ = _walk(root, loc)
            _, parent = _walk(root, loc[:-1])
        else:
            path, parent = _walk(root, loc)
            if error["type"] == "value_error" and parent is not None:
                # A model validator's message starts with the field it is about ("image_size
                # 100 must be a multiple of ...", "schedule.monitor 'x' is not ..."): point the
                # path at that field.
                first = _message(error, parent).split(" ", 1)[0]
                if first.split(".")[0] in parent.model_fields:
                    path.extend(first.split("."))
        dotted = ".".join(p for p in (prefix, *path) if p)
        errors.append(FieldError(dotted, _message(error, parent)))
    return ManifestError(errors)
