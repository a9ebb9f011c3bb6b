"""The ``conveyor`` command (:mod:`.app`) and what its commands share (:mod:`.common`).

Feature packages add their commands (``conveyor docs``, ``conveyor search``:
:mod:`conveyor.docs.cli`) and import :mod:`.common`, never :mod:`.app`.
This file imports nothing, so that importing :mod:`.common` does not load
every command.
"""
