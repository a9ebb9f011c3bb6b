"""A stage module that imports a package the driver has and a pinned environment lacks."""

import typer


def uses_typer(value):
    return {"value": value, "typer": typer.__name__}
