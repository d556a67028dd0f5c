"""The event catalog's conventions."""

import types
import typing

from roost_shared.catalog import CATALOG


def _optional(annotation: object) -> bool:
    return type(None) in typing.get_args(annotation) or isinstance(annotation, types.NoneType)


def test_every_optional_field_has_a_default():
    # Envelopes are serialised with exclude_none, so a None field is absent on the wire: a
    # consumer can only parse it if the field has a default.
    for event_type, model in CATALOG.items():
        for name, field in model.model_fields.items():
            if _optional(field.annotation):
                assert not field.is_required(), f"{event_type}: {name} needs a default"


def test_event_types_are_routing_keys():
    for event_type in CATALOG:
        parts = event_type.split(".")
        assert len(parts) >= 2 and all(p and p == p.lower() for p in parts), event_type
